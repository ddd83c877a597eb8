import numpy as np
import pytest

from stages.ensemble.merge import ensemble_folders, load_softmax
from stages.errors import BadInputError
from stages.imageio import read_image
from stages.postprocess.models import PostprocessingRules
from tests.postprocess.synthetic import geometry, write_prediction

SHAPE = (4, 5, 6)


def _probs(seed, k=3):
    rng = np.random.RandomState(seed)
    p = rng.uniform(0.01, 1.0, (k, *SHAPE)).astype(np.float32)
    return p / p.sum(axis=0, keepdims=True)


def test_ensemble_is_mean_of_probabilities_and_keeps_geometry(tmp_path):
    geo = geometry(SHAPE, spacing=(3.0, 0.8, 0.6), origin=(10.0, -5.0, 2.5),
                   direction=(0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    a, b, c = _probs(1), _probs(2), _probs(3)
    for name, p in (("A", a), ("B", b), ("C", c)):
        write_prediction(tmp_path / name, "case_1", p, geo)
    cases = ensemble_folders([tmp_path / "A", tmp_path / "B", tmp_path / "C"], tmp_path / "out", save_npz=True)
    assert cases == ["case_1"]
    # stored float16, averaged in float32
    stored = [p.astype(np.float16).astype(np.float32) for p in (a, b, c)]
    expected = (stored[0] + stored[1] + stored[2]) / 3
    np.testing.assert_allclose(load_softmax(tmp_path / "out" / "case_1.npz"), expected, atol=1e-3)
    seg, out_geo = read_image(tmp_path / "out" / "case_1.nii.gz")
    np.testing.assert_array_equal(seg, np.argmax(expected, axis=0))
    # the mean's argmax differs from every single model's somewhere, so this is not a copy of one of them
    assert all((seg != np.argmax(p, axis=0)).any() for p in (a, b, c))
    assert not out_geo.mismatches(geo)
    assert (tmp_path / "out" / "case_1.json").is_file()


def test_missing_npz_names_folder_and_case(tmp_path):
    for name in ("A", "B"):
        write_prediction(tmp_path / name, "case_1", _probs(1))
        write_prediction(tmp_path / name, "case_2", _probs(2))
    (tmp_path / "B" / "case_2.npz").unlink()
    with pytest.raises(BadInputError, match=r"B lacks the probabilities of case case_2 \(case_2.npz\)"):
        ensemble_folders([tmp_path / "A", tmp_path / "B"], tmp_path / "out")


def test_shape_mismatch_is_an_error(tmp_path):
    write_prediction(tmp_path / "A", "case_1", _probs(1))
    write_prediction(tmp_path / "B", "case_1", _probs(2, k=4))
    with pytest.raises(BadInputError, match="case case_1: probability shapes differ"):
        ensemble_folders([tmp_path / "A", tmp_path / "B"], tmp_path / "out")


def test_no_npz_at_all_and_missing_folder(tmp_path):
    (tmp_path / "A").mkdir()
    (tmp_path / "B").mkdir()
    with pytest.raises(BadInputError, match="save_npz"):
        ensemble_folders([tmp_path / "A", tmp_path / "B"], tmp_path / "out")
    with pytest.raises(BadInputError, match="not found"):
        ensemble_folders([tmp_path / "A", tmp_path / "nope"], tmp_path / "out")


def test_postprocessing_writes_raw_and_postprocessed(tmp_path):
    seg = np.zeros(SHAPE, np.uint8)
    seg[0:3, 0:3, 0:3] = 1
    seg[3, 4, 5] = 1  # island
    probs = np.stack([(seg == 0), (seg == 1)]).astype(np.float32) * 0.8 + 0.1
    for name in ("A", "B"):
        write_prediction(tmp_path / name, "case_1", probs)
    rules = PostprocessingRules(for_which_classes=[[1]]).save(tmp_path / "rules" / "postprocessing.json")
    ensemble_folders([tmp_path / "A", tmp_path / "B"], tmp_path / "out", postprocessing_json=rules)
    raw, _ = read_image(tmp_path / "out" / "not_postprocessed" / "case_1.nii.gz")
    final, _ = read_image(tmp_path / "out" / "case_1.nii.gz")
    assert raw[3, 4, 5] == 1 and final[3, 4, 5] == 0 and final[0:3, 0:3, 0:3].all()
    assert (tmp_path / "out" / "postprocessing.json").is_file()
