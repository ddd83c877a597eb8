"""Run pieces of the reference nnU-Net v2 (PyPI ``nnunetv2``) for the benchmarks.

This script runs INSIDE the separate venv made by ``benchmarks/setup_nnunetv2.sh`` (never in the nnkube venv)
and expects ``nnUNet_raw``, ``nnUNet_preprocessed`` and ``nnUNet_results`` in the environment (the harness sets
them). Subcommands:

* ``plan_and_preprocess -d 4 -np 2 [-c 3d_fullres]``: fingerprint extraction, default ``ExperimentPlanner`` and
  ``DefaultPreprocessor`` for the listed configurations, i.e. what ``nnUNetv2_plan_and_preprocess -d 4 -c
  3d_fullres -np 2 -npfp 2`` does, without the integrity check.
* ``train_iterations -d 4 -c 3d_fullres -f 0 -n 10``: instantiate ``nnUNetTrainer``, run ``-n`` timed training
  iterations after ``--warmup`` untimed ones, then time ``--loader-batches`` batches drawn from the training data
  loader alone; prints one JSON object (seconds/iteration, loader batches/s, batch and patch size).
  ``--save-checkpoint`` keeps ``checkpoint_final.pth`` so that ``predict`` has a model to run.
* ``train -d 4 -c 3d_fullres -f 0 --epochs 10 --iterations 50``: a whole (short) training run,
  ``nnUNetTrainer`` with ``num_epochs`` / ``num_iterations_per_epoch`` overridden, then its final validation
  (``perform_actual_validation``, as ``nnUNetv2_train`` does); prints ``RESULT {json}`` with the foreground mean
  Dice of ``fold_<f>/validation/summary.json``.
* ``predict -d 4 -c 3d_fullres -f 0 -i IN -o OUT``: ``nnUNetPredictor`` from that checkpoint (sliding window,
  Gaussian, step 0.5, mirroring unless ``--disable-tta``). Prints ``PHASE load ...`` once the model is loaded and
  ``CASE_SECONDS <s>`` after each case's network pass (sliding window + mirroring), for the benchmark's
  per-case figures.

``--threads N`` sets torch's intra-op threads (default: the CPUs this process may use, as ``nnUNetv2_train`` and
``nnUNetv2_predict`` do on the CPU with ``multiprocessing.cpu_count()``).

The torchvision trap, and the patch: on these machines torch is the CPU wheel 2.13.0 while PyPI's torchvision
(pulled in through ``timm``, a dependency of ``dynamic_network_architectures``) is built for another torch and
fails at import with ``RuntimeError: operator torchvision::nms does not exist``. Checked for nnunetv2 2.8.1:
nothing on the default path imports torchvision. Only the *by-name* class lookups do
(``nnunetv2.utilities.find_class_by_name.recursive_find_python_class``): they import every module of a package
until the class turns up, top-level modules first, then sub-packages. The default names (``nnUNetTrainer``,
``ExperimentPlanner``, ``DatasetFingerprintExtractor``, ``DefaultPreprocessor``) sit in top-level modules and are
found before any sub-package is entered; any other trainer name (``nnUNetTrainer_5epochs`` ...) walks into
``training/nnUNetTrainer/primus/primus_trainers.py`` -> ``dynamic_network_architectures.architectures.primus``
-> ``timm`` -> ``torchvision`` and crashes. So this launcher (1) imports every class it uses from its module
directly and calls the API functions that take classes (never the ``nnUNetv2_*`` entry points, which look the
trainer up by name), and (2) puts ``None`` into ``sys.modules["torchvision"]`` before importing nnunetv2, so an
accidental import fails at once with a plain ImportError naming torchvision instead of the operator error deep
inside torch's op registry. No nnunetv2 file is modified.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import sys
import time
from collections.abc import Iterator
from typing import Any

import harness  # this folder; stdlib only, so it imports in either venv

sys.modules["torchvision"] = None  # type: ignore[assignment]  # see the module docstring

REQUIRED_ENV = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")


def _check_env() -> None:
    missing = [name for name in REQUIRED_ENV if not os.environ.get(name)]
    if missing:
        sys.exit(f"nnunetv2_launcher: set {', '.join(missing)} (the benchmark harness does this)")


@contextlib.contextmanager
def _phase(name: str) -> Iterator[None]:
    """Print ``PHASE <name> <seconds> <max RSS of this process so far, MB>`` after the block (for the logs)."""
    started = time.perf_counter()
    yield
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"PHASE {name} {time.perf_counter() - started:.2f}s maxrss_self={rss_mb:.0f}MB", flush=True)


def plan_and_preprocess(dataset_id: int, num_processes: int, configurations: list[str]) -> None:
    """Fingerprint, plan and preprocess one dataset with nnU-Net v2's default classes."""
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import (
        DatasetFingerprintExtractor,
    )
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprint_dataset,
        plan_experiment_dataset,
        preprocess_dataset,
    )

    with _phase("fingerprint"):
        extract_fingerprint_dataset(dataset_id, DatasetFingerprintExtractor, num_processes,
                                    check_dataset_integrity=False, clean=True, verbose=False,
                                    show_progress_bar=False)
    with _phase("plan"):
        _, plans_identifier = plan_experiment_dataset(dataset_id, ExperimentPlanner)
    with _phase("preprocess"):
        preprocess_dataset(dataset_id, plans_identifier, configurations, [num_processes] * len(configurations),
                           verbose=False, show_progress_bar=False)


def _set_threads(threads: int | None) -> int:
    """Set torch's intra-op threads (None: the CPUs in this process's affinity mask); return the count."""
    import torch

    torch.set_num_threads(threads or len(os.sched_getaffinity(0)))
    return torch.get_num_threads()


def _make_trainer(dataset_id: int, configuration: str, fold: int, device_name: str) -> Any:
    import torch
    from batchgenerators.utilities.file_and_folder_operations import join, load_json
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    folder = join(nnUNet_preprocessed, maybe_convert_to_dataset_name(dataset_id))
    plans = load_json(join(folder, "nnUNetPlans.json"))
    plans["continue_training"] = False  # 2.8.x pops this key in the trainer's __init__
    dataset_json = load_json(join(folder, "dataset.json"))
    return nnUNetTrainer(plans=plans, configuration=configuration, fold=fold, dataset_json=dataset_json,
                         device=torch.device(device_name))


def train_iterations(dataset_id: int, configuration: str, fold: int, iterations: int, warmup: int,
                     loader_batches: int, device_name: str, save_checkpoint: bool) -> dict[str, Any]:
    """Time ``iterations`` training steps and the training data loader alone; return the figures."""
    import torch

    if warmup + iterations < 1:
        raise SystemExit("train_iterations: --warmup + --iterations must be at least 1")
    trainer = _make_trainer(dataset_id, configuration, fold, device_name)
    trainer.disable_checkpointing = not save_checkpoint
    started = time.perf_counter()
    trainer.on_train_start()
    setup_s = time.perf_counter() - started
    trainer.on_epoch_start()
    trainer.on_train_epoch_start()
    step_s: list[float] = []
    for index in range(warmup + iterations):
        t0 = time.perf_counter()
        trainer.train_step(next(trainer.dataloader_train))
        if device_name.startswith("cuda"):
            torch.cuda.synchronize()
        if index >= warmup:
            step_s.append(time.perf_counter() - t0)
    # The loader's queues refill while we are not drawing: drain everything that can be buffered (the mp queue,
    # the pin-memory queue, one item per worker), then time steady-state draws.
    loader = trainer.dataloader_train
    for _ in range(2 * getattr(loader, "num_cached", 0) + getattr(loader, "num_processes", 0) + 1):
        next(loader)
    t0 = time.perf_counter()
    for _ in range(loader_batches):
        next(trainer.dataloader_train)
    loader_s = time.perf_counter() - t0
    trainer.on_train_end()
    return {
        "configuration": configuration,
        "fold": fold,
        "device": device_name,
        "torch_threads": torch.get_num_threads(),
        "n_proc_da": int(os.environ.get("nnUNet_n_proc_DA", "-1")),
        "batch_size": int(trainer.batch_size),
        "patch_size": [int(v) for v in trainer.configuration_manager.patch_size],
        **harness.iteration_timings(setup_s, iterations, step_s, loader_batches, loader_s),
        "torchvision_imported": sys.modules.get("torchvision") is not None,
    }


def train(dataset_id: int, configuration: str, fold: int, epochs: int, iterations: int, val_iterations: int,
          device_name: str) -> dict[str, Any]:
    """Train a fold for ``epochs`` x ``iterations``, run its final validation; return Dice and timings."""
    from batchgenerators.utilities.file_and_folder_operations import join, load_json

    trainer = _make_trainer(dataset_id, configuration, fold, device_name)
    trainer.num_epochs = epochs
    trainer.num_iterations_per_epoch = iterations
    trainer.num_val_iterations_per_epoch = val_iterations
    started = time.perf_counter()
    with _phase("train"):
        trainer.run_training()
    train_s = time.perf_counter() - started
    with _phase("validation"):
        trainer.perform_actual_validation(save_probabilities=False)
    summary = load_json(join(trainer.output_folder, "validation", "summary.json"))
    return {
        "epochs": epochs,
        "iterations_per_epoch": iterations,
        "val_iterations": val_iterations,
        "train_s": train_s,
        "validation_s": time.perf_counter() - started - train_s,
        "foreground_mean_dice": summary["foreground_mean"]["Dice"],
        "dice_per_label": {label: values["Dice"] for label, values in summary["mean"].items()},
        "summary": join(trainer.output_folder, "validation", "summary.json"),
    }


def _time_cases(predictor: Any) -> None:
    """Wrap the predictor's per-case network pass so that it prints ``CASE_SECONDS <s>`` after each case."""
    inner = predictor.predict_logits_from_preprocessed_data

    def timed(data: Any) -> Any:
        started = time.perf_counter()
        out = inner(data)
        print(f"CASE_SECONDS {time.perf_counter() - started:.4f}", flush=True)
        return out

    predictor.predict_logits_from_preprocessed_data = timed


def predict(dataset_id: int, configuration: str, fold: int, input_dir: str, output_dir: str,
            num_processes: int, step_size: float, disable_tta: bool, device_name: str) -> None:
    """Predict every ``*_0000`` image in ``input_dir`` with the fold's ``checkpoint_final.pth``."""
    import torch
    from batchgenerators.utilities.file_and_folder_operations import join
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.paths import nnUNet_results
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    model_dir = join(nnUNet_results, maybe_convert_to_dataset_name(dataset_id),
                     f"nnUNetTrainer__nnUNetPlans__{configuration}")
    predictor = nnUNetPredictor(tile_step_size=step_size, use_gaussian=True, use_mirroring=not disable_tta,
                                perform_everything_on_device=device_name.startswith("cuda"),
                                device=torch.device(device_name), allow_tqdm=False)
    with _phase("load"):
        predictor.initialize_from_trained_model_folder(model_dir, use_folds=(fold,))
    _time_cases(predictor)
    from nnunetv2.configuration import default_num_processes

    # predict_logits_from_preprocessed_data runs with min(threads, default_num_processes) torch threads
    print(f"THREADS {min(torch.get_num_threads(), default_num_processes)}", flush=True)
    predictor.predict_from_files(input_dir, output_dir, save_probabilities=False, overwrite=True,
                                 num_processes_preprocessing=num_processes,
                                 num_processes_segmentation_export=num_processes)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("-d", "--dataset-id", type=int, required=True, help="nnU-Net v2 dataset id, e.g. 4")

    def threads(p: argparse.ArgumentParser) -> None:
        p.add_argument("--threads", type=int, default=None,
                       help="torch intra-op threads (default: the CPUs this process may use)")

    pp = sub.add_parser("plan_and_preprocess", help="fingerprint + plan + preprocess")
    common(pp)
    pp.add_argument("-np", "--num-processes", type=int, default=2, help="worker processes for every step")
    pp.add_argument("-c", "--configurations", nargs="+", default=["3d_fullres"], help="configurations")

    tr = sub.add_parser("train_iterations", help="time N training iterations and the data loader")
    common(tr)
    tr.add_argument("-c", "--configuration", default="3d_fullres", help="configuration to train")
    tr.add_argument("-f", "--fold", type=int, default=0, help="cross-validation fold")
    tr.add_argument("-n", "--iterations", type=int, default=10, help="timed training iterations")
    tr.add_argument("--warmup", type=int, default=2, help="untimed iterations first")
    tr.add_argument("--loader-batches", type=int, default=20, help="batches drawn to time the data loader")
    tr.add_argument("--device", default="cpu", help="torch device: cpu or cuda")
    tr.add_argument("--save-checkpoint", action="store_true", help="keep checkpoint_final.pth for predict")
    threads(tr)

    fr = sub.add_parser("train", help="a whole short training run and its final validation")
    common(fr)
    fr.add_argument("-c", "--configuration", default="3d_fullres", help="configuration to train")
    fr.add_argument("-f", "--fold", type=int, default=0, help="cross-validation fold")
    fr.add_argument("--epochs", type=int, default=10, help="num_epochs of the trainer")
    fr.add_argument("--iterations", type=int, default=50, help="num_iterations_per_epoch of the trainer")
    fr.add_argument("--val-iterations", type=int, default=50, help="num_val_iterations_per_epoch of the trainer")
    fr.add_argument("--device", default="cpu", help="torch device: cpu or cuda")
    threads(fr)

    pr = sub.add_parser("predict", help="predict a folder with a fold's checkpoint_final.pth")
    common(pr)
    pr.add_argument("-c", "--configuration", default="3d_fullres", help="configuration of the model")
    pr.add_argument("-f", "--fold", type=int, default=0, help="fold of the model")
    pr.add_argument("-i", "--input", required=True, help="folder of <case>_0000.nii.gz images")
    pr.add_argument("-o", "--output", required=True, help="output folder for the segmentations")
    pr.add_argument("-np", "--num-processes", type=int, default=2, help="preprocessing/export processes")
    pr.add_argument("--step-size", type=float, default=0.5, help="sliding-window step (fraction of patch)")
    pr.add_argument("--disable-tta", action="store_true", help="no mirroring test-time augmentation")
    pr.add_argument("--device", default="cpu", help="torch device: cpu or cuda")
    threads(pr)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _check_env()
    if args.command != "plan_and_preprocess" and args.device == "cpu":
        _set_threads(args.threads)
    if args.command == "plan_and_preprocess":
        plan_and_preprocess(args.dataset_id, args.num_processes, args.configurations)
    elif args.command == "train_iterations":
        result = train_iterations(args.dataset_id, args.configuration, args.fold, args.iterations, args.warmup,
                                  args.loader_batches, args.device, args.save_checkpoint)
        print("RESULT " + json.dumps(result), flush=True)
    elif args.command == "train":
        result = train(args.dataset_id, args.configuration, args.fold, args.epochs, args.iterations,
                       args.val_iterations, args.device)
        print("RESULT " + json.dumps(result), flush=True)
    else:
        predict(args.dataset_id, args.configuration, args.fold, args.input, args.output, args.num_processes,
                args.step_size, args.disable_tta, args.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
