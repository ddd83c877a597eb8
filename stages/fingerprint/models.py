"""The dataset fingerprint: what planning needs to know about a training set (spec §2.2).

Per case: shape before and after cropping to the nonzero region, spacing (array order z, y, x), the size
reduction of the crop and per-modality foreground intensity statistics. Dataset-wide: the modality names, the
foreground classes declared in dataset.json and per-modality foreground intensity statistics pooled over all
cases (every 10th foreground voxel of each case).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from stages.documents import Document
from stages.plan.models import IntensityStats

#: Every n-th foreground voxel of a case enters the intensity statistics (nnU-Net samples every 10th).
FOREGROUND_SAMPLING_STEP = 10


class CaseFingerprint(BaseModel):
    """Fingerprint of one training case; shapes and spacing in array order (z, y, x)."""

    model_config = ConfigDict(extra="forbid")

    case_id: str
    shape_before_crop: list[int]
    shape_after_crop: list[int]
    spacing: list[float]
    size_reduction: float = Field(description="Voxels after cropping / voxels before cropping.")
    classes: list[int] = Field(default_factory=list, description="Unique values of the cropped seg (may hold -1).")
    intensity: dict[int, IntensityStats] = Field(
        default_factory=dict, description="Per modality index: this case's foreground intensity statistics."
    )


class Fingerprint(Document):
    """Dataset fingerprint (``fingerprint.json``), the input of experiment planning."""

    KIND = "fingerprint"
    SCHEMA_VERSION = 1

    dataset_name: str = ""
    modalities: dict[int, str] = Field(description="Modality index -> name from dataset.json.")
    all_classes: list[int] = Field(description="Foreground labels (> 0) declared in dataset.json.")
    cases: list[CaseFingerprint]
    intensity_properties: dict[int, IntensityStats] = Field(
        default_factory=dict, description="Per modality index: foreground statistics pooled over all cases."
    )
    foreground_sampling_step: int = FOREGROUND_SAMPLING_STEP

    @model_validator(mode="after")
    def _check(self) -> Fingerprint:
        if not self.cases:
            raise ValueError("a fingerprint needs at least one case")
        ids = [c.case_id for c in self.cases]
        if len(set(ids)) != len(ids):
            raise ValueError("duplicate case ids in fingerprint")
        dims = {len(c.spacing) for c in self.cases} | {len(c.shape_after_crop) for c in self.cases}
        if len(dims) != 1:
            raise ValueError(f"cases disagree on the number of spatial dimensions: {sorted(dims)}")
        return self

    @property
    def case_ids(self) -> list[str]:
        """Case identifiers in fingerprint order."""
        return [c.case_id for c in self.cases]

    @property
    def all_spacings(self) -> list[list[float]]:
        """Per case spacing (array order)."""
        return [list(c.spacing) for c in self.cases]

    @property
    def all_sizes(self) -> list[list[int]]:
        """Per case shape after cropping (array order)."""
        return [list(c.shape_after_crop) for c in self.cases]

    @property
    def size_reductions(self) -> dict[str, float]:
        """Per case voxel fraction kept by cropping."""
        return {c.case_id: c.size_reduction for c in self.cases}

    @property
    def num_modalities(self) -> int:
        """Number of image channels."""
        return len(self.modalities)
