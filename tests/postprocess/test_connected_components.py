import json

import numpy as np
import pytest

from stages.errors import BadInputError, SchemaVersionError
from stages.imageio import read_image
from stages.postprocess.connected_components import (
    apply_postprocessing,
    apply_postprocessing_to_folder,
    remove_all_but_largest_component,
)
from stages.postprocess.models import PostprocessingRules, load_rules
from tests.postprocess.synthetic import geometry, write_seg


def _blank():
    return np.zeros((6, 6, 6), np.uint8)


def test_diagonal_neighbour_is_a_separate_component():
    seg = _blank()
    seg[0:2, 0:2, 0:2] = 1
    seg[2, 2, 2] = 1  # touches the block only at a corner
    seg[1, 1, 2] = 0
    out = remove_all_but_largest_component(seg, [1])
    assert out[2, 2, 2] == 0
    assert out[0:2, 0:2, 0:2].sum() == seg[0:2, 0:2, 0:2].sum()


def test_face_neighbour_stays_connected():
    seg = _blank()
    seg[0:2, 0:2, 0:2] = 1
    seg[0, 0, 2:5] = 1  # a face-connected tail
    np.testing.assert_array_equal(remove_all_but_largest_component(seg, [1]), seg)


def test_all_components_of_maximal_size_are_kept():
    seg = _blank()
    seg[0, 0, 0:2] = 1
    seg[4, 4, 0:2] = 1
    seg[2, 5, 5] = 1
    out = remove_all_but_largest_component(seg, [1])
    assert out[0, 0, 0:2].tolist() == [1, 1] and out[4, 4, 0:2].tolist() == [1, 1]
    assert out[2, 5, 5] == 0


def test_other_classes_untouched_and_input_not_modified():
    seg = _blank()
    seg[0:3, 0:3, 0:3] = 1
    seg[5, 5, 5] = 1
    seg[5, 0, 0] = 2
    seg[0, 5, 5] = 2
    before = seg.copy()
    out = remove_all_but_largest_component(seg, [1])
    np.testing.assert_array_equal(seg, before)
    assert out[5, 5, 5] == 0 and out[5, 0, 0] == 2 and out[0, 5, 5] == 2


def test_region_of_several_classes_is_one_component():
    seg = _blank()
    seg[0:2, 0:2, 0:2] = 1
    seg[0:2, 0:2, 2] = 2  # class 2 attached to the class 1 block
    seg[5, 5, 5] = 2  # lone class 2 voxel
    out = remove_all_but_largest_component(seg, [[1, 2]])
    assert (out[0:2, 0:2, 2] == 2).all()
    assert out[5, 5, 5] == 0
    # per class, the attached class 2 part (2x2x1 = 4 voxels) is the largest class 2 component
    per_class = remove_all_but_largest_component(seg, [2])
    assert (per_class[0:2, 0:2, 2] == 2).all() and per_class[5, 5, 5] == 0


def test_min_valid_object_size_in_physical_volume():
    seg = _blank()
    seg[0:3, 0:3, 0:3] = 1  # 27 voxels
    seg[5, 5, 0:3] = 1  # 3 voxels; volume 3 * 2 mm^3 = 6
    spacing = (2.0, 1.0, 1.0)
    kept = remove_all_but_largest_component(seg, [1], spacing, {(1,): 5.0})
    assert kept[5, 5, 0:3].tolist() == [1, 1, 1]
    removed = remove_all_but_largest_component(seg, [1], spacing, {(1,): 7.0})
    assert removed[5, 5, 0:3].tolist() == [0, 0, 0]


def test_rules_applied_in_order_and_2d():
    seg = np.zeros((5, 5), np.uint8)
    seg[0:2, 0:2] = 1
    seg[4, 4] = 1
    seg[0, 4] = 2
    seg[2, 4] = 2
    seg[3, 4] = 2
    rules = PostprocessingRules(for_which_classes=[1, 2])
    out = apply_postprocessing(seg, rules, (1.0, 1.0))
    assert out[4, 4] == 0 and out[0, 4] == 0 and out[2:4, 4].tolist() == [2, 2]


def test_folder_version_keeps_geometry(tmp_path):
    seg = _blank()
    seg[0:3, 0:3, 0:3] = 1
    seg[5, 5, 5] = 1
    geo = geometry(seg.shape, spacing=(2.0, 0.5, 0.7), origin=(1.0, -2.0, 3.0))
    write_seg(tmp_path / "in" / "c1.nii.gz", seg, geo)
    apply_postprocessing_to_folder(tmp_path / "in", tmp_path / "out", [1])
    out, out_geo = read_image(tmp_path / "out" / "c1.nii.gz")
    assert out[5, 5, 5] == 0 and out[0:3, 0:3, 0:3].all()
    assert not out_geo.mismatches(geo)


def test_rules_document_keeps_nnunet_keys_and_reads_nnunet_files(tmp_path):
    rules = PostprocessingRules(for_which_classes=[[1, 2], 1], dc_per_class_raw={"1": 0.5, "2": None})
    path = rules.save(tmp_path / "postprocessing.json")
    raw = json.loads(path.read_text())
    for key in ("dc_per_class_raw", "dc_per_class_pp_all", "dc_per_class_pp_per_class", "for_which_classes",
                "min_valid_object_sizes", "num_samples", "validation_raw", "validation_final"):
        assert key in raw
    assert raw["for_which_classes"] == [[1, 2], 1] and raw["min_valid_object_sizes"] == "None"
    assert load_rules(path).for_which_classes == [[1, 2], 1]
    nnunet = {"for_which_classes": [[1, 2]], "min_valid_object_sizes": "None", "dc_per_class_raw": {"1": 0.8},
              "num_samples": 3, "validation_raw": "cv_niftis_raw", "validation_final": "cv_niftis_postprocessed"}
    (tmp_path / "v1.json").write_text(json.dumps(nnunet))
    assert load_rules(tmp_path / "v1.json").for_which_classes == [[1, 2]]
    (tmp_path / "future.json").write_text(json.dumps({**nnunet, "schema_version": 99}))
    with pytest.raises(SchemaVersionError):
        load_rules(tmp_path / "future.json")
    with pytest.raises(BadInputError, match="not found"):
        load_rules(tmp_path / "missing.json")
