"""Sliding-window inference against a straightforward per-tile reference formulation (spec §8.1, §8.2)."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from stages.errors import BadInputError
from stages.predict.sliding_window import (
    compute_steps,
    gaussian_importance_map,
    predict_2d_on_3d,
    predict_sliding_window,
)

# ------------------------------------------------------------------ compute_steps


@pytest.mark.parametrize(
    ("size", "patch", "step", "expected"),
    [
        (64, 64, 0.5, [0]),  # size == patch -> a single start
        (65, 64, 0.5, [0, 1]),
        (100, 64, 0.5, [0, 18, 36]),  # stride 32 -> 3 tiles, spread 36/2
        (101, 64, 0.5, [0, 18, 37]),  # 18.5 rounds half to even
        (130, 64, 0.5, [0, 22, 44, 66]),
        (432, 128, 0.5, [0, 61, 122, 182, 243, 304]),  # liver-like fullres axis
        (128, 64, 1.0, [0, 64]),
        (100, 64, 0.25, [0, 12, 24, 36]),  # stride 16 -> ceil(36/16)+1 = 4 tiles, spread 12
    ],
)
def test_compute_steps_single_axis(size, patch, step, expected):
    assert compute_steps([size], [patch], step) == [expected]


def test_compute_steps_per_axis_and_coverage():
    steps = compute_steps((40, 90, 57), (40, 56, 40), 0.5)
    assert steps == [[0], [0, 17, 34], [0, 17]]
    for size, patch, starts in zip((40, 90, 57), (40, 56, 40), steps):
        covered = np.zeros(size, bool)
        for s in starts:
            covered[s : s + patch] = True
        assert covered.all() and starts[-1] + patch == size


@pytest.mark.parametrize(("size", "patch", "step"), [((30,), (40,), 0.5), ((50,), (40,), 0.0), ((50, 50), (40,), 0.5)])
def test_compute_steps_rejects_bad_arguments(size, patch, step):
    with pytest.raises(ValueError):
        compute_steps(size, patch, step)


# ------------------------------------------------------------------ Gaussian


@pytest.mark.parametrize("patch", [(40, 56, 40), (9, 12), (7, 7, 7)])
def test_gaussian_peak_and_symmetry(patch):
    g = gaussian_importance_map(patch)
    assert g.shape == patch and g.dtype == np.float32
    centre = tuple(p // 2 for p in patch)
    assert g[centre] == 1.0 and g.max() == 1.0
    assert g.min() > 0
    # symmetric about the centre voxel along every axis (within the part mirrored inside the patch)
    for axis, (p, c) in enumerate(zip(patch, centre)):
        d = min(c, p - 1 - c)
        lo = np.take(g, range(c - d, c), axis=axis)
        hi = np.flip(np.take(g, range(c + 1, c + d + 1), axis=axis), axis=axis)
        np.testing.assert_allclose(lo, hi, rtol=1e-6)
    # decreasing away from the centre along axis 0
    line = g[(slice(None), *centre[1:])]
    assert np.all(np.diff(line[: centre[0] + 1]) > 0) and np.all(np.diff(line[centre[0] :]) < 0)


def test_gaussian_zeros_replaced_by_smallest_nonzero_and_cached():
    patch = (40, 40)
    raw = np.zeros(patch)
    raw[20, 20] = 1
    raw = gaussian_filter(raw, [40 / 32] * 2, mode="constant", cval=0)  # narrow: truncation leaves zeros
    raw = (raw / raw.max()).astype(np.float32)
    assert (raw == 0).any()
    g = gaussian_importance_map(patch, sigma_scale=1 / 32)
    assert g.min() == raw[raw > 0].min()
    np.testing.assert_array_equal(g[raw > 0], raw[raw > 0])
    assert gaussian_importance_map([40, 40], 1 / 32) is g
    assert not g.flags.writeable


# ------------------------------------------------------------------ reference formulation


def _tiny_net(dim: int, cin: int, k: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    conv = torch.nn.Conv3d if dim == 3 else torch.nn.Conv2d
    net = torch.nn.Sequential(conv(cin, 6, 3, padding=1), torch.nn.LeakyReLU(0.01), conv(6, k, 3, padding=1))
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(3.0)  # sharper logits: flips then change the softmax visibly
    return net.eval()


def _reference(net, data, patch, k, mirror_axes, step, use_gaussian):
    """Per tile, per mirror, batch 1, numpy accumulators: the formulation of spec §8.1 written out plainly."""
    shape = data.shape[1:]
    target = [max(s, p) for s, p in zip(shape, patch)]
    before = [(t - s) // 2 for s, t in zip(shape, target)]
    padded = np.zeros((data.shape[0], *target), np.float32)
    padded[(slice(None), *[slice(b, b + s) for b, s in zip(before, shape)])] = data
    steps = compute_steps(target, patch, step)
    starts = list(itertools.product(*steps))
    weight = gaussian_importance_map(patch) if use_gaussian and len(starts) > 1 else np.ones(patch, np.float32)
    agg = np.zeros((k, *target), np.float32)
    cnt = np.zeros(target, np.float32)
    combos = [c for r in range(len(mirror_axes) + 1) for c in itertools.combinations(mirror_axes, r)]
    for start in starts:
        sl = tuple(slice(s, s + p) for s, p in zip(start, patch))
        x = torch.from_numpy(padded[(slice(None), *sl)][None].copy())
        pred = np.zeros((k, *patch), np.float32)
        for combo in combos:
            dims = [a + 2 for a in combo]
            xin = torch.flip(x, dims) if combo else x
            with torch.no_grad():
                out = torch.softmax(net(xin), 1)
            out = torch.flip(out, dims) if combo else out
            pred += out[0].numpy() / len(combos)
        agg[(slice(None), *sl)] += pred * weight
        cnt[sl] += weight
    res = agg / cnt
    return res[(slice(None), *[slice(b, b + s) for b, s in zip(before, shape)])]


CASES_3D = [
    # shape (z, y, x), patch, mirror axes, gaussian
    ((14, 19, 13), (8, 12, 16), (0, 1, 2), True),  # several tiles, x smaller than patch -> padded
    ((14, 19, 13), (8, 12, 16), (), True),
    ((6, 10, 7), (8, 12, 16), (0, 1, 2), True),  # smaller than the patch everywhere -> one tile, uniform
    ((17, 12, 16), (8, 12, 16), (1,), False),
]


@pytest.mark.parametrize(("shape", "patch", "axes", "gauss"), CASES_3D)
def test_3d_matches_reference(shape, patch, axes, gauss):
    net = _tiny_net(3, 2, 3)
    data = np.random.RandomState(1).normal(size=(2, *shape)).astype(np.float32)
    expected = _reference(net, data, patch, 3, axes, 0.5, gauss)
    for batch in (1, 5, 64):
        got = predict_sliding_window(net, data, patch, 3, axes, 0.5, gauss, "cpu", batch_size=batch)
        assert got.shape == (3, *shape) and got.dtype == np.float32
        np.testing.assert_allclose(got, expected, atol=2e-6, rtol=1e-5)
    np.testing.assert_allclose(got.sum(0), 1.0, atol=1e-5)


def test_2d_network_on_2d_image_matches_reference():
    net = _tiny_net(2, 1, 4)
    data = np.random.RandomState(2).normal(size=(1, 30, 9)).astype(np.float32)
    expected = _reference(net, data, (12, 16), 4, (0, 1), 0.5, True)
    got = predict_sliding_window(net, data, (12, 16), 4, (0, 1), batch_size=3)
    np.testing.assert_allclose(got, expected, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("axes", [(0, 1), ()])
@pytest.mark.parametrize("yx", [(30, 20), (10, 12)])
def test_2d_network_on_3d_image_is_slice_by_slice(axes, yx):
    net = _tiny_net(2, 2, 3)
    data = np.random.RandomState(3).normal(size=(2, 5, *yx)).astype(np.float32)
    expected = np.stack([_reference(net, data[:, z], (12, 16), 3, axes, 0.5, True) for z in range(5)], axis=1)
    got = predict_sliding_window(net, data, (12, 16), 3, axes, batch_size=7)
    np.testing.assert_allclose(got, expected, atol=2e-6, rtol=1e-5)
    np.testing.assert_allclose(predict_2d_on_3d(net, data, (12, 16), 3, axes), got, atol=1e-6)


def test_tta_changes_the_prediction_and_tensor_input_is_accepted():
    net = _tiny_net(3, 1, 2)
    data = np.random.RandomState(4).normal(size=(1, 12, 14, 10)).astype(np.float32)
    plain = predict_sliding_window(net, data, (8, 8, 8), 2, ())
    tta = predict_sliding_window(net, data, (8, 8, 8), 2, (0, 1, 2))
    assert np.abs(plain - tta).max() > 1e-2
    from_tensor = predict_sliding_window(net, torch.from_numpy(data), (8, 8, 8), 2, (0, 1, 2))
    np.testing.assert_allclose(from_tensor, tta, atol=1e-6)
    read_only = data.copy()
    read_only.setflags(write=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from_read_only = predict_sliding_window(net, read_only, (8, 8, 8), 2, (0, 1, 2))
    np.testing.assert_allclose(from_read_only, tta, atol=1e-6)


class _DeepSupervised(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = _tiny_net(3, 1, 2)
        self.do_ds = True
        self.seen = []

    def forward(self, x):
        self.seen.append((self.do_ds, self.training))
        out = self.net(x)
        return [out, out[:, :, ::2, ::2, ::2]] if self.do_ds else out


def test_network_state_is_switched_for_inference_and_restored():
    model = _DeepSupervised().train()
    data = np.zeros((1, 8, 8, 8), np.float32)
    predict_sliding_window(model, data, (8, 8, 8), 2, (0,))
    assert model.seen and all(s == (False, False) for s in model.seen)
    assert model.do_ds is True and model.training is True


def test_wrong_class_count_or_patch_is_rejected():
    net = _tiny_net(3, 1, 2)
    with pytest.raises(BadInputError, match="classes"):
        predict_sliding_window(net, np.zeros((1, 8, 8, 8), np.float32), (8, 8, 8), 3)
    with pytest.raises(ValueError, match="patch"):
        predict_sliding_window(net, np.zeros((1, 8, 8), np.float32), (8, 8, 8), 2)
    with pytest.raises(ValueError, match="mirror"):
        predict_sliding_window(net, np.zeros((1, 8, 8, 8), np.float32), (8, 8, 8), 2, (3,))


def test_cpu_workers_do_not_change_the_result_and_threads_are_restored():
    net = _tiny_net(3, 1, 3)
    data = np.random.RandomState(5).normal(size=(1, 14, 15, 11)).astype(np.float32)
    before = torch.get_num_threads()
    results = [predict_sliding_window(net, data, (8, 8, 8), 3, (0, 2), num_workers=w) for w in (1, 2, 3)]
    assert torch.get_num_threads() == before
    np.testing.assert_array_equal(results[0], results[1])
    np.testing.assert_array_equal(results[0], results[2])


def test_worker_errors_propagate():
    net = _tiny_net(3, 1, 2)
    with pytest.raises(BadInputError, match="classes"):
        predict_sliding_window(net, np.zeros((1, 16, 16, 16), np.float32), (8, 8, 8), 4, (0,), num_workers=2)
