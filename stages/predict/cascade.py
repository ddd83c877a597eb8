"""The cascade's glue (spec §9): 3d_lowres predictions as extra input channels of 3d_cascade_fullres.

Training side: after a 3d_lowres fold is validated, :func:`predict_next_stage` predicts that fold's validation
cases, resamples the probabilities to the 3d_fullres preprocessed grid (order 1, no separate z), takes the
argmax and stores ``<case>_segFromPrevStage.npy`` in ``<lowres trainer folder>/pred_next_stage/``. Once every
lowres fold has run, each training case has an out-of-fold low-resolution segmentation that the cascade
trainer reads.

Inference side: :func:`prev_stage_input` turns a 3d_lowres prediction (a label image in the input's geometry)
into the extra channels of the cascade network: crop to the case's nonzero box, transpose, resize label by label
(order 1) to the preprocessed shape, one-hot of labels ``1..K-1``. nnU-Net v1 skips the crop (it resizes the
whole image onto the cropped grid); cropping first keeps the channels aligned with the image when the nonzero
crop removes a border, and changes nothing otherwise. :func:`predict_cascade` runs 3d_lowres first when no
low-resolution predictions are given (``nnUNet_predict -m 3d_cascade_fullres`` without ``-l``).

This module imports torch only inside the functions that predict, so preprocessing workers stay light.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stages.errors import BadInputError, DatasetError
from stages.imageio import read_image
from stages.paths import CASCADE_CONFIGURATION, LOWRES_CONFIGURATION, PRED_NEXT_STAGE
from stages.preprocess.models import CaseProperties, properties_file
from stages.preprocess.preprocessor import PreprocessParams, save_npy_atomic
from stages.preprocess.resampling import resample_data_or_seg, resize_segmentation
from stages.train.data import prev_stage_file

log = logging.getLogger(__name__)

LOWRES_PREDICTIONS = "3d_lowres_predictions"


def onehot_foreground(seg: np.ndarray, num_classes: int) -> np.ndarray:
    """float32 ``(K-1, *spatial)`` one-hot encoding of labels ``1..K-1`` (no background channel) of ``seg``."""
    return np.stack([seg == label for label in range(1, num_classes)]).astype(np.float32)


def load_prev_stage_seg(folder: str | os.PathLike, case_id: str, spatial_shape: Sequence[int]) -> np.ndarray:
    """A case's ``<case>_segFromPrevStage.npy`` (or v1's ``.npz``, key ``data``) as a spatial label map.

    Raises:
        DatasetError: The file is missing ("seg from prev stage missing") or its shape differs from the image.
    """
    path = Path(folder) / prev_stage_file(case_id)
    if not path.is_file() and path.with_suffix(".npz").is_file():
        with np.load(path.with_suffix(".npz")) as npz:
            seg = npz["data"]
    elif path.is_file():
        seg = np.load(path, allow_pickle=False)
    else:
        raise DatasetError(f"case {case_id}: seg from prev stage missing: {path} (train every fold of 3d_lowres "
                           f"first; each one writes its validation cases to {PRED_NEXT_STAGE}/)")
    if seg.ndim == len(spatial_shape) + 1:
        seg = seg[0]
    if tuple(seg.shape) != tuple(spatial_shape):
        raise DatasetError(f"case {case_id}: {path} has shape {seg.shape}, expected the preprocessed image's "
                           f"{tuple(spatial_shape)}")
    return seg


def prev_stage_input(seg_file: str | os.PathLike, props: CaseProperties, params: PreprocessParams,
                     num_classes: int) -> np.ndarray:
    """One-hot channels ``(K-1, *size_after_resampling)`` of a 3d_lowres prediction for the cascade network.

    Args:
        seg_file: The low-resolution prediction of the case (label image in the input's geometry).
        props: Test-time properties of the case (crop box, preprocessed shape).
        params: Preprocessing parameters of the fullres stage (``transpose_forward``).
        num_classes: Classes incl. background.

    Raises:
        BadInputError: The segmentation's shape differs from the image's, or it holds labels the model lacks.
    """
    seg, _ = read_image(seg_file)
    case = props.case_id
    if tuple(seg.shape) != tuple(props.original_size_of_raw_data):
        raise BadInputError(f"case {case}: low-resolution segmentation {seg_file} has shape {seg.shape}, the image "
                            f"{tuple(props.original_size_of_raw_data)}")
    if seg.size and (seg.min() < 0 or seg.max() >= num_classes):
        raise BadInputError(f"case {case}: {seg_file} holds labels {int(seg.min())}..{int(seg.max())}, the model "
                            f"has classes 0..{num_classes - 1}")
    seg = seg[tuple(slice(lo, hi) for lo, hi in props.crop_bbox)].astype(np.int16)
    seg = seg.transpose([int(a) for a in params.transpose_forward])
    seg = resize_segmentation(seg, props.size_after_resampling, order=1)
    return onehot_foreground(seg, num_classes)


def _validation_cases_of(fold: int | str, preprocessed_dir: Path, data_folder: Path) -> list[str]:
    from stages.train.splits import SPLITS_FILENAME, fold_cases, read_splits

    case_ids = sorted(p.name[: -len(".json")] for p in data_folder.glob("*.json"))
    return fold_cases(read_splits(preprocessed_dir / SPLITS_FILENAME), fold, case_ids)[1]


def predict_next_stage(
    lowres_trainer: Any,
    fold: int | str,
    fullres_data_folder: str | os.PathLike,
    output_folder: str | os.PathLike | None = None,
    use_mirroring: bool = True,
    step_size: float | None = None,
) -> list[Path]:
    """Write ``<case>_segFromPrevStage.npy`` for the validation cases of a 3d_lowres fold (spec §9).

    Args:
        lowres_trainer: A 3d_lowres trainer holding its final weights (e.g. right after training), or the
            3d_lowres trainer folder (the fold's ``model_final_checkpoint`` is loaded).
        fold: The fold whose validation cases are predicted.
        fullres_data_folder: The 3d_fullres preprocessed folder (its case shapes are the targets; its parent
            is the preprocessed task folder with ``splits_final.json``).
        output_folder: Default ``<lowres trainer folder>/pred_next_stage``.
        use_mirroring: Mirroring TTA, as in the final validation.
        step_size: Sliding-window step (default: the trainer's validation step, else 0.5).

    Returns:
        The files written.
    """
    from stages.predict.engine import mirror_axes_for, predict_preprocessed
    from stages.predict.predictor import Model, load_model
    from stages.preprocess.preprocessor import load_case

    fullres = Path(fullres_data_folder)
    if isinstance(lowres_trainer, (str, os.PathLike)):
        model = load_model(lowres_trainer, folds=[fold])
        lowres_data = fullres.parent / model.plans.stage_folder(model.stage)
        val_keys = _validation_cases_of(fold, fullres.parent, lowres_data)
        step = 0.5 if step_size is None else step_size
    else:
        if str(lowres_trainer.fold) != str(fold):
            raise ValueError(f"trainer of fold {lowres_trainer.fold} asked to predict fold {fold}")
        model = Model.from_trainer(lowres_trainer)
        lowres_data = Path(lowres_trainer.data_folder)
        val_keys = lowres_trainer.split()[1]
        step = lowres_trainer.config.val_step_size if step_size is None else step_size
    if model.configuration != LOWRES_CONFIGURATION:
        raise BadInputError(f"predict_next_stage needs a 3d_lowres model, got {model.configuration}")
    out = Path(output_folder) if output_folder is not None else model.folder / PRED_NEXT_STAGE
    out.mkdir(parents=True, exist_ok=True)
    axes = mirror_axes_for(model.dimension) if use_mirroring else ()
    written = []
    for i, case_id in enumerate(val_keys):
        target_file = fullres / properties_file(case_id)
        if not target_file.is_file():
            raise DatasetError(f"case {case_id}: {target_file} not found; preprocess the 3d_fullres stage first")
        target = CaseProperties.load(target_file).size_after_resampling
        data, _seg, _props = load_case(lowres_data, case_id, mmap=False)
        probs = predict_preprocessed(model.networks, data, model.stage_plan, model.dimension, model.num_classes,
                                     axes, step, model.device, model.amp)
        probs = resample_data_or_seg(probs, target, False, None, order=1, do_separate_z=False, order_z=0)
        seg = np.argmax(probs, axis=0).astype(np.uint8 if model.num_classes <= 256 else np.int16)
        path = out / prev_stage_file(case_id)
        save_npy_atomic(path, seg)
        written.append(path)
        log.info("next stage %d/%d: %s %s -> %s", i + 1, len(val_keys), case_id, tuple(data.shape[1:]),
                 tuple(seg.shape))
    return written


def after_lowres_validation(trainer: Any) -> list[Path] | None:
    """Training hook: after a 3d_lowres fold's validation, write its validation cases' ``pred_next_stage``.

    Does nothing for other configurations, on non-main DDP ranks, for a dataset without cascade, and for fold
    ``all`` (its predictions are in-fold and would poison the cascade's training input).

    Returns:
        The files written, or None when nothing was done.
    """
    if trainer.configuration != LOWRES_CONFIGURATION or not trainer.dist.is_main:
        return None
    if str(trainer.fold) == "all":
        log.warning("3d_lowres fold 'all': no %s written (the cascade needs out-of-fold predictions of folds "
                    "0-4)", PRED_NEXT_STAGE)
        return None
    plans = trainer.plans
    fullres = Path(trainer.preprocessed_dir) / plans.stage_folder(plans.stage_for(CASCADE_CONFIGURATION))
    return predict_next_stage(trainer, trainer.fold, fullres, Path(trainer.output_dir).parent / PRED_NEXT_STAGE)


def predict_cascade(
    cascade_model: Any,
    lowres_model: Any,
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    lowres_segmentations: str | os.PathLike | None = None,
    **kwargs: Any,
) -> Any:
    """``nnUNet_predict -m 3d_cascade_fullres``: 3d_lowres first (unless given), then the cascade.

    Args:
        cascade_model: The 3d_cascade_fullres :class:`~stages.predict.predictor.Model` (or its trainer folder).
        lowres_model: The 3d_lowres model or trainer folder; only used without ``lowres_segmentations``.
        input_dir: Input images.
        output_dir: Output folder; 3d_lowres predictions go to ``<output_dir>/3d_lowres_predictions``.
        lowres_segmentations: Existing 3d_lowres predictions (``-l``), skipping the lowres run.
        **kwargs: Further arguments of :func:`~stages.predict.predictor.predict_cases` (folds are those of the
            models; ``save_npz`` applies to the cascade's predictions only).

    Returns:
        The cascade's :class:`~stages.predict.predictor.PredictionResult`.
    """
    from stages.predict.predictor import AUTO, load_model, predict_cases

    folds = kwargs.pop("folds", None)
    checkpoint = kwargs.pop("checkpoint", "model_final_checkpoint")
    device = kwargs.pop("device", None)
    if isinstance(cascade_model, (str, os.PathLike)):
        cascade_model = load_model(cascade_model, folds, checkpoint, device)
    if not cascade_model.is_cascade:
        raise BadInputError(f"{cascade_model.folder}: not a 3d_cascade_fullres model ({cascade_model.configuration})")
    if lowres_segmentations is None:
        if isinstance(lowres_model, (str, os.PathLike)):
            lowres_model = load_model(lowres_model, folds, checkpoint, device)
        if lowres_model is None or lowres_model.configuration != LOWRES_CONFIGURATION:
            raise BadInputError("the cascade needs a 3d_lowres model or existing low-resolution predictions (-l)")
        lowres_segmentations = Path(output_dir) / LOWRES_PREDICTIONS
        log.info("3d_cascade_fullres without low-resolution segmentations: predicting 3d_lowres into %s",
                 lowres_segmentations)
        lowres_kwargs = {k: v for k, v in kwargs.items() if k != "save_npz"}
        # the lowres model's own postprocessing.json (nnU-Net v1), unless postprocessing is off altogether
        lowres_kwargs["postprocessing"] = None if kwargs.get("postprocessing", AUTO) is None else AUTO
        predict_cases(lowres_model, input_dir, lowres_segmentations, **lowres_kwargs)
    return predict_cases(cascade_model, input_dir, output_dir, lowres_segmentations=lowres_segmentations, **kwargs)
