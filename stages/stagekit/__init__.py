"""Shared machinery of the stage entrypoints: idempotent runs, completion markers, the raw-data guard.

Every stage CLI (``python -m stages <step>``) wraps its computation in :func:`run_stage`: inputs and outputs are
URIs (``s3://`` or local), the work happens in a scratch folder, outputs are uploaded, a completion marker is
written last, and a :class:`StageResult` goes to ``--result-json``. A rerun whose inputs and parameters are
unchanged (same :func:`input_digest`) skips its work.
"""

from __future__ import annotations

from stages.stagekit.guard import RAW_PREFIX_ENV, WriteGuard, is_under, protected_prefixes
from stages.stagekit.identity import identities_of, input_digest, input_identities, prefix_identities
from stages.stagekit.run import (
    MARKER_GLOB,
    MARKER_NAME,
    CompletionMarker,
    StageResult,
    marker_uri,
    read_marker,
    run_stage,
    scratch_dir,
    terminate_as_transient,
    write_result,
)

__all__ = [
    "MARKER_GLOB",
    "MARKER_NAME",
    "RAW_PREFIX_ENV",
    "CompletionMarker",
    "StageResult",
    "WriteGuard",
    "identities_of",
    "input_digest",
    "input_identities",
    "is_under",
    "marker_uri",
    "prefix_identities",
    "protected_prefixes",
    "read_marker",
    "run_stage",
    "scratch_dir",
    "terminate_as_transient",
    "write_result",
]
