"""List the cases under an images prefix: files ``<case>_XXXX<suffix>`` grouped by case, checked for gaps."""

from __future__ import annotations

import logging
from collections import defaultdict

from stages import storage
from stages.dataset.layout import is_hidden, modality_file_name, split_image_file_name
from stages.errors import BadInputError, DatasetError
from stages.imageio import has_image_suffix
from stages.listcases.models import ShardPlan, split_cases

log = logging.getLogger(__name__)

MAX_LISTED = 20  # problems named in one error message


def _fail(prefix: str, problems: list[str]) -> DatasetError:
    shown = problems[:MAX_LISTED]
    more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    return DatasetError(f"{prefix}: {len(problems)} problem(s) with the input cases:\n  " + "\n  ".join(shown) + more)


def list_cases(prefix: str, num_modalities: int | None = None) -> tuple[dict[str, list[str]], list[int]]:
    """The cases directly under ``prefix`` and their files in modality order.

    Args:
        prefix: Folder or ``s3://`` prefix holding ``<case>_XXXX<suffix>`` image files (subfolders, hidden
            files and files that are not images are ignored).
        num_modalities: Modalities every case must have (0..K-1); default: every modality any case has.

    Returns:
        ``({case id: [file names relative to prefix, modality order]}, modality indices)``.

    Raises:
        DatasetError: No case found, an image file lacks the ``_XXXX`` suffix, a modality is present twice,
            unexpected, or missing for some case (every problem names the case and the file).
    """
    found: dict[str, dict[int, list[str]]] = defaultdict(lambda: defaultdict(list))
    problems: list[str] = []
    ignored = 0
    for uri in storage.list_prefix(prefix, recursive=False):
        name = storage.basename(uri)
        if uri.endswith("/") or is_hidden(name):
            continue
        if not has_image_suffix(name):
            ignored += 1
            continue
        parsed = split_image_file_name(name)
        if parsed is None:
            problems.append(f"{name}: file name lacks the _XXXX modality suffix (expected <case>_0000.nii.gz)")
            continue
        found[parsed[0]][parsed[1]].append(name)
    if ignored:
        log.warning("%s: ignored %d file(s) that are not images", prefix, ignored)
    if not found and not problems:
        raise DatasetError(f"{prefix}: no image files named <case>_XXXX.nii.gz found")
    expected = (list(range(num_modalities)) if num_modalities is not None
                else sorted({m for mods in found.values() for m in mods}))
    cases: dict[str, list[str]] = {}
    for case in sorted(found):
        mods = found[case]
        for m in sorted(mods):
            if len(mods[m]) > 1:
                problems.append(f"case {case}: modality {m:04d} present in several files: {', '.join(mods[m])}")
            if m not in expected:
                problems.append(f"case {case}: {mods[m][0]}: modality {m:04d} is not expected "
                                f"(modalities {', '.join(f'{e:04d}' for e in expected)})")
        for m in expected:
            if m not in mods:
                problems.append(f"case {case}: missing modality {m:04d} ({modality_file_name(case, m)})")
        cases[case] = [mods[m][0] for m in expected if m in mods]
    if problems:
        raise _fail(prefix, problems)
    return cases, expected


def make_shard_plan(prefix: str, num_shards: int, num_modalities: int | None = None) -> ShardPlan:
    """List the cases under ``prefix`` (see :func:`list_cases`) and split them into ``num_shards`` shards."""
    if num_shards < 1:
        raise BadInputError(f"--num-shards must be at least 1, got {num_shards}")
    cases, modalities = list_cases(prefix, num_modalities)
    return ShardPlan(source=prefix.rstrip("/"), num_shards=num_shards, modalities=modalities, cases=cases,
                     shards=split_cases(list(cases), num_shards))
