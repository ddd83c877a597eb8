"""Keeping a fold folder in step with its remote copy: checkpoint uploads, progress, resume, stage summaries.

Used by the ``train`` and ``validate`` stages (:mod:`stages.train.cli`, :mod:`stages.train.cli_validate`).
Checkpoints are uploaded as soon as they are written (sidecar removed first, model, then sidecar: a checkpoint
whose sidecar is there is complete); progress.png and the training log follow at most every ``interval``
seconds. A resume record (``fold_F/_NNKUBE_RESUME.json``) ties the remote checkpoints to the inputs they were
trained on.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any

from stages import storage
from stages.documents import Document, write_json_atomic
from stages.errors import BadInputError
from stages.stagekit.guard import WriteGuard

log = logging.getLogger(__name__)

RESUME_RECORD = "_NNKUBE_RESUME.json"
SUMMARY_PATH = "validation_raw/summary.json"


class ResumeRecord(Document):
    """Which inputs the checkpoints under a fold folder were trained on."""

    KIND = "resume record"
    SCHEMA_VERSION = 1

    resume_key: str
    started_at: str


def foreground_dice(summary: dict | None) -> float | None:
    """Foreground mean Dice of a validation summary (``results.mean.mean.Dice``), None if absent or NaN."""
    if not summary:
        return None
    try:
        value = float(summary["results"]["mean"]["mean"]["Dice"])
    except (KeyError, TypeError, ValueError):
        try:
            from stages.evaluate.evaluator import foreground_mean_dice

            value = float(foreground_mean_dice(summary))
        except (KeyError, TypeError, ValueError):
            return None
    return None if math.isnan(value) else value


class FoldSync:
    """Keeps the remote trainer folder in step with the local one while a fold trains or validates.

    Args:
        local_root: Local trainer folder.
        remote_root: Trainer folder URI.
        fold_dir: Name of the fold folder (``fold_0``).
        guard: Refuses writes under raw-data prefixes.
        interval: Minimum seconds between uploads of progress.png and the training log.
        artifacts_dir: Local folder receiving progress.png and summary.json for Argo artifacts (or None).
    """

    def __init__(self, local_root: Path, remote_root: str, fold_dir: str, guard: WriteGuard, interval: float = 60.0,
                 artifacts_dir: Path | None = None) -> None:
        self.local_root, self.remote_root, self.fold_dir = local_root, remote_root, fold_dir
        self.guard, self.interval, self.artifacts_dir = guard, interval, artifacts_dir
        self._synced: dict[str, tuple[int, int]] = {}
        self._last_progress = -math.inf

    @property
    def local_fold(self) -> Path:
        """The local fold folder."""
        return self.local_root / self.fold_dir

    def remote(self, rel: str) -> str:
        """URI of a path relative to the trainer folder."""
        return storage.join(self.remote_root, rel)

    def _rel(self, path: Path) -> str:
        return path.relative_to(self.local_root).as_posix()

    @staticmethod
    def _stamp(path: Path) -> tuple[int, int]:
        st = path.stat()
        return st.st_size, st.st_mtime_ns

    def note(self, path: Path) -> None:
        """Record a local file as identical to its remote copy (e.g. just downloaded)."""
        self._synced[self._rel(path)] = self._stamp(path)

    def push(self, path: Path) -> bool:
        """Upload one local file unless it is unchanged since its last upload; True if uploaded."""
        rel = self._rel(path)
        if not path.is_file() or self._synced.get(rel) == self._stamp(path):
            return False
        stamp = self._stamp(path)
        storage.upload_file(path, self.guard.check(self.remote(rel)))
        self._synced[rel] = stamp
        return True

    def checkpoint_saved(self, path: Path) -> None:
        """Trainer hook: upload a checkpoint as a complete pair (old sidecar removed first, sidecar last)."""
        from stages.train.checkpoint import sidecar

        path, side = Path(path), sidecar(path)
        storage.delete(self.guard.check(self.remote(self._rel(side))))
        self._synced.pop(self._rel(side), None)
        self.push(path)
        self.push(side)
        log.info("uploaded checkpoint %s", self.remote(self._rel(path)))
        self.push_progress()

    def attach(self, trainer: Any) -> None:
        """``trainer_hook`` of :func:`~stages.train.run.train_fold`: upload checkpoints and per-epoch progress."""
        trainer.on_checkpoint_saved = self.checkpoint_saved
        original = trainer.on_epoch_end

        def on_epoch_end(*args: Any, **kwargs: Any) -> None:
            original(*args, **kwargs)
            self.epoch_done(trainer)

        trainer.on_epoch_end = on_epoch_end

    def epoch_done(self, trainer: Any) -> None:
        """After an epoch: report ``epoch/total`` to Argo and upload progress if the interval has passed."""
        from stages.train.progress import report_argo_progress

        state = getattr(trainer, "state", None)
        if state is not None:
            report_argo_progress(state.epoch, trainer.config.max_epochs)
        if time.monotonic() - self._last_progress >= self.interval:
            self.push_progress()

    def push_progress(self) -> None:
        """Upload progress.png and the training logs of the fold; copy progress.png to the artifacts folder."""
        self._last_progress = time.monotonic()
        for path in sorted(self.local_fold.glob("training_log_*.txt")) + [self.local_fold / "progress.png"]:
            self.push(path)
        self.copy_artifacts()

    def copy_artifacts(self) -> None:
        """Copy progress.png and the validation summary.json (when present) to the artifacts folder."""
        if self.artifacts_dir is None:
            return
        self.artifacts_dir.mkdir(parents=True, exist_ok=True)
        for path, name in ((self.local_fold / "progress.png", "progress.png"),
                           (self.local_fold / SUMMARY_PATH, "summary.json")):
            if path.is_file():
                shutil.copyfile(path, self.artifacts_dir / name)

    def flush(self, best_effort: bool = False) -> None:
        """Upload progress and logs now; with ``best_effort`` a failure is logged, not raised."""
        try:
            self.push_progress()
        except Exception as exc:  # noqa: BLE001 - while another error is on its way out
            if not best_effort:
                raise
            log.warning("could not upload progress and logs: %s", exc)

    def publish(self, prune_latest: bool) -> None:
        """Upload every changed file; with ``prune_latest`` drop a remote model_latest the trainer removed."""
        from stages.train.checkpoint import LATEST, sidecar

        for path in sorted(p for p in self.local_root.rglob("*") if p.is_file()):
            self.push(path)
        self.copy_artifacts()
        latest = self.local_fold / LATEST
        if prune_latest and not latest.exists():
            for path in (sidecar(latest), latest):
                storage.delete(self.guard.check(self.remote(self._rel(path))))

    def download(self, rel: str) -> Path:
        """Download ``rel`` (relative to the trainer folder) to the local trainer folder and note it synced."""
        path = self.local_root / rel
        storage.download_file(self.remote(rel), path)
        self.note(path)
        return path


def restore_checkpoint(sync: FoldSync, resume_key: str) -> str | None:
    """Prepare the local fold folder for ``resume=True``; return the checkpoint name restored, if any.

    A fold folder trained on other inputs (its resume record differs, or has none) is cleared instead.
    """
    from stages.train.checkpoint import BEST, FINAL, LATEST

    record_uri = sync.remote(f"{sync.fold_dir}/{RESUME_RECORD}")
    try:
        record = ResumeRecord.from_json(storage.read_bytes(record_uri), source=record_uri)
    except BadInputError:  # absent (NotFoundError) or unreadable
        record = None
    if record is None or record.resume_key != resume_key:
        remote_fold = sync.remote(sync.fold_dir)
        if storage.list_prefix(remote_fold):
            log.warning("%s holds a run on other inputs or parameters; discarding it", remote_fold)
            storage.delete_prefix(sync.guard.check(remote_fold))
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        storage.write_text(sync.guard.check(record_uri), ResumeRecord(resume_key=resume_key, started_at=now).to_json())
        return None
    for name in (FINAL, LATEST, BEST):
        rel = f"{sync.fold_dir}/{name}"
        if storage.exists(sync.remote(rel + ".json")) and storage.exists(sync.remote(rel)):
            sync.download(rel)
            sync.download(rel + ".json")
            log.info("resuming from %s", sync.remote(rel))
            return name
    log.info("no complete checkpoint under %s; starting from scratch", sync.remote(sync.fold_dir))
    return None


def fold_extra(sync: FoldSync, summary: dict | None, output: str, configuration: str, fold: int | str) -> dict:
    """The stage summary of a trained or validated fold (``dice`` is the validation foreground mean Dice)."""
    summary_file = sync.local_fold / SUMMARY_PATH
    if summary is not None and not summary_file.is_file():
        write_json_atomic(summary_file, summary)
    sync.copy_artifacts()
    return {
        "configuration": configuration,
        "fold": str(fold),
        "fold_folder": storage.join(output, sync.fold_dir),
        "summary": storage.join(output, sync.fold_dir, SUMMARY_PATH) if summary_file.is_file() else None,
        "dice": foreground_dice(summary),
    }


def fetch_artifacts(output: str, fold_dir: str, artifacts_dir: Path | None) -> None:
    """Download a completed fold's progress.png and summary.json into the artifacts folder (after a skip)."""
    if artifacts_dir is None:
        return
    for rel, name in (("progress.png", "progress.png"), (SUMMARY_PATH, "summary.json")):
        uri = storage.join(output, fold_dir, rel)
        if storage.exists(uri):
            storage.download_file(uri, artifacts_dir / name)
