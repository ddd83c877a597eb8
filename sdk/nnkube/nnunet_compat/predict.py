"""``nnUNet_predict -i IN -o OUT -t TASK -m CONFIG [-f FOLDS] ...`` with nnU-Net v1's flags and folders (spec §8).

The model is ``$RESULTS_FOLDER/nnUNet/<CONFIG>/<TASK>/<TRAINER>__<PLANS>``; for ``-m 3d_cascade_fullres`` the
trainer is ``-ctr`` and, without ``-l``, the 3d_lowres model (trainer ``-tr``) first predicts into
``OUT/3d_lowres_predictions``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from nnkube.nnunet_compat._cli import guarded

log = logging.getLogger("nnUNet_predict")

CONFIGURATIONS = ("2d", "3d_lowres", "3d_fullres", "3d_cascade_fullres")


def build_parser() -> argparse.ArgumentParser:
    """Argument parser with nnU-Net v1's ``nnUNet_predict`` flags."""
    p = argparse.ArgumentParser(prog="nnUNet_predict", description="Predict a folder of cases with a trained "
                                "nnU-Net model (input files <case>_XXXX.nii.gz, one per modality).")
    p.add_argument("-i", "--input_folder", required=True,
                   help="input folder: <case>_0000.nii.gz, <case>_0001.nii.gz ... (every case needs every modality)")
    p.add_argument("-o", "--output_folder", required=True, help="folder receiving <case>.nii.gz (created)")
    p.add_argument("-t", "--task_name", required=True, help="task name (Task004_Hippocampus) or id (4)")
    p.add_argument("-m", "--model", default="3d_fullres", choices=CONFIGURATIONS,
                   help="configuration to predict with (default 3d_fullres)")
    p.add_argument("-tr", "--trainer_class_name", default="nnUNetTrainerV2",
                   help="trainer of the model (for 3d_cascade_fullres: of the 3d_lowres stage)")
    p.add_argument("-ctr", "--cascade_trainer_class_name", default="nnUNetTrainerV2CascadeFullRes",
                   help="trainer of the 3d_cascade_fullres model")
    p.add_argument("-p", "--plans_identifier", default="nnUNetPlansv2.1", help="plans identifier")
    p.add_argument("-f", "--folds", nargs="+", default=None,
                   help="folds to average, e.g. 0 1 2 3 4 or all (default: every fold_* folder of the model)")
    p.add_argument("-z", "--save_npz", action="store_true",
                   help="also save the softmax probabilities (<case>.npz), needed by nnUNet_ensemble")
    p.add_argument("-l", "--lowres_segmentations", default=None,
                   help="3d_cascade_fullres: folder of existing 3d_lowres predictions (default: predict 3d_lowres "
                   "first into OUTPUT/3d_lowres_predictions)")
    p.add_argument("--part_id", type=int, default=0,
                   help="this process's shard: predicts sorted(cases)[part_id::num_parts] (multi-GPU/multi-node)")
    p.add_argument("--num_parts", type=int, default=1, help="number of shards the cases are split into")
    p.add_argument("--num_threads_preprocessing", type=int, default=None,
                   help="background preprocessing processes (default: the CPUs available, at most 6)")
    p.add_argument("--num_threads_nifti_save", type=int, default=None,
                   help="processes writing the results (default: the CPUs available, at most 2)")
    p.add_argument("--disable_tta", action="store_true",
                   help="no mirroring test-time augmentation (about 8x faster in 3D, slightly worse)")
    p.add_argument("--overwrite_existing", action="store_true",
                   help="predict cases whose output exists already (default: skip them)")
    p.add_argument("--step_size", type=float, default=0.5,
                   help="sliding-window stride as a fraction of the patch size (default 0.5)")
    p.add_argument("-chk", "--checkpoint", default="model_final_checkpoint",
                   help="checkpoint name in each fold folder (default model_final_checkpoint)")
    p.add_argument("--disable_mixed_precision", action="store_true",
                   help="predict in float32 on the GPU (mixed precision is used on CUDA only)")
    p.add_argument("--disable_postprocessing", action="store_true",
                   help="do not apply the model folder's postprocessing.json")
    p.add_argument("--mode", default="normal", help="accepted for compatibility with nnU-Net v1; ignored")
    p.add_argument("--all_in_gpu", default="None", help="accepted for compatibility with nnU-Net v1; ignored")
    return p


def _search_dirs(results: Path, configuration: str) -> list[Path]:
    dirs = [results / "nnUNet" / configuration]
    for var, sub in (("nnUNet_preprocessed", ""), ("nnUNet_raw_data_base", "nnUNet_raw_data")):
        if os.environ.get(var, "").strip():
            dirs.append(Path(os.environ[var]) / sub)
    return dirs


def _folds(values: list[str] | None) -> list[str] | None:
    from stages.errors import BadInputError

    if values is None:
        return None
    if any(not (v.isdigit() or v == "all") for v in values):
        raise BadInputError(f"-f {' '.join(values)}: expected fold numbers (0 1 2 3 4) or all")
    return values


def main(argv: list[str] | None = None) -> int:
    """``nnUNet_predict``: parse ``argv`` (default ``sys.argv[1:]``), predict, return the exit code."""
    args = build_parser().parse_args(argv)

    def work() -> None:
        from stages.paths import env_folder, resolve_task, trainer_dir
        from stages.predict.cascade import predict_cascade
        from stages.predict.predictor import AUTO, load_model, predict_cases

        results = env_folder("RESULTS_FOLDER")
        task = resolve_task(args.task_name, *_search_dirs(results, args.model))
        folds = _folds(args.folds)
        amp = False if args.disable_mixed_precision else None
        options = {"save_npz": args.save_npz, "disable_tta": args.disable_tta, "step_size": args.step_size,
                   "part_id": args.part_id, "num_parts": args.num_parts, "overwrite": args.overwrite_existing,
                   "num_threads_preprocessing": args.num_threads_preprocessing,
                   "num_threads_nifti_save": args.num_threads_nifti_save,
                   "postprocessing": None if args.disable_postprocessing else AUTO}
        if args.mode != "normal" or args.all_in_gpu != "None":
            log.warning("--mode and --all_in_gpu are ignored")
        if args.model == "3d_cascade_fullres":
            folder = trainer_dir(results, args.model, task, args.cascade_trainer_class_name, args.plans_identifier)
            model = load_model(folder, folds, args.checkpoint, amp=amp)
            lowres = None
            if args.lowres_segmentations is None:
                lowres_folder = trainer_dir(results, "3d_lowres", task, args.trainer_class_name,
                                            args.plans_identifier)
                lowres = load_model(lowres_folder, folds, args.checkpoint, amp=amp)
            result = predict_cascade(model, lowres, args.input_folder, args.output_folder,
                                     args.lowres_segmentations, **options)
        else:
            folder = trainer_dir(results, args.model, task, args.trainer_class_name, args.plans_identifier)
            model = load_model(folder, folds, args.checkpoint, amp=amp)
            result = predict_cases(model, args.input_folder, args.output_folder, **options)
        sys.stdout.write(f"predicted {len(result.predicted)} case(s) ({len(result.skipped)} already done) with "
                         f"{model.configuration} folds {','.join(model.folds)} into {args.output_folder}\n")

    return guarded("nnUNet_predict", work)


if __name__ == "__main__":
    sys.exit(main())
