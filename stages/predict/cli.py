"""``python -m stages predict``: predict a folder (or ``s3://`` prefix) of cases with a trained model (spec §8).

The model is a trainer folder (``.../<configuration>/<task>/<trainer>__<plans>``, local or on S3); only what
prediction reads is fetched: ``plans.json``, ``postprocessing.json`` and each fold's checkpoint with its sidecar.
The input is listed and checked (every case needs all modalities), the sorted case list is sharded with
``--part-id/--num-parts`` and only this shard's images are downloaded. Predictions are written in scratch and
uploaded to ``--output``; a completion marker per shard (``_NNKUBE_COMPLETE.predict[-P-of-N].json``) lets a
rerun with the same model, inputs and options skip its work. A 3d_cascade_fullres model needs
``--lowres-segmentations`` (the 3d_lowres predictions) or ``--lowres-model`` (3d_lowres runs first, into
``<output>/3d_lowres_predictions``).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import typer

from stages import storage
from stages.errors import BadInputError
from stages.stagekit.options import raw_prefix_option, result_json_option

log = logging.getLogger(__name__)

app = typer.Typer(add_completion=False, help="Predict new cases with a trained model (nnUNet_predict).")

_FOLD_FILE = re.compile(r"^fold_([^/]+)/")
TRANSFER_WORKERS = 8


def model_files(model: str, folds: list[str] | None, checkpoint: str) -> tuple[list[str], list[str]]:
    """Names (relative to the trainer folder) that prediction reads, and the folds they cover.

    Args:
        model: Trainer folder URI.
        folds: Requested folds (None: every ``fold_*`` folder present).
        checkpoint: Checkpoint name (``model_final_checkpoint``).

    Raises:
        BadInputError: No ``plans.json`` or no fold folder under ``model``.
    """
    from stages.postprocess.models import POSTPROCESSING_JSON
    from stages.predict.predictor import PLANS_JSON, fold_sort_key

    names = set(storage.get_backend(model).list_names(model, recursive=True))
    if PLANS_JSON not in names:
        raise BadInputError(f"{model}: {PLANS_JSON} not found; --model must be a trainer folder "
                            f"(<configuration>/<task>/<trainer>__<plans>)")
    present = sorted({m.group(1) for n in names if (m := _FOLD_FILE.match(n))}, key=fold_sort_key)
    wanted = present if folds is None else folds
    if not wanted:
        raise BadInputError(f"{model}: no fold_* folder with a trained model")
    chk = checkpoint if checkpoint.endswith(".model") else f"{checkpoint}.model"
    files = [PLANS_JSON] + ([POSTPROCESSING_JSON] if POSTPROCESSING_JSON in names else [])
    files += [n for f in wanted for n in (f"fold_{f}/{chk}", f"fold_{f}/{chk}.json") if n in names]
    return files, wanted


def _fetch(base: str, names: list[str], dest: Path) -> Path:
    """Copy ``base/<name>`` for every name into ``dest`` (download from S3, copy locally); returns ``dest``."""
    from stages.storage.transfer import run_parallel

    dest.mkdir(parents=True, exist_ok=True)
    run_parallel([lambda n=n: storage.download_file(storage.join(base, n), dest / n) for n in names],
                 TRANSFER_WORKERS, None, f"download {storage.basename(base)}")
    return dest


def _lowres_files(prefix: str, case_ids: list[str]) -> dict[str, str]:
    """``{case: file name}`` of the low-resolution segmentations of ``case_ids`` under ``prefix``."""
    from stages.imageio import has_image_suffix, strip_image_suffix

    found = {}
    for uri in storage.list_prefix(prefix, recursive=False):
        name = storage.basename(uri)
        if not uri.endswith("/") and has_image_suffix(name) and not name.startswith("."):
            found.setdefault(strip_image_suffix(name), name)
    missing = [c for c in case_ids if c not in found]
    if missing:
        raise BadInputError(f"{prefix}: no low-resolution segmentation for case(s) {', '.join(missing[:20])}")
    return {c: found[c] for c in case_ids}


@app.command()
def predict(
    model: str = typer.Option(..., "--model", help="Trainer folder (path or s3:// prefix), e.g. .../nnUNet/"
                              "3d_fullres/Task004_Hippocampus/nnUNetTrainerV2__nnUNetPlansv2.1."),
    input: str = typer.Option(..., "--input", help="Folder or s3:// prefix of input images <case>_XXXX.nii.gz "
                              "(one file per case and modality)."),
    output: str = typer.Option(..., "--output", help="Folder or s3:// prefix receiving <case>.nii.gz."),
    folds: str | None = typer.Option(None, "--folds", help="Folds to average, e.g. 0,1,2,3,4 or all (default: "
                                     "every fold_* folder of the model)."),
    part_id: int = typer.Option(0, "--part-id", min=0, help="This shard's index: it predicts every num_parts-th "
                                "case of the sorted case list, starting at part_id."),
    num_parts: int = typer.Option(1, "--num-parts", min=1, help="Number of shards the cases are split into."),
    save_npz: bool = typer.Option(False, "--save-npz", help="Also write <case>.npz (float16 softmax on the input "
                                  "grid) and <case>.json, needed for ensembling."),
    disable_tta: bool = typer.Option(False, "--disable-tta", help="No mirroring test-time augmentation (about 8x "
                                     "faster in 3D, slightly worse)."),
    step_size: float = typer.Option(0.5, "--step-size", min=0.01, max=1.0, help="Sliding-window stride as a "
                                    "fraction of the patch size."),
    checkpoint: str = typer.Option("model_final_checkpoint", "--checkpoint", help="Checkpoint file name in each "
                                   "fold folder (without .model)."),
    disable_postprocessing: bool = typer.Option(False, "--disable-postprocessing", help="Do not apply the model's "
                                                "postprocessing.json."),
    lowres_segmentations: str | None = typer.Option(None, "--lowres-segmentations", help="3d_cascade_fullres: "
                                                    "folder or s3:// prefix of the 3d_lowres predictions."),
    lowres_model: str | None = typer.Option(None, "--lowres-model", help="3d_cascade_fullres without "
                                            "--lowres-segmentations: the 3d_lowres trainer folder to run first."),
    num_threads_preprocessing: int | None = typer.Option(None, "--num-threads-preprocessing", min=0, help="Background"
                                                         " preprocessing processes (default: CPUs, at most 6)."),
    result_json: str | None = result_json_option(),
    raw_prefix: str | None = raw_prefix_option(),
) -> None:
    """Predict this shard of the input cases with every requested fold of the model."""
    from stages.log import bind_context
    from stages.plan.models import Plans
    from stages.postprocess.staging import parse_folds
    from stages.predict.inputs import check_shard, list_input_uris, shard_case_ids
    from stages.predict.predictor import AUTO, PLANS_JSON
    from stages.stagekit import WriteGuard, protected_prefixes, run_stage, scratch_dir
    from stages.stagekit.run import marker_uri

    bind_context(stage="predict")
    check_shard(part_id, num_parts)
    fold_list = None if folds is None else [str(f) for f in parse_folds(folds)]
    guard = WriteGuard(protected_prefixes(raw_prefix, [input]))
    plans = Plans.from_json(storage.read_bytes(storage.join(model, PLANS_JSON)), source=storage.join(model, PLANS_JSON))
    files, fold_names = model_files(model, fold_list, checkpoint)
    all_cases = list_input_uris(input, plans.num_modalities)
    mine = shard_case_ids(list(all_cases), part_id, num_parts)
    uris = [storage.join(model, n) for n in files] + [u for c in mine for u in all_cases[c]]
    low_files: dict[str, str] = {}
    low_model_files: list[str] = []
    low_folds: list[str] = []
    if lowres_segmentations is not None:
        low_files = _lowres_files(lowres_segmentations, mine)
        uris += [storage.join(lowres_segmentations, n) for n in low_files.values()]
    elif lowres_model is not None:
        low_model_files, low_folds = model_files(lowres_model, fold_list, checkpoint)
        uris += [storage.join(lowres_model, n) for n in low_model_files]
    params = {"folds": fold_names, "part_id": part_id, "num_parts": num_parts, "save_npz": save_npz,
              "disable_tta": disable_tta, "step_size": step_size, "checkpoint": checkpoint,
              "postprocessing": not disable_postprocessing}
    tag = "predict" if num_parts == 1 else f"predict-{part_id}-of-{num_parts}"

    def compute(out_dir: Path) -> dict:
        from stages.predict.cascade import predict_cascade
        from stages.predict.predictor import load_model, predict_cases

        with scratch_dir("predict-input") as work:
            local_model = _fetch(model, files, work / "model")
            inputs = _fetch(input, [storage.basename(u) for c in mine for u in all_cases[c]], work / "input")
            loaded = load_model(local_model, fold_names, checkpoint)
            options = {"save_npz": save_npz, "disable_tta": disable_tta, "step_size": step_size,
                       "num_threads_preprocessing": num_threads_preprocessing,
                       "postprocessing": None if disable_postprocessing else AUTO}
            if loaded.is_cascade:
                low_segs = _fetch(lowres_segmentations, list(low_files.values()), work / "lowres") if low_files \
                    else None
                low = load_model(_fetch(lowres_model, low_model_files, work / "lowres_model"), low_folds,
                                 checkpoint) if low_model_files else None
                if low_segs is None and low is None:
                    raise BadInputError(f"{model}: a 3d_cascade_fullres model needs --lowres-segmentations or "
                                        f"--lowres-model")
                result = predict_cascade(loaded, low, inputs, out_dir, low_segs, **options)
            else:
                result = predict_cases(loaded, inputs, out_dir, **options)
        return {"configuration": loaded.configuration, "folds": loaded.folds, "num_cases": len(result.predicted),
                "case_ids": result.predicted, "postprocessed": result.postprocessing is not None,
                "part_id": part_id, "num_parts": num_parts}

    result = run_stage("predict", params, uris, output, compute, result_json, marker=marker_uri(output, tag),
                       guard=guard)
    typer.echo(f"predict {result.status}: {result.extra.get('num_cases', 0)} case(s) of shard {part_id}/"
               f"{num_parts} with {result.extra.get('configuration')} folds {result.extra.get('folds')} -> {output}")
