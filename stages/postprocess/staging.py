"""URI edges of the evaluation, postprocessing, ensembling and selection steps.

The library functions work on local folders. These helpers give them one: a local path (or ``file://`` URI)
is used in place; an ``s3://`` prefix is downloaded (optionally only the files a filter accepts) into a scratch
folder, and output folders are produced in scratch and uploaded when the step succeeds.
"""

from __future__ import annotations

import json
import os
import posixpath
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from stages import storage
from stages.documents import write_json_atomic
from stages.errors import BadInputError
from stages.imageio import has_image_suffix
from stages.storage.transfer import run_parallel

TRANSFER_WORKERS = 8


def download_matching(uri: str, local_dir: Path, include: Callable[[str], bool] | None = None) -> list[Path]:
    """Download the files under ``uri`` whose relative POSIX name ``include`` accepts into ``local_dir``."""
    names = [n for n in storage.get_backend(uri).list_names(uri, recursive=True) if include is None or include(n)]
    for name in names:
        norm = posixpath.normpath(name)
        if norm.startswith("../") or norm == ".." or posixpath.isabs(norm):
            raise BadInputError(f"{storage.join(uri, name)}: the name would land outside {local_dir}")
    targets = [local_dir / name for name in names]
    run_parallel([lambda n=n, t=t: storage.download_file(storage.join(uri, n), t) for n, t in zip(names, targets)],
                 TRANSFER_WORKERS, None, f"download {storage.basename(uri)}")
    return targets


def images_only(name: str) -> bool:
    """Filter for :func:`local_folder`: image files directly in the folder."""
    return "/" not in name and has_image_suffix(name)


@contextmanager
def local_folder(uri: str, include: Callable[[str], bool] | None = None) -> Iterator[Path]:
    """A local folder with the content of ``uri`` (used in place when local; from S3 only what ``include`` takes)."""
    if not storage.is_s3(uri) and not Path(storage.to_local_path(uri)).is_dir():
        raise BadInputError(f"{uri}: folder not found")

    def fetch(src: str, folder: Path) -> None:
        folder.mkdir()
        download_matching(src, folder, include)

    with storage.local_copy(uri, fetch) as folder:
        yield folder


def local_file(uri: str) -> AbstractContextManager[Path]:
    """A local copy of one file (the file itself when local)."""
    return storage.local_copy(uri, storage.download_file)


@contextmanager
def output_folder(uri: str) -> Iterator[Path]:
    """A local folder whose content ends up at ``uri`` (uploaded on success when ``uri`` is on S3)."""
    if not storage.is_s3(uri):
        path = Path(storage.to_local_path(uri))
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="nnkube-out-") as scratch:
        path = Path(scratch) / (storage.basename(uri) or "output")
        path.mkdir()
        yield path
        storage.upload_tree(path, uri, workers=TRANSFER_WORKERS)


def write_result_json(uri: str | None, result: dict) -> None:
    """Write a step's small result document (for Argo output parameters) to a local path or URI."""
    if not uri:
        return
    if storage.is_s3(uri):
        storage.write_text(uri, json.dumps(result, indent=2, default=str))
    else:
        write_json_atomic(os.fspath(storage.to_local_path(uri)), result)


def parse_int_list(text: str, option: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``; a clear error naming the option otherwise."""
    try:
        values = [int(v) for v in text.replace(" ", ",").split(",") if v]
    except ValueError as exc:
        raise BadInputError(f"{option} {text!r}: expected integers separated by commas, e.g. 0,1,2") from exc
    if not values:
        raise BadInputError(f"{option}: at least one value is needed")
    return values


def parse_folds(text: str) -> list[int | str]:
    """``"0,1,2,3,4"`` -> ``[0, 1, 2, 3, 4]``; ``"all"`` stays a string (the fold trained on every case)."""
    folds: list[int | str] = []
    for value in (v for v in text.replace(" ", ",").split(",") if v):
        if value == "all":
            folds.append(value)
        elif value.isdigit():
            folds.append(int(value))
        else:
            raise BadInputError(f"--folds {text!r}: expected fold numbers or 'all' separated by commas")
    if not folds:
        raise BadInputError("--folds: at least one fold is needed")
    return folds


def format_score(value: float | None) -> str:
    """A Dice value with 4 decimals (``nan`` when undefined)."""
    return "nan" if value is None or value != value else f"{value:.4f}"


def resolve_workers(num_processes: int) -> int:
    """``--num-processes``: a positive value as given; 0 means nnUNet_def_n_proc or the CPUs available, at most 8."""
    from stages.resources import default_workers

    return num_processes if num_processes > 0 else max(1, default_workers("nnUNet_def_n_proc", cap=8))
