"""Per-case properties stored beside each preprocessed case, and the on-disk layout of preprocessed data.

Layout of one configuration's folder (``nnUNetData_plans_v2.1_stage<i>/``):
``<case>.npy`` float32 (C, z, y, x) image channels, ``<case>_seg.npy`` int8 (1, z, y, x) segmentation with -1
outside the nonzero mask, and ``<case>.json`` (:class:`CaseProperties`). Plain ``.npy`` so that training reads
patches through memory mapping without unpacking.
"""

from __future__ import annotations

from pydantic import Field

from stages.documents import Document
from stages.imageio import Geometry


class CaseProperties(Document):
    """What is needed to undo preprocessing of a case and to sample foreground patches (spec §2.1, §4).

    Shapes and spacings are in array order (z, y, x) of the *original* image unless named ``*_resampling``,
    which are in transposed order.
    """

    KIND = "case properties"
    SCHEMA_VERSION = 1

    case_id: str
    list_of_data_files: list[str] = Field(default_factory=list)
    seg_file: str | None = None
    geometry: Geometry = Field(description="SimpleITK geometry of the original image (for export).")
    original_size_of_raw_data: list[int]
    original_spacing: list[float]
    crop_bbox: list[list[int]] = Field(description="Half-open [start, stop) per axis in array order.")
    size_after_cropping: list[int]
    classes: list[int] = Field(default_factory=list, description="Unique values of the cropped seg.")
    use_nonzero_mask_for_norm: dict[int, bool] = Field(default_factory=dict)
    size_after_resampling: list[int] = Field(default_factory=list)
    spacing_after_resampling: list[float] = Field(default_factory=list)
    class_locations: dict[int, list[list[int]]] = Field(
        default_factory=dict, description="Per foreground class, sampled voxel coordinates (transposed order)."
    )
    preprocessing_digest: str = Field(
        default="", description="Hash of the preprocessing parameters used (a rerun with others redoes the case)."
    )


def data_file(case_id: str) -> str:
    """File name of a case's image array."""
    return f"{case_id}.npy"


def seg_file(case_id: str) -> str:
    """File name of a case's segmentation array."""
    return f"{case_id}_seg.npy"


def properties_file(case_id: str) -> str:
    """File name of a case's properties document."""
    return f"{case_id}.json"
