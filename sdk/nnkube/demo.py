"""``nnkube demo``: the whole pipeline on one machine through the local runner, on local disk by default.

convert -> verify -> fingerprint -> plan -> preprocess (3d_fullres) -> train (fold 0, tiny budget) -> predict, each
step a separate ``python -m stages`` process that shares nothing with the others but the storage root.
"""

from __future__ import annotations

import logging
from pathlib import Path

from nnkube.local import Step, run_pipeline

log = logging.getLogger(__name__)


def demo_steps(dataset: str, root: str, epochs: int, iterations: int, train: bool = True, tta: bool = False
               ) -> list[Step]:
    """The demo pipeline's steps for an MSD task folder ``dataset`` with storage root ``root`` (path or URI).

    Args:
        dataset: MSD task folder or prefix (``TaskXX_Name``).
        root: Storage root (local folder or ``s3://`` prefix) receiving every stage's outputs.
        epochs: Training epochs of fold 0.
        iterations: Training iterations per epoch (validation batches per epoch: the same, at most 50).
        train: Include training and prediction.
        tta: Mirroring test-time augmentation when predicting imagesTs (8x slower on a CPU).
    """
    task_msd = Path(dataset.rstrip("/")).name
    raw = f"{root}/raw"
    # TaskXX_Name -> TaskXXX_Name, as nnUNet_convert_decathlon_task names it
    tid, name = task_msd[4:].split("_", 1)
    task = f"Task{int(tid):03d}_{name}"
    raw_task = f"{raw}/{task}"
    pre = f"{root}/preprocessed/{task}"
    model = f"{root}/results/nnUNet/3d_fullres/{task}/nnUNetTrainerV2__nnUNetPlansv2.1"
    steps = [
        # --overwrite: a rerun on a changed MSD input replaces the task this pipeline converted before
        Step("convert", "convert", ["--input", dataset, "--output", raw, "--overwrite"]),
        # with a report, verification is skipped while the converted task is unchanged
        Step("verify", "verify", ["--dataset", raw_task, "--report", f"{root}/reports/verify_{task}.json"]),
        Step("fingerprint", "fingerprint", ["--dataset", raw_task, "--output", f"{pre}/dataset_fingerprint.json"]),
        Step("plan", "plan", ["--fingerprint", f"{pre}/dataset_fingerprint.json", "--output", pre]),
        Step("preprocess", "preprocess", ["--dataset", raw_task, "--plans", f"{pre}/nnUNetPlansv2.1_plans_3D.json",
                                          "--configuration", "3d_fullres", "--output", pre]),
    ]
    if train:
        steps += [
            Step("train", "train", ["--preprocessed", pre, "--output", model, "--configuration", "3d_fullres",
                                    "--fold", "0", "--epochs", str(epochs), "--iterations", str(iterations),
                                    "--val-iterations", str(min(iterations, 50))]),
            Step("predict", "predict", ["--model", model, "--input", f"{raw_task}/imagesTs", "--folds", "0",
                                        "--output", f"{root}/predictions/{task}", *([] if tta else ["--disable-tta"])]),
        ]
    return steps


def run_demo(dataset: str, workdir: str, epochs: int = 1, iterations: int = 10, train: bool = True,
             tta: bool = False) -> Path:
    """Run the demo pipeline; returns the folder of per-step result JSONs."""
    work = Path(workdir).resolve()
    results = work / "step_results"
    steps = demo_steps(str(Path(dataset).resolve()), str(work), epochs, iterations, train, tta)
    runs = run_pipeline(steps, results)
    for r in runs:
        status = (r.result or {}).get("status", "done")
        log.info("%-12s %-8s %6.1f s", r.step.name, status, r.seconds)
    return results
