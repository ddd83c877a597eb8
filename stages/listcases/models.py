"""The shard plan: which cases of an images prefix each of N parallel workers processes.

Cases are sorted and shard ``i`` of ``n`` takes every ``n``-th case from index ``i`` (nnU-Net's
``part_id``/``num_parts`` split), so the assignment depends only on the set of case ids.
"""

from __future__ import annotations

from pydantic import Field

from stages import storage
from stages.documents import Document
from stages.errors import BadInputError


class ShardPlan(Document):
    """Cases found under an images prefix and their split into shards (written by ``list-cases``)."""

    KIND = "shard plan"
    SCHEMA_VERSION = 1

    source: str = Field(description="The images prefix that was listed.")
    num_shards: int = Field(ge=1, description="Number of shards requested.")
    modalities: list[int] = Field(description="Modality indices every case has (the _XXXX of its file names).")
    cases: dict[str, list[str]] = Field(
        description="Case id -> its file names relative to the source, in modality order."
    )
    shards: list[list[str]] = Field(description="Case ids of each shard; shard i holds sorted cases [i::n].")

    @property
    def active_shards(self) -> list[int]:
        """Indices of the shards that hold at least one case (what a workflow fans out over)."""
        return [i for i, ids in enumerate(self.shards) if ids]

    def shard(self, index: int) -> list[str]:
        """Case ids of shard ``index``.

        Raises:
            BadInputError: ``index`` is not a shard of this plan.
        """
        if not 0 <= index < len(self.shards):
            raise BadInputError(f"shard {index} does not exist: the plan has shards 0..{len(self.shards) - 1}")
        return list(self.shards[index])

    def shard_files(self, index: int) -> dict[str, list[str]]:
        """``{case id: [file URIs in modality order]}`` of shard ``index``."""
        return {case: [storage.join(self.source, n) for n in self.cases[case]] for case in self.shard(index)}


def split_cases(case_ids: list[str], num_shards: int) -> list[list[str]]:
    """Sorted ``case_ids`` split into ``num_shards`` lists, list ``i`` holding ``sorted(ids)[i::num_shards]``.

    Raises:
        BadInputError: ``num_shards`` is below 1.
    """
    if num_shards < 1:
        raise BadInputError(f"the number of shards must be at least 1, got {num_shards}")
    ordered = sorted(case_ids)
    return [ordered[i::num_shards] for i in range(num_shards)]
