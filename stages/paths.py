"""nnU-Net v1's folder layout, as values: where a task's raw, preprocessed and result folders are.

The seed's environment variables (``nnUNet_raw_data_base``, ``nnUNet_preprocessed``, ``RESULTS_FOLDER``) are
read only by :func:`env_folder`, called from command-line edges; library functions take folders as arguments.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from stages import storage
from stages.errors import BadInputError
from stages.plan.models import PLANS_IDENTIFIER

_TASK_RE = re.compile(r"^Task(\d{2,3})_(.+)$")
LOWRES_CONFIGURATION = "3d_lowres"
CASCADE_CONFIGURATION = "3d_cascade_fullres"
PRED_NEXT_STAGE = "pred_next_stage"  # the 3d_lowres trainer folder's predictions for the cascade


def env_folder(var: str) -> Path:
    """The folder named by environment variable ``var``; a clear error when it is unset."""
    value = os.environ.get(var, "").strip()
    if not value:
        raise BadInputError(f"environment variable {var} is not set (nnU-Net v1 folder layout)")
    return Path(value)


def resolve_task(task: str | int, *search_dirs: Path) -> str:
    """Full task name (``Task004_Hippocampus``) from an id (``4``, ``004``) or a full name.

    Args:
        task: Task id or name.
        search_dirs: Folders whose ``TaskXXX_*`` children are searched, in order.
    """
    text = str(task)
    if _TASK_RE.match(text):
        return text
    if not text.isdigit():
        raise BadInputError(f"task {text!r}: expected a task id (e.g. 4) or a name like Task004_Hippocampus")
    tid = int(text)
    for d in search_dirs:
        if not d.is_dir():
            continue
        for child in sorted(d.iterdir()):
            m = _TASK_RE.match(child.name)
            if m and int(m.group(1)) == tid and child.is_dir():
                return child.name
    raise BadInputError(f"no task with id {tid} found in {', '.join(str(d) for d in search_dirs)}")


def raw_task_dir(raw_data_base: Path, task: str) -> Path:
    """``$nnUNet_raw_data_base/nnUNet_raw_data/TaskXXX_NAME``."""
    return raw_data_base / "nnUNet_raw_data" / task


def trainer_dir(results_folder: Path, configuration: str, task: str, trainer: str,
                plans_identifier: str = PLANS_IDENTIFIER) -> Path:
    """``$RESULTS_FOLDER/nnUNet/<configuration>/<task>/<trainer>__<plans>``."""
    return results_folder / "nnUNet" / configuration / task / f"{trainer}__{plans_identifier}"


def fold_dir(trainer_folder: Path, fold: int | str) -> Path:
    """``<trainer folder>/fold_<f>`` (``fold_all`` for fold "all")."""
    return trainer_folder / f"fold_{fold}"


def lowres_prediction_folder(trainer_folder: str, previous_trainer: str, plans_identifier: str) -> str:
    """nnU-Net v1's ``pred_next_stage`` location for a cascade trainer folder (local path or ``s3://`` URI).

    ``<results>/nnUNet/3d_cascade_fullres/<task>/<trainer>__<plans>`` ->
    ``<results>/nnUNet/3d_lowres/<task>/<previous_trainer>__<plans>/pred_next_stage``.
    """
    task_folder = storage.parent(trainer_folder)
    results = storage.parent(storage.parent(task_folder))
    return storage.join(results, LOWRES_CONFIGURATION, storage.basename(task_folder),
                        f"{previous_trainer}__{plans_identifier}", PRED_NEXT_STAGE)
