"""The postprocessing rule document (``postprocessing.json``, spec §10).

The file keeps nnU-Net v1's keys so that people and tools that read them keep working, plus our
``schema_version``. A ``postprocessing.json`` written by nnU-Net v1 itself (no ``schema_version``) can still be
read with :func:`load_rules`.
"""

from __future__ import annotations

import os
import re
from typing import Any, Union

from pydantic import Field

from stages.documents import Document

# One entry of ``for_which_classes``: a single class, or several classes treated as one region.
ClassSpec = Union[int, list[int]]  # noqa: UP007 - pydantic needs a runtime union object here

POSTPROCESSING_JSON = "postprocessing.json"


class PostprocessingRules(Document):
    """Which connected-component removals to apply, and the Dice values that justified them.

    Attributes:
        for_which_classes: Removal steps in application order; ``[[1, 2], 1]`` means "largest foreground
            component over classes 1 and 2 together, then largest component of class 1".
        min_valid_object_sizes: nnU-Net writes the string ``"None"`` (every smaller component is removed);
            a mapping ``"<spec>" -> volume`` restricts removal to components below that volume.
        dc_per_class_raw: Mean Dice per foreground class of the raw predictions.
        dc_per_class_pp_all: Mean Dice per class after the whole-foreground removal.
        dc_per_class_pp_per_class: Mean Dice per class after the per-class removal.
        num_samples: Number of cases the decision was based on.
        validation_raw: Folder name of the raw predictions.
        validation_final: Folder name of the postprocessed predictions.
    """

    KIND = "postprocessing rules"
    SCHEMA_VERSION = 1

    for_which_classes: list[ClassSpec] = Field(default_factory=list)
    min_valid_object_sizes: dict[str, float] | str = "None"
    dc_per_class_raw: dict[str, float | None] = Field(default_factory=dict)
    dc_per_class_pp_all: dict[str, float | None] = Field(default_factory=dict)
    dc_per_class_pp_per_class: dict[str, float | None] = Field(default_factory=dict)
    num_samples: int = 0
    validation_raw: str = ""
    validation_final: str = ""

    @classmethod
    def upgrade_legacy(cls, raw: Any) -> Any:
        """nnU-Net v1's own file (no ``schema_version``): keep the keys we model and take it as version 1."""
        if isinstance(raw, dict) and "schema_version" not in raw and "for_which_classes" in raw:
            raw = {k: v for k, v in raw.items() if k in cls.model_fields}
            raw["schema_version"] = cls.SCHEMA_VERSION
        return raw

    def min_size_for(self, spec: ClassSpec) -> float | None:
        """The minimum valid object volume of one rule entry, or None (remove all but the largest)."""
        if not isinstance(self.min_valid_object_sizes, dict):
            return None
        wanted = spec_key(spec)
        for key, value in self.min_valid_object_sizes.items():
            if tuple(int(v) for v in re.findall(r"-?\d+", key)) == wanted:
                return float(value)
        return None


def spec_key(spec: ClassSpec) -> tuple[int, ...]:
    """The classes of one rule entry as a tuple (``1`` -> ``(1,)``, ``[1, 2]`` -> ``(1, 2)``)."""
    if isinstance(spec, (list, tuple)):
        return tuple(int(c) for c in spec)
    return (int(spec),)


def load_rules(path: str | os.PathLike) -> PostprocessingRules:
    """Read a ``postprocessing.json``: ours, or one written by nnU-Net v1 (which has no ``schema_version``).

    Raises:
        BadInputError: The file is missing, not JSON, or not a postprocessing rule set.
    """
    return PostprocessingRules.load(path)
