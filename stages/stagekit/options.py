"""Command-line options every stage shares (fresh ``typer.Option`` objects, one per use)."""

from __future__ import annotations

import typer

from stages.stagekit.guard import RAW_PREFIX_ENV


def result_json_option() -> typer.models.OptionInfo:
    """``--result-json``: where the stage's :class:`~stages.stagekit.run.StageResult` is written."""
    return typer.Option(
        None, "--result-json",
        help="Local path or URI receiving the stage result as JSON (status done/skipped, outputs, input digest, "
        "seconds, stage summary) for Argo output parameters.",
    )


def raw_prefix_option() -> typer.models.OptionInfo:
    """``--raw-prefix`` (env ``NNKUBE_RAW_PREFIX``): prefixes the stage must never write."""
    return typer.Option(
        None, "--raw-prefix", envvar=RAW_PREFIX_ENV,
        help="Raw-data prefix(es), comma-separated, that this stage must never write (the stage's own dataset "
        f"input is always protected). Default: ${RAW_PREFIX_ENV}.",
    )
