"""Typed plans: what the planner decides and every later stage reads (nnU-Net v1 plans, as JSON).

Field names follow nnU-Net v1's plans dict (spec §3.6, §3.10) so that users can read them the way they know;
``spacing`` duplicates ``current_spacing`` because that is what people look for. Axis order of every
per-axis list is the *transposed* order (``transpose_forward`` applied), i.e. axis 0 is the lowest-resolution
axis, except ``original_spacings``/``original_sizes`` which stay in array order.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from stages.documents import Document
from stages.errors import BadInputError

PLANS_IDENTIFIER = "nnUNetPlansv2.1"
DATA_IDENTIFIER = "nnUNetData_plans_v2.1"
CONFIGURATIONS = ("2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres")
NormalizationScheme = Literal["CT", "nonCT", "noNorm"]


class IntensityStats(BaseModel):
    """Foreground intensity statistics of one modality (spec §2.2); NaN (stored as "NaN") if no foreground."""

    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="strings")

    mean: float
    sd: float
    median: float
    mn: float
    mx: float
    percentile_99_5: float
    percentile_00_5: float


class StagePlan(BaseModel):
    """One resolution stage of a plans file (one configuration's network, patch and batch)."""

    model_config = ConfigDict(extra="forbid")

    batch_size: int
    num_pool_per_axis: list[int]
    patch_size: list[int]
    median_patient_size_in_voxels: list[int]
    current_spacing: list[float]
    original_spacing: list[float]
    do_dummy_2D_data_aug: bool
    pool_op_kernel_sizes: list[list[int]]
    conv_kernel_sizes: list[list[int]]
    spacing: list[float] = Field(default_factory=list, description="Same as current_spacing.")

    @model_validator(mode="after")
    def _fill_spacing(self) -> StagePlan:
        if not self.spacing:
            self.spacing = list(self.current_spacing)
        return self

    @property
    def num_pool(self) -> int:
        """Number of pooling (stride-2) stages of the network."""
        return len(self.pool_op_kernel_sizes)


class Plans(Document):
    """A plans file for one dimensionality (``nnUNetPlansv2.1_plans_3D.json`` or ``..._2D.json``)."""

    KIND = "plans"
    SCHEMA_VERSION = 1

    plans_identifier: str = PLANS_IDENTIFIER
    planner: str
    dimension: Literal["2D", "3D"]
    num_stages: int
    num_modalities: int
    modalities: dict[int, str]
    normalization_schemes: dict[int, NormalizationScheme]
    use_mask_for_norm: dict[int, bool]
    intensity_properties: dict[int, IntensityStats] | None = None
    num_classes: int = Field(description="Number of foreground classes.")
    all_classes: list[int]
    base_num_features: int = 32
    conv_per_stage: int = 2
    transpose_forward: list[int]
    transpose_backward: list[int]
    data_identifier: str
    preprocessor_name: str
    plans_per_stage: dict[int, StagePlan]
    original_spacings: list[list[float]] = Field(default_factory=list)
    original_sizes: list[list[int]] = Field(default_factory=list)
    case_ids: list[str] = Field(default_factory=list)
    segmentation_export_params: dict[str, int | bool | None] | None = None

    def stage_for(self, configuration: str) -> int:
        """Stage index of a configuration name (spec §3.7); raises for configurations these plans lack."""
        if self.dimension == "2D":
            if configuration != "2d":
                raise BadInputError(f"2D plans have no configuration {configuration!r}")
            return 0
        if configuration == "3d_fullres":
            return self.num_stages - 1
        if configuration in ("3d_lowres", "3d_cascade_fullres"):
            if self.num_stages < 2:
                raise BadInputError(f"{configuration} does not exist for this dataset: the plans have no cascade")
            return 0 if configuration == "3d_lowres" else self.num_stages - 1
        raise BadInputError(f"unknown configuration {configuration!r} (expected one of {CONFIGURATIONS})")

    def configuration(self, configuration: str) -> StagePlan:
        """The stage plan of a configuration name."""
        return self.plans_per_stage[self.stage_for(configuration)]

    def stage_folder(self, stage: int) -> str:
        """Folder name of a stage's preprocessed data (``nnUNetData_plans_v2.1_stage0`` ...)."""
        return f"{self.data_identifier}_stage{stage}"

    @property
    def has_cascade(self) -> bool:
        """True if a 3d_lowres stage exists."""
        return self.dimension == "3D" and self.num_stages > 1

    @property
    def num_classes_with_background(self) -> int:
        """Network output channels."""
        return self.num_classes + 1


def plans_filename(dimension: str, identifier: str = PLANS_IDENTIFIER) -> str:
    """``nnUNetPlansv2.1_plans_3D.json`` / ``..._2D.json``."""
    return f"{identifier}_plans_{dimension.upper()}.json"
