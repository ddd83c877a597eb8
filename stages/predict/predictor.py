"""``nnUNet_predict`` as library functions: load a trained model, predict a folder of cases (spec §8).

:func:`load_model` reads a trainer folder (``<trainer>__<plans>/`` with ``plans.json`` and ``fold_*/``
checkpoints); :func:`predict_cases` predicts every case of an input folder in the seed's inference layout:
test-time preprocessing in background processes (:mod:`stages.predict.inputs`), the probabilities of all folds
averaged with mirroring TTA by :func:`~stages.predict.engine.predict_preprocessed` (the function the trainer's
final validation uses, so a training case predicted here is bit for bit its validation export), and the export
to the input's geometry in an :class:`~stages.predict.export.ExportPool` so that the network never waits for
resampling or writing. The trainer folder's ``postprocessing.json`` is applied to the new predictions and
copied next to them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from stages.errors import BadInputError
from stages.fsutil import copy_atomic
from stages.plan.models import Plans, StagePlan
from stages.postprocess.connected_components import postprocess_file
from stages.postprocess.models import POSTPROCESSING_JSON, PostprocessingRules, load_rules
from stages.predict.engine import mirror_axes_for, predict_preprocessed
from stages.predict.export import ExportPool, sidecar_paths
from stages.predict.inputs import (
    InputCase,
    PreprocessJob,
    find_prev_stage_files,
    iter_preprocessed,
    list_input_cases,
    shard_case_ids,
)
from stages.preprocess.preprocessor import PreprocessParams
from stages.preprocess.revert import ExportResampling

log = logging.getLogger(__name__)

DEFAULT_CHECKPOINT = "model_final_checkpoint"
PLANS_JSON = "plans.json"
CASCADE_CONFIGURATION = "3d_cascade_fullres"
#: ``postprocessing`` argument of :func:`predict_cases`: the trainer folder's rules if present.
AUTO = "auto"
#: Hidden subfolder of the output folder holding raw predictions until they are postprocessed.
UNPROCESSED_DIR = ".nnkube-unprocessed"


@dataclass
class Model:
    """A trained configuration ready to predict: plans plus one network per fold.

    Attributes:
        folder: The trainer folder (``.../<configuration>/<task>/<trainer>__<plans>``).
        plans: The plans the networks were trained with.
        configuration: ``2d``, ``3d_fullres``, ``3d_lowres`` or ``3d_cascade_fullres``.
        trainer: Trainer class name the folds were trained with.
        folds: Fold names (``"0"`` ... or ``"all"``), one per network.
        networks: The networks (eval mode, on ``device``).
        num_input_channels: Network input channels (modalities, plus ``K-1`` for the cascade).
        num_classes: Output classes including background.
        device: Where the networks run.
        amp: Mixed precision (CUDA only).
    """

    folder: Path
    plans: Plans
    configuration: str
    trainer: str
    folds: list[str]
    networks: list[torch.nn.Module] = field(repr=False)
    num_input_channels: int
    num_classes: int
    device: torch.device
    amp: bool = False

    @property
    def stage(self) -> int:
        """Plans stage of the configuration."""
        return self.plans.stage_for(self.configuration)

    @property
    def stage_plan(self) -> StagePlan:
        """Patch size and topology of the configuration."""
        return self.plans.plans_per_stage[self.stage]

    @property
    def dimension(self) -> str:
        """``"2d"`` or ``"3d"``."""
        return "2d" if self.configuration == "2d" else "3d"

    @property
    def is_cascade(self) -> bool:
        """True for 3d_cascade_fullres: the input includes the one-hot 3d_lowres segmentation."""
        return self.configuration == CASCADE_CONFIGURATION

    @property
    def preprocess_params(self) -> PreprocessParams:
        """Test-time preprocessing parameters of the configuration's stage."""
        return PreprocessParams.from_plans(self.plans, self.stage)

    @property
    def postprocessing_file(self) -> Path | None:
        """The trainer folder's ``postprocessing.json``, or None."""
        path = self.folder / POSTPROCESSING_JSON
        return path if path.is_file() else None

    @classmethod
    def from_trainer(cls, trainer: Any) -> Model:
        """The in-memory network of a trainer (e.g. right after training) as a single-fold model."""
        return cls(
            folder=Path(trainer.output_dir).parent, plans=trainer.plans, configuration=trainer.configuration,
            trainer=type(trainer).__name__, folds=[str(trainer.fold)], networks=[trainer.network],
            num_input_channels=trainer.num_input_channels, num_classes=trainer.num_classes,
            device=torch.device(trainer.device), amp=bool(trainer.amp),
        )


def fold_sort_key(name: str) -> tuple[int, int, str]:
    """Sort key of fold names: numbers in numeric order, then ``all``."""
    return (0, int(name), "") if name.isdigit() else (1, 0, name)


def available_folds(trainer_folder: str | os.PathLike) -> list[str]:
    """Names of the ``fold_*`` folders of a trainer folder (``["0", "1", ...]`` or ``["all"]``), sorted."""
    folder = Path(trainer_folder)
    names = [p.name[len("fold_"):] for p in folder.glob("fold_*") if p.is_dir()]
    return sorted(names, key=fold_sort_key)


def _normalize_folds(folds: Any) -> list[str] | None:
    if folds is None:
        return None
    if isinstance(folds, (str, int)):
        folds = [folds]
    names = [str(f) for f in folds]
    bad = [f for f in names if not (f.isdigit() or f == "all")]
    if bad or not names:
        raise BadInputError(f"folds {list(folds)}: expected fold numbers (0, 1, ...) or 'all'")
    return names


def checkpoint_file(trainer_folder: str | os.PathLike, fold: str, checkpoint: str = DEFAULT_CHECKPOINT) -> Path:
    """``<trainer folder>/fold_<f>/<checkpoint>.model``."""
    name = checkpoint if checkpoint.endswith(".model") else f"{checkpoint}.model"
    return Path(trainer_folder) / f"fold_{fold}" / name


def default_device() -> torch.device:
    """The first CUDA device when present, else the CPU."""
    return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")


def load_model(
    trainer_folder: str | os.PathLike,
    folds: Any = None,
    checkpoint: str = DEFAULT_CHECKPOINT,
    device: torch.device | str | None = None,
    amp: bool | None = None,
) -> Model:
    """Load the plans and every requested fold's network of a trainer folder (spec §8.3).

    Args:
        trainer_folder: ``$RESULTS_FOLDER/nnUNet/<configuration>/<task>/<trainer>__<plans>``.
        folds: None: every ``fold_*`` folder present; or a list of fold numbers, or ``"all"``.
        checkpoint: Checkpoint name in each fold folder (``model_final_checkpoint``; ``-chk``).
        device: Compute device (default: CUDA when present, else CPU).
        amp: Mixed precision (default: on for CUDA).

    Raises:
        BadInputError: The folder, its ``plans.json``, a fold folder or a checkpoint is missing, or the folds
            disagree with each other or with the plans.
    """
    from stages.train.checkpoint import load_checkpoint
    from stages.train.network import build_network

    folder = Path(trainer_folder)
    if not folder.is_dir():
        raise BadInputError(f"{folder}: model (trainer) folder not found")
    if not (folder / PLANS_JSON).is_file():
        raise BadInputError(f"{folder}: {PLANS_JSON} not found; is this a trainer folder "
                            f"(<configuration>/<task>/<trainer>__<plans>)?")
    plans = Plans.load(folder / PLANS_JSON)
    present = available_folds(folder)
    names = _normalize_folds(folds)
    if names is None:
        if not present:
            raise BadInputError(f"{folder}: no fold_* folder with a trained model")
        names = present
    missing = [f for f in names if f not in present]
    if missing:
        raise BadInputError(f"{folder}: fold folder(s) {', '.join('fold_' + f for f in missing)} not found "
                            f"(present: {', '.join('fold_' + f for f in present) or 'none'})")
    dev = torch.device(device) if device is not None else default_device()
    networks, states = [], []
    for fold in names:
        path = checkpoint_file(folder, fold, checkpoint)
        if not path.is_file():
            raise BadInputError(f"{folder}: fold {fold} has no checkpoint {path.name} ({path}); was it trained to "
                                f"the end? (-chk selects another checkpoint)")
        blob, state = load_checkpoint(path, map_location="cpu")
        states.append(state)
        stage_plan = plans.plans_per_stage[plans.stage_for(state.configuration)]
        dimension = "2d" if state.configuration == "2d" else "3d"
        net = build_network(stage_plan, state.num_input_channels, state.num_classes, dimension)
        try:
            net.load_state_dict(blob["network"])
        except (RuntimeError, KeyError) as exc:
            raise BadInputError(f"{path}: the weights do not fit the network of {PLANS_JSON} ({exc})") from exc
        networks.append(net.to(dev).eval())
    first = states[0]
    for fold, state in zip(names, states):
        ours = (state.configuration, state.num_classes, state.num_input_channels)
        if ours != (first.configuration, first.num_classes, first.num_input_channels):
            raise BadInputError(f"{folder}: fold {fold} ({ours}) differs from fold {names[0]} "
                                f"({first.configuration}, {first.num_classes}, {first.num_input_channels})")
    if first.num_classes != plans.num_classes_with_background:
        raise BadInputError(f"{folder}: the networks have {first.num_classes} outputs but the plans "
                            f"{plans.num_classes_with_background} classes")
    model = Model(folder, plans, first.configuration, first.trainer, names, networks, first.num_input_channels,
                  first.num_classes, dev, dev.type == "cuda" if amp is None else bool(amp) and dev.type == "cuda")
    log.info("model %s: %s, trainer %s, folds %s (%s), device %s, amp %s", folder.name, model.configuration,
             model.trainer, ", ".join(names), Path(checkpoint).stem, dev, model.amp)
    return model


def resolve_postprocessing(model: Model, postprocessing: str | os.PathLike | None) -> Path | None:
    """The rules file to apply: ``"auto"`` = the trainer folder's (warned when absent), a path, or None."""
    if postprocessing is None:
        return None
    if str(postprocessing) == AUTO:
        found = model.postprocessing_file
        if found is None:
            log.warning("%s has no %s: predictions are not postprocessed (run nnUNet_find_best_configuration or "
                        "nnUNet_determine_postprocessing to create it)", model.folder, POSTPROCESSING_JSON)
        return found
    path = Path(postprocessing)
    load_rules(path)  # fail early on a bad file
    return path


@dataclass
class PredictionResult:
    """What :func:`predict_cases` did.

    Attributes:
        output_dir: Where the predictions are.
        predicted: Case ids predicted by this call.
        skipped: Case ids of this shard whose outputs existed already.
        files: Files written by this call.
        postprocessing: The rules file applied (copied into ``output_dir``), or None.
        seconds: Wall time.
    """

    output_dir: Path
    predicted: list[str]
    skipped: list[str]
    files: list[Path]
    postprocessing: Path | None
    seconds: float


def _outputs_exist(case: InputCase, output_dir: Path, save_npz: bool) -> bool:
    seg = output_dir / case.output_name()
    return seg.is_file() and (not save_npz or sidecar_paths(seg)[0].is_file())


def _postprocess_into(rules_file: Path, staging: Path, output_dir: Path, names: list[str]) -> list[Path]:
    """Postprocess the segmentations ``staging/<name>`` into ``output_dir`` (sidecars moved along).

    A segmentation reaches ``output_dir`` only postprocessed, so a run interrupted before this step leaves no
    unprocessed output that a rerun would skip as done.
    """
    rules: PostprocessingRules = load_rules(rules_file)
    copy_atomic(rules_file, output_dir / POSTPROCESSING_JSON)
    written = []
    for name in names:
        seg = staging / name
        for side in sidecar_paths(seg):
            if side.is_file():
                os.replace(side, output_dir / side.name)
                written.append(output_dir / side.name)
        postprocess_file(seg, output_dir / name, rules)
        seg.unlink()
        written.append(output_dir / name)
    shutil.rmtree(staging, ignore_errors=True)
    log.info("postprocessed %d prediction(s) with %s (for_which_classes %s)", len(names), rules_file,
             rules.for_which_classes)
    return written


def predict_cases(
    model: Model,
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    save_npz: bool = False,
    disable_tta: bool = False,
    step_size: float = 0.5,
    part_id: int = 0,
    num_parts: int = 1,
    overwrite: bool = False,
    num_threads_preprocessing: int | None = None,
    num_threads_nifti_save: int | None = None,
    postprocessing: str | os.PathLike | None = AUTO,
    lowres_segmentations: str | os.PathLike | None = None,
) -> PredictionResult:
    """Predict the cases of an input folder (``<case>_XXXX.nii.gz``) into ``output_dir`` (spec §8).

    Args:
        model: From :func:`load_model`.
        input_dir: Folder of input images, one file per case and modality.
        output_dir: Receives ``<case><suffix>`` label maps in the input's geometry (created).
        save_npz: Also write ``<case>.npz`` (float16 softmax on the full input grid) and ``<case>.json``.
        disable_tta: One pass instead of mirroring test-time augmentation (about 8x faster in 3D).
        step_size: Sliding-window stride as a fraction of the patch (0.5).
        part_id: This shard's index (``--part_id``).
        num_parts: Number of shards (``--num_parts``); this call predicts ``sorted(cases)[part_id::num_parts]``.
        overwrite: Predict cases whose outputs exist already (default: skip them).
        num_threads_preprocessing: Background preprocessing processes (0: in this process; default
            ``NNKUBE_PREPROCESS_WORKERS`` or the CPUs, at most 6).
        num_threads_nifti_save: Export processes (0: in this process; default ``NNKUBE_EXPORT_WORKERS`` or the
            CPUs, at most 2).
        postprocessing: ``"auto"``: the trainer folder's ``postprocessing.json`` when present (a warning
            otherwise); a path to a rules file; None: no postprocessing.
        lowres_segmentations: 3d_cascade_fullres only: folder of the 3d_lowres predictions (``<case>.nii.gz``).

    Returns:
        What was predicted, skipped and written.

    Raises:
        BadInputError: Missing input files, a missing low-resolution segmentation, bad shard numbers.
    """
    start = time.monotonic()
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    cases = list_input_cases(input_dir, model.plans.num_modalities)
    mine = set(shard_case_ids([c.case_id for c in cases], part_id, num_parts))
    cases = [c for c in cases if c.case_id in mine]
    output_dir.mkdir(parents=True, exist_ok=True)
    skipped = [c.case_id for c in cases if not overwrite and _outputs_exist(c, output_dir, save_npz)]
    todo = [c for c in cases if c.case_id not in skipped]
    if model.is_cascade:
        if lowres_segmentations is None:
            raise BadInputError(f"{model.folder}: a 3d_cascade_fullres model needs the 3d_lowres predictions "
                                f"(lowres_segmentations / -l)")
        todo = find_prev_stage_files(todo, lowres_segmentations)
    rules_file = resolve_postprocessing(model, postprocessing)
    log.info("predicting %d case(s) of %s into %s (shard %d/%d, %d already done), %s, folds %s, TTA %s",
             len(todo), input_dir, output_dir, part_id, num_parts, len(skipped), model.configuration,
             ",".join(model.folds), "off" if disable_tta else "on")
    axes = () if disable_tta else mirror_axes_for(model.dimension)
    job = PreprocessJob(model.preprocess_params, model.num_classes)
    resampling = ExportResampling.from_plans(model.plans)
    # with postprocessing, raw predictions are staged in a hidden subfolder and postprocessed into place
    staging = output_dir / UNPROCESSED_DIR if rules_file is not None and todo else output_dir
    staging.mkdir(exist_ok=True)
    stream = iter_preprocessed(todo, job, num_threads_preprocessing)
    with ExportPool(num_threads_nifti_save) as pool, contextlib.closing(stream):
        for i, (case, data, props) in enumerate(stream):
            if data.shape[0] != model.num_input_channels:
                raise BadInputError(f"case {case.case_id}: {data.shape[0]} input channel(s) but the networks of "
                                    f"{model.folder} expect {model.num_input_channels}")
            t0 = time.monotonic()
            probs = predict_preprocessed(model.networks, data, model.stage_plan, model.dimension, model.num_classes,
                                         axes, step_size, model.device, model.amp)
            pool.submit(probs, props, staging / case.output_name(), model.plans.transpose_backward, save_npz,
                        resampling)
            log.info("predicted %d/%d: %s %s in %.1f s", i + 1, len(todo), case.case_id, tuple(data.shape[1:]),
                     time.monotonic() - t0)
        files = pool.wait()
    if staging != output_dir:
        files = _postprocess_into(rules_file, staging, output_dir, [c.output_name() for c in todo])
    return PredictionResult(output_dir, [c.case_id for c in todo], skipped, files,
                            rules_file, round(time.monotonic() - start, 3))
