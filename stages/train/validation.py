"""Final validation of a trained fold (spec §6.7): predict every validation case, export, evaluate.

Cases are predicted from their preprocessed arrays with the same function nnUNet_predict uses
(:func:`stages.predict.engine.predict_preprocessed`), so a training case predicted later by nnUNet_predict
gives the same result. Exports run in a process pool while the network goes on with the next case.
"""

from __future__ import annotations

import logging
import shutil

from stages.documents import write_json_atomic
from stages.evaluate.evaluator import evaluate_folder
from stages.predict.engine import mirror_axes_for, predict_preprocessed
from stages.predict.export import ExportPool
from stages.preprocess.preprocessor import load_case
from stages.preprocess.revert import ExportResampling

log = logging.getLogger(__name__)

GT_FOLDER = "gt_segmentations"


def validate_fold(trainer, save_npz: bool = False, folder_name: str = "validation_raw",
                  use_mirroring: bool = True) -> dict | None:
    """Predict and evaluate the fold's validation cases; returns the summary (rank 0) or None.

    Args:
        trainer: An initialized trainer holding the final weights.
        save_npz: Also export softmax probabilities (``--npz``) for ensembling.
        folder_name: Output folder inside the fold folder.
        use_mirroring: Mirroring test-time augmentation over the trainer's mirror axes.
    """
    _, val_keys = trainer.split()
    keys = val_keys[trainer.dist.rank :: trainer.dist.world_size]
    out = trainer.output_dir / folder_name
    out.mkdir(parents=True, exist_ok=True)
    network = trainer.network
    network.eval()
    axes = mirror_axes_for(trainer.dimension) if use_mirroring else ()
    write_json_atomic(out.parent / "validation_args.json",
                      {"save_npz": save_npz, "use_mirroring": use_mirroring, "mirror_axes": list(axes),
                       "step_size": trainer.config.val_step_size, "checkpoint": "model_final_checkpoint"})
    with ExportPool() as pool:
        for i, case_id in enumerate(keys):
            data, _seg, props = load_case(trainer.data_folder, case_id, mmap=False)
            data = trainer.network_input(case_id, data)
            probs = predict_preprocessed([network], data, trainer.stage_plan, trainer.dimension, trainer.num_classes,
                                         axes, trainer.config.val_step_size, trainer.device, trainer.amp)
            pool.submit(probs, props, out / f"{case_id}.nii.gz", trainer.plans.transpose_backward, save_npz,
                        ExportResampling.from_plans(trainer.plans))
            log.info("validation %d/%d: %s", i + 1, len(keys), case_id)
    from stages.train.ddp import barrier

    barrier()
    if not trainer.dist.is_main:
        return None
    gt = trainer.preprocessed_dir / GT_FOLDER
    labels = list(range(trainer.num_classes))
    summary = evaluate_folder(gt, out, labels, out / "summary.json", num_processes=1,
                              name=f"{trainer.configuration} fold {trainer.fold}", task=trainer.task)
    gt_copy = trainer.output_dir.parent / "gt_niftis"
    gt_copy.mkdir(exist_ok=True)
    for case_id in val_keys:
        for src in gt.glob(f"{case_id}.*"):
            if not (gt_copy / src.name).exists():
                shutil.copy2(src, gt_copy / src.name)
    dice = summary["results"]["mean"]["mean"]["Dice"]
    trainer.log("final validation: %d cases, mean foreground Dice %s", len(val_keys), dice)
    return summary
