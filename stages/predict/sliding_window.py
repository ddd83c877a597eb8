"""Sliding-window inference with Gaussian importance weighting and mirroring TTA (spec §8.1, §8.2).

The input (C, *spatial) is zero-padded (centred, as nnU-Net's ``pad_nd_image``) so that every axis is at least
the patch size, covered by overlapping tiles (:func:`compute_steps`), and every tile is predicted under all
mirror combinations; the softmax of each flipped-back prediction is averaged over the mirrors, weighted by the
Gaussian importance map (:func:`gaussian_importance_map`, or uniformly when a single tile covers the image) and
accumulated; the result is the weighted sum divided by the summed weights, cropped back to the input.

Speed: every (tile, mirror) pair is one *sample*; samples are stacked into batches of up to ``batch_size`` for a
single network call, all buffers live on the compute device as torch tensors (one host-to-device copy of the
input and one copy back of the result), and everything runs under :func:`torch.inference_mode`. On CPU the
batches run concurrently in worker threads with few intra-op threads each: a forward pass of a U-Net on one
patch parallelises poorly over OpenMP threads (measured: 2 intra-op threads cost twice the CPU time of one on
a busy 2-CPU machine), whereas independent passes scale with the CPUs. Sums are accumulated in sample order,
so results do not depend on the number of workers. Mixed precision (``amp``) is used on CUDA only; the softmax
and the accumulation are always float32.

2D networks on 3D data (:func:`predict_2d_on_3d`) use the same machinery: a tile is one slice along axis 0 and a
2D window inside it, so tiles of many slices share one batch.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from stages.errors import BadInputError
from stages.predict.tta import flip, mirror_combinations, validate_mirror_axes
from stages.resources import available_cpus

logger = logging.getLogger(__name__)

#: Network input voxels per forward pass from which the default batch size is derived (at most
#: ``MAX_BATCH_SIZE`` samples). On CPU a 3D patch runs one sample per pass (bigger batches are slower there:
#: cache), small 2D patches are batched to amortise the per-layer overhead.
CUDA_VOXELS_PER_BATCH = 2**22
CPU_VOXELS_PER_BATCH = 2**15
MAX_BATCH_SIZE = 16
#: Rough peak activation memory per input voxel of one sample (U-Net, 32 base features, float32), used to
#: bound the number of concurrent CPU forward passes by the memory available.
ACTIVATION_BYTES_PER_VOXEL = 1024


def compute_steps(image_size: Sequence[int], patch_size: Sequence[int], step_size: float) -> list[list[int]]:
    """Start indices of the sliding-window tiles per axis (spec §8.1).

    The target stride is ``patch * step_size``; the number of tiles is ``ceil((size - patch) / stride) + 1``
    and the starts are spread evenly from 0 to ``size - patch`` and rounded (half to even, as numpy). An axis
    as long as the patch has the single start 0.

    Args:
        image_size: Image size per axis (every axis must be at least the patch size: pad first).
        patch_size: Patch size per axis.
        step_size: Stride as a fraction of the patch, in (0, 1].

    Returns:
        One list of start indices per axis.

    Raises:
        ValueError: Mismatched lengths, an image axis smaller than the patch, or a step size outside (0, 1].
    """
    if not 0 < step_size <= 1:
        raise ValueError(f"step_size must be in (0, 1], got {step_size}")
    if len(image_size) != len(patch_size):
        raise ValueError(f"image size {tuple(image_size)} and patch size {tuple(patch_size)} differ in length")
    steps = []
    for size, patch in zip(image_size, patch_size):
        if size < patch:
            raise ValueError(f"image size {tuple(image_size)} is smaller than patch {tuple(patch_size)}")
        num = int(np.ceil((size - patch) / (patch * step_size))) + 1
        if num > 1:
            stride = (size - patch) / (num - 1)
            steps.append([int(np.round(stride * i)) for i in range(num)])
        else:
            steps.append([0])
    return steps


@functools.lru_cache(maxsize=16)
def _gaussian(patch_size: tuple[int, ...], sigma_scale: float) -> np.ndarray:
    delta = np.zeros(patch_size, dtype=np.float64)
    delta[tuple(p // 2 for p in patch_size)] = 1.0
    gauss = gaussian_filter(delta, [p * sigma_scale for p in patch_size], order=0, mode="constant", cval=0.0)
    gauss = (gauss / gauss.max()).astype(np.float32)
    gauss[gauss == 0] = gauss[gauss != 0].min()
    gauss.setflags(write=False)
    return gauss


def gaussian_importance_map(patch_size: Sequence[int], sigma_scale: float = 1.0 / 8) -> np.ndarray:
    """Gaussian weight of every voxel of a tile (spec §8.1), cached per patch size.

    A unit impulse at voxel ``patch // 2`` blurred with ``scipy.ndimage.gaussian_filter`` (sigma
    ``patch * sigma_scale`` per axis, constant-0 border), scaled to a peak of 1, zeros replaced by the smallest
    non-zero value.

    Args:
        patch_size: Tile size per axis.
        sigma_scale: Sigma as a fraction of the patch size.

    Returns:
        Read-only float32 array of shape ``patch_size``.
    """
    return _gaussian(tuple(int(p) for p in patch_size), float(sigma_scale))


@dataclass(frozen=True)
class TileLayout:
    """Where the tiles of one image lie.

    Attributes:
        padded_shape: Spatial shape after zero padding.
        pad: ``(before, after)`` zero padding per spatial axis.
        tiles: Per tile, an index into the spatial axes of the padded volume: slices, preceded by an integer
            slice index for 2D networks on 3D data (so that indexing yields exactly the network's input shape).
        tiles_per_plane: Number of tiles covering one network-dimensional image (1: uniform weighting).
    """

    padded_shape: tuple[int, ...]
    pad: tuple[tuple[int, int], ...]
    tiles: tuple[tuple[int | slice, ...], ...]
    tiles_per_plane: int

    @property
    def crop(self) -> tuple[slice, ...]:
        """Spatial slices that undo the padding."""
        return tuple(slice(before, size - after) for (before, after), size in zip(self.pad, self.padded_shape))


def tile_layout(
    spatial_shape: Sequence[int], patch_size: Sequence[int], step_size: float, slice_axis: bool = False
) -> TileLayout:
    """Padding and tiles covering an image.

    Args:
        spatial_shape: Spatial shape of the image.
        patch_size: Network patch size.
        step_size: Stride as a fraction of the patch.
        slice_axis: True for a 2D patch on 3D data: every slice along axis 0 is tiled separately.
    """
    shape = tuple(int(s) for s in spatial_shape)
    plane = shape[1:] if slice_axis else shape
    if len(plane) != len(patch_size):
        raise ValueError(f"patch size {tuple(patch_size)} does not fit an image of shape {shape}")
    padded_plane = tuple(max(s, int(p)) for s, p in zip(plane, patch_size))
    pad_plane = tuple(((p - s) // 2, (p - s) - (p - s) // 2) for s, p in zip(plane, padded_plane))
    steps = compute_steps(padded_plane, patch_size, step_size)
    windows = [
        tuple(slice(start, start + int(p)) for start, p in zip(starts, patch_size))
        for starts in itertools.product(*steps)
    ]
    if slice_axis:
        tiles = tuple((z, *w) for z in range(shape[0]) for w in windows)
        return TileLayout((shape[0], *padded_plane), ((0, 0), *pad_plane), tiles, len(windows))
    return TileLayout(padded_plane, pad_plane, tuple(windows), len(windows))


def _batches(items: Sequence, size: int) -> list[Sequence]:
    return [items[start : start + size] for start in range(0, len(items), size)]


def _available_memory() -> int:
    """Bytes of memory this process may still allocate (cgroup limit or MemAvailable), 8 GiB if unknown."""
    candidates = []
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            candidates.append(int(limit) - used)
    except (OSError, ValueError):
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                candidates.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    return max(min(candidates), 2**30) if candidates else 8 * 2**30


def _default_batch_size(device: torch.device, patch_size: Sequence[int]) -> int:
    voxels = CUDA_VOXELS_PER_BATCH if device.type == "cuda" else CPU_VOXELS_PER_BATCH
    return int(max(1, min(MAX_BATCH_SIZE, voxels // int(np.prod(patch_size)))))


def _default_workers(patch_size: Sequence[int], batch_size: int, num_batches: int) -> int:
    """CPU forward passes run concurrently: one per CPU, bounded by the batches and by memory."""
    per_worker = int(np.prod(patch_size)) * batch_size * ACTIVATION_BYTES_PER_VOXEL
    by_memory = max(1, _available_memory() // 2 // per_worker)
    return int(max(1, min(available_cpus(), num_batches, by_memory)))


def _resolve_device(network: torch.nn.Module, device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    param = next(iter(network.parameters()), None)
    return param.device if param is not None else torch.device("cpu")


@contextlib.contextmanager
def _inference_state(network: torch.nn.Module) -> Iterator[None]:
    """Eval mode and deep supervision off for the duration, restored afterwards."""
    was_training = network.training
    had_ds = hasattr(network, "do_ds")
    old_ds = getattr(network, "do_ds", None)
    network.eval()
    if had_ds:
        network.do_ds = False
    try:
        yield
    finally:
        if had_ds:
            network.do_ds = old_ds
        network.train(was_training)


@contextlib.contextmanager
def _torch_threads(num: int) -> Iterator[None]:
    """Intra-op threads of torch set to ``num`` for the duration (threads started meanwhile inherit it)."""
    old = torch.get_num_threads()
    torch.set_num_threads(num)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _as_tensor(data: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    if isinstance(data, torch.Tensor):
        return data.detach().to(device=device, dtype=torch.float32)
    array = np.ascontiguousarray(data, dtype=np.float32)
    if not array.flags.writeable:  # e.g. a read-only memory map: torch wants writable memory
        array = array.copy()
    return torch.from_numpy(array).to(device)


def predict_sliding_window(
    network: torch.nn.Module,
    data: np.ndarray | torch.Tensor,
    patch_size: Sequence[int],
    num_classes: int,
    mirror_axes: Sequence[int] | None = (),
    step_size: float = 0.5,
    use_gaussian: bool = True,
    device: str | torch.device | None = None,
    amp: bool = False,
    batch_size: int | None = None,
    num_workers: int | None = None,
) -> np.ndarray:
    """Class probabilities of a whole image by sliding-window inference (spec §8.1, §8.2).

    Args:
        network: Maps ``(B, C, *patch)`` to ``(B, num_classes, *patch)`` logits (a module with ``do_ds`` has it
            switched off for the call; eval mode is set and restored).
        data: Image ``(C, *spatial)``, float; a 2D patch on 3D data is applied slice by slice (see
            :func:`predict_2d_on_3d`).
        patch_size: Network input size per spatial axis.
        num_classes: Number of output channels including background.
        mirror_axes: Spatial axes (of the patch) used for mirroring TTA; empty or None disables TTA.
        step_size: Tile stride as a fraction of the patch size.
        use_gaussian: Weight tiles with the Gaussian importance map (uniform when False or for a single tile).
        device: Compute device (default: the device of the network's parameters).
        amp: Autocast to float16 on CUDA (ignored on CPU).
        batch_size: Network samples (tile x mirror) per forward pass (default: from the patch size, see
            ``CPU_VOXELS_PER_BATCH``/``CUDA_VOXELS_PER_BATCH``; 1 for 3D patches on CPU).
        num_workers: CPU only: forward passes run concurrently in threads, each with ``cpus // workers``
            intra-op threads (default: one per available CPU, bounded by the batches and the free memory).
            Results do not depend on it.

    Returns:
        float32 array ``(num_classes, *spatial)`` of probabilities summing to 1 per voxel.
    """
    spatial = data.ndim - 1
    slice_axis = len(patch_size) == 2 and spatial == 3  # a 2D network on 3D data: slice by slice along axis 0
    if not slice_axis and len(patch_size) != spatial:
        raise ValueError(f"a {len(patch_size)}D patch cannot be applied to data of shape {tuple(data.shape)}")
    patch = tuple(int(p) for p in patch_size)
    combos = mirror_combinations(validate_mirror_axes(mirror_axes, len(patch)))
    dev = _resolve_device(network, device)
    layout = tile_layout(data.shape[1:], patch, step_size, slice_axis)
    batch = int(batch_size or _default_batch_size(dev, patch))
    batches = _batches([(tile, combo) for tile in layout.tiles for combo in combos], batch)
    workers = 1 if dev.type != "cpu" else int(num_workers or _default_workers(patch, batch, len(batches)))
    threads = max(1, available_cpus() // workers) if workers > 1 else None
    logger.debug("sliding window: %d tiles x %d mirrors in %d batches of %d on %s (%d workers)",
                 len(layout.tiles), len(combos), len(batches), batch, dev, workers)
    everything = slice(None)
    with torch.inference_mode(), _inference_state(network):
        image = _as_tensor(data, dev)
        if tuple(image.shape[1:]) != layout.padded_shape:
            padded = torch.zeros((image.shape[0], *layout.padded_shape), dtype=torch.float32, device=dev)
            padded[(everything, *layout.crop)] = image
            image = padded
        if use_gaussian and layout.tiles_per_plane > 1:
            weight = torch.from_numpy(gaussian_importance_map(patch).copy()).to(dev)
        else:
            weight = torch.ones(patch, dtype=torch.float32, device=dev)
        sample_weight = weight / len(combos)
        probs = torch.zeros((num_classes, *layout.padded_shape), dtype=torch.float32, device=dev)
        weights = torch.zeros(layout.padded_shape, dtype=torch.float32, device=dev)
        for tile in layout.tiles:
            weights[tile] += weight
        forward = _TileForward(network, image, patch, num_classes, amp, threads)

        def accumulate(chunk: Sequence, preds: torch.Tensor) -> None:
            for (tile, _), pred in zip(chunk, preds):
                probs[(everything, *tile)].addcmul_(pred, sample_weight)

        if workers == 1:
            for chunk in batches:
                accumulate(chunk, forward(chunk))
        else:
            # Several single-threaded forward passes at once use CPUs far better than one pass with
            # intra-op threads; results are accumulated here, in sample order (deterministic sums).
            with _torch_threads(threads), ThreadPoolExecutor(workers, thread_name_prefix="tile") as pool:
                futures = [pool.submit(forward, chunk) for chunk in batches]
                try:
                    for chunk, future in zip(batches, futures):
                        accumulate(chunk, future.result())
                finally:
                    for future in futures:
                        future.cancel()
        probs /= weights
        out = probs[(everything, *layout.crop)]
        return np.ascontiguousarray(out.cpu().numpy(), dtype=np.float32)


def predict_2d_on_3d(
    network: torch.nn.Module, data: np.ndarray | torch.Tensor, patch_size: Sequence[int], *args: Any, **kwargs: Any
) -> np.ndarray:
    """Class probabilities of a 3D image ``(C, z, y, x)`` from a 2D network, slice by slice along axis 0.

    Every slice is tiled and weighted exactly as a 2D image would be; ``mirror_axes`` refer to the 2D axes
    (0 = y, 1 = x). The remaining arguments and the result are those of :func:`predict_sliding_window`, which
    does the work (it takes this path for any 2D patch on 3D data).
    """
    if data.ndim != 4 or len(patch_size) != 2:
        raise ValueError(f"predict_2d_on_3d needs (C, z, y, x) data and a 2D patch, got {tuple(data.shape)} "
                         f"and {tuple(patch_size)}")
    return predict_sliding_window(network, data, patch_size, *args, **kwargs)


class _TileForward:
    """Softmax of the network for a batch of (tile, mirror) samples, flipped back; callable from any thread."""

    def __init__(self, network: torch.nn.Module, image: torch.Tensor, patch: tuple[int, ...], num_classes: int,
                 amp: bool, threads: int | None) -> None:
        self.network, self.image, self.patch, self.num_classes = network, image, patch, num_classes
        self.amp = amp and image.device.type == "cuda"
        self.threads = threads

    def __call__(self, chunk: Sequence[tuple[tuple, tuple[int, ...]]]) -> torch.Tensor:
        # inference mode, autocast and the intra-op thread count are per thread: set them here
        if self.threads is not None and torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        autocast = torch.autocast("cuda", dtype=torch.float16) if self.amp else contextlib.nullcontext()
        with torch.inference_mode():
            inputs = torch.stack([flip(self.image[(slice(None), *tile)], combo, 1) for tile, combo in chunk])
            with autocast:
                logits = self.network(inputs)
            if isinstance(logits, (list, tuple)):
                logits = logits[0]
            if logits.shape[1] != self.num_classes or tuple(logits.shape[2:]) != self.patch:
                raise BadInputError(f"network output {tuple(logits.shape)} does not match {self.num_classes} "
                                    f"classes and patch {self.patch} (model and plans disagree?)")
            softmax = torch.softmax(logits.float(), dim=1)
            return torch.stack([flip(pred, combo, 1) for (_, combo), pred in zip(chunk, softmax)])
