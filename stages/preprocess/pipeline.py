"""nnU-Net v1's ``plan_and_preprocess`` as one function: verify, fingerprint, plan, preprocess.

Output layout of the task's preprocessed folder (spec §0, JSON instead of pickles)::

    dataset.json, dataset_fingerprint.json, nnUNetPlansv2.1_plans_3D.json, nnUNetPlansv2.1_plans_2D.json,
    gt_segmentations/, nnUNetData_plans_v2.1_stage0/ [stage1/], nnUNetData_plans_v2.1_2D_stage0/
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from stages.errors import DatasetError
from stages.plan.models import Plans, plans_filename

log = logging.getLogger(__name__)

FINGERPRINT_FILE = "dataset_fingerprint.json"


@dataclass
class PlanAndPreprocessResult:
    """What :func:`plan_and_preprocess` wrote."""

    preprocessed_dir: Path
    plans_3d: Plans | None = None
    plans_2d: Plans | None = None
    configurations: list[str] = field(default_factory=list)
    case_ids: list[str] = field(default_factory=list)


def plan_and_preprocess(
    raw_task_dir: str | Path,
    preprocessed_dir: str | Path,
    planner_3d: str | None = "ExperimentPlanner3D_v21",
    planner_2d: str | None = "ExperimentPlanner2D_v21",
    verify: bool = False,
    num_processes_lowres: int = 8,
    num_processes_fullres: int = 8,
    preprocess: bool = True,
) -> PlanAndPreprocessResult:
    """Verify (optional), fingerprint, plan and preprocess one raw task.

    Args:
        raw_task_dir: ``$nnUNet_raw_data_base/nnUNet_raw_data/TaskXXX_NAME``.
        preprocessed_dir: ``$nnUNet_preprocessed/TaskXXX_NAME`` (created).
        planner_3d: 3D planner name, or None to skip 3D (``-pl3d None``).
        planner_2d: 2D planner name, or None to skip 2D.
        verify: Run the dataset integrity check first and stop on any problem.
        num_processes_lowres: ``-tl``: processes for the 3d_lowres stage of a cascade.
        num_processes_fullres: ``-tf``: processes for fingerprinting and every other stage.
        preprocess: False plans only (``-no_pp``).
    """
    from stages.dataset.verify import format_report, verify_dataset
    from stages.fingerprint.extract import extract_fingerprint
    from stages.plan.experiment import configurations, plan_experiment
    from stages.preprocess.preprocessor import preprocess_dataset

    raw_task_dir, out = Path(raw_task_dir), Path(preprocessed_dir)
    if verify:
        report = verify_dataset(raw_task_dir, workers=num_processes_fullres)
        if not report.ok:
            raise DatasetError(format_report(report))
        log.info("dataset integrity verified: %s", raw_task_dir.name)
    out.mkdir(parents=True, exist_ok=True)
    fingerprint = extract_fingerprint(raw_task_dir, num_processes=num_processes_fullres)
    fingerprint.save(out / FINGERPRINT_FILE)
    shutil.copy2(raw_task_dir / "dataset.json", out / "dataset.json")
    plans_3d, plans_2d = plan_experiment(fingerprint, planner_3d, planner_2d)
    result = PlanAndPreprocessResult(out, plans_3d, plans_2d, configurations(plans_3d, plans_2d),
                                     fingerprint.case_ids)
    for plans in (plans_3d, plans_2d):
        if plans is None:
            continue
        plans.save(out / plans_filename(plans.dimension, plans.plans_identifier))
        if not preprocess:
            continue
        for stage in range(plans.num_stages):
            lowres = plans.has_cascade and stage == 0
            nproc = num_processes_lowres if lowres else num_processes_fullres
            preprocess_dataset(raw_task_dir, plans, [stage], out, nproc)
    log.info("planned configurations: %s", ", ".join(result.configurations))
    return result
