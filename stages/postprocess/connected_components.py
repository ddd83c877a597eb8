"""Connected-component postprocessing (spec §10): keep only the largest component of a class or region.

Components are found with face connectivity (6 neighbours in 3D, 4 in 2D) and measured in physical volume
(voxel count times the product of the spacing). Every component whose volume equals the maximum is kept, the
others are set to background (0) — or, when a minimum valid object volume is given, only those below it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from scipy import ndimage

from stages.errors import BadInputError
from stages.imageio import has_image_suffix, read_image, write_image
from stages.postprocess.models import ClassSpec, PostprocessingRules, spec_key

log = logging.getLogger(__name__)


def remove_all_but_largest_component(
    seg: np.ndarray,
    for_which_classes: Sequence[ClassSpec],
    spacing: Sequence[float] | None = None,
    min_valid_object_size: dict[tuple[int, ...], float] | None = None,
) -> np.ndarray:
    """Remove every connected component but the largest, per class or group of classes, in order.

    Args:
        seg: Label map (any number of dimensions); not modified.
        for_which_classes: Entries applied one after the other; an int is one class, a list of ints is a
            region made of several classes (components may span them).
        spacing: Voxel size per array axis (only the product matters); default 1 per axis.
        min_valid_object_size: Optional ``classes tuple -> volume``; for those entries only components smaller
            than the volume (and not of maximal size) are removed.

    Returns:
        A new label map with the removed voxels set to 0.
    """
    out = np.array(seg, copy=True)
    voxel_volume = float(np.prod(spacing)) if spacing is not None else 1.0
    for spec in for_which_classes:
        classes = spec_key(spec)
        mask = np.isin(out, classes)
        labelled, count = ndimage.label(mask)
        if count < 2:
            continue
        volumes = np.bincount(labelled.ravel())[1:] * voxel_volume
        remove = volumes < volumes.max()
        threshold = (min_valid_object_size or {}).get(classes)
        if threshold is not None:
            remove &= volumes < threshold
        ids = np.flatnonzero(remove) + 1
        if ids.size:
            out[np.isin(labelled, ids)] = 0
    return out


def apply_postprocessing(
    seg: np.ndarray, rules: PostprocessingRules | Sequence[ClassSpec], spacing: Sequence[float] | None = None
) -> np.ndarray:
    """Apply a rule set (or a bare ``for_which_classes`` list) to one label map, in list order."""
    if isinstance(rules, PostprocessingRules):
        sizes = {spec_key(s): v for s in rules.for_which_classes if (v := rules.min_size_for(s)) is not None}
        return remove_all_but_largest_component(seg, rules.for_which_classes, spacing, sizes or None)
    return remove_all_but_largest_component(seg, list(rules), spacing)


def postprocess_file(
    input_file: str | os.PathLike, output_file: str | os.PathLike, rules: PostprocessingRules | list
) -> None:
    """Read a label image, apply the rules with its spacing, and write it with the same geometry."""
    seg, geometry = read_image(input_file)
    write_image(apply_postprocessing(seg, rules, geometry.array_spacing), geometry, output_file)


def image_files(folder: str | os.PathLike) -> list[Path]:
    """Image files directly in ``folder``, sorted by name (hidden temporary files excluded)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BadInputError(f"{folder}: folder not found")
    return sorted(p for p in folder.iterdir() if p.is_file() and has_image_suffix(p.name) and
                  not p.name.startswith("."))


def apply_postprocessing_to_folder(
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    rules: PostprocessingRules | list,
    num_processes: int = 1,
) -> list[Path]:
    """Apply ``rules`` to every label image of ``input_dir``, writing same-named files into ``output_dir``.

    Args:
        input_dir: Folder of label images (e.g. ``<case>.nii.gz``).
        output_dir: Destination folder (created); may equal ``input_dir`` to postprocess in place.
        rules: The rule document or a ``for_which_classes`` list.
        num_processes: Worker processes (1: in this process).

    Returns:
        The files written.
    """
    files = image_files(input_dir)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    targets = [output_dir / f.name for f in files]
    if num_processes > 1 and len(files) > 1:
        with ProcessPoolExecutor(max_workers=num_processes) as pool:
            list(pool.map(postprocess_file, files, targets, [rules] * len(files)))
    else:
        for src, dst in zip(files, targets):
            postprocess_file(src, dst, rules)
    log.info("postprocessed %d file(s) from %s into %s", len(files), input_dir, output_dir)
    return targets
