"""Medical image reading and writing through SimpleITK; the only module that knows file formats.

Arrays are in SimpleITK order, i.e. ``(z, y, x)`` for 3D, and :class:`Geometry` keeps spacing, origin and
direction exactly as SimpleITK reports them (``(x, y, z)`` order), so a read followed by a write restores the
file's geometry bit for bit. Supported: NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``) and
MetaImage (``.mha``, ``.mhd``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from pydantic import BaseModel, ConfigDict

from stages.errors import BadInputError
from stages.fsutil import atomic_path

SUPPORTED_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


class Geometry(BaseModel):
    """Physical geometry of an image in SimpleITK (x, y, z) order.

    Attributes:
        spacing: Voxel size per axis in mm.
        origin: Physical position of the first voxel.
        direction: Row-major direction cosine matrix, ``dim * dim`` values.
        size: Number of voxels per axis (x, y, z order).
    """

    model_config = ConfigDict(frozen=True)

    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]
    size: tuple[int, ...]

    @property
    def ndim(self) -> int:
        """Number of spatial dimensions."""
        return len(self.spacing)

    @property
    def array_spacing(self) -> tuple[float, ...]:
        """Spacing in array order (z, y, x)."""
        return tuple(reversed(self.spacing))

    @property
    def array_shape(self) -> tuple[int, ...]:
        """Shape in array order (z, y, x)."""
        return tuple(reversed(self.size))

    @classmethod
    def of(cls, image: sitk.Image) -> Geometry:
        """Geometry of a SimpleITK image."""
        return cls(
            spacing=tuple(float(v) for v in image.GetSpacing()),
            origin=tuple(float(v) for v in image.GetOrigin()),
            direction=tuple(float(v) for v in image.GetDirection()),
            size=tuple(int(v) for v in image.GetSize()),
        )

    def apply(self, image: sitk.Image) -> None:
        """Set spacing, origin and direction of ``image`` to this geometry."""
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)

    def mismatches(self, other: Geometry, rtol: float = 1e-5, atol: float = 1e-4) -> list[str]:
        """Names of the fields (size, spacing, origin, direction) that differ beyond the tolerance."""
        out = []
        if self.size != other.size:
            out.append(f"size {self.size} != {other.size}")
        for name in ("spacing", "origin", "direction"):
            a, b = np.asarray(getattr(self, name)), np.asarray(getattr(other, name))
            if a.shape != b.shape or not np.allclose(a, b, rtol=rtol, atol=atol):
                out.append(f"{name} {tuple(np.round(a, 5))} != {tuple(np.round(b, 5))}")
        return out


def has_image_suffix(name: str) -> bool:
    """True if ``name`` ends with a supported image suffix."""
    return name.lower().endswith(SUPPORTED_SUFFIXES)


def strip_image_suffix(name: str) -> str:
    """``case_0000.nii.gz`` -> ``case_0000``."""
    for suffix in SUPPORTED_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def image_suffix(name: str) -> str:
    """The supported suffix of ``name`` (``.nii.gz`` for ``x.nii.gz``); raises if unsupported."""
    for suffix in SUPPORTED_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[len(name) - len(suffix) :]
    raise BadInputError(f"{name}: unsupported image format (supported: {', '.join(SUPPORTED_SUFFIXES)})")


def read_sitk(path: str | os.PathLike) -> sitk.Image:
    """Read an image with SimpleITK; unreadable files raise :class:`BadInputError` naming the file."""
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unreadable"
        raise BadInputError(f"{path}: cannot read image ({first})") from exc


def read_image(path: str | os.PathLike, dtype: np.dtype | type | None = None) -> tuple[np.ndarray, Geometry]:
    """Read an image as a numpy array in (z, y, x) order plus its geometry.

    Args:
        path: Image file.
        dtype: Convert the array to this dtype (None keeps the stored type).

    Returns:
        ``(array, geometry)``.
    """
    image = read_sitk(path)
    arr = sitk.GetArrayFromImage(image)
    if dtype is not None:
        arr = arr.astype(dtype, copy=False)
    return arr, Geometry.of(image)


def write_image(array: np.ndarray, geometry: Geometry, path: str | os.PathLike, compress: bool = True) -> None:
    """Write ``array`` (z, y, x order) with ``geometry`` atomically (temporary file, then rename).

    Args:
        array: Voxel data; its shape must equal ``geometry.array_shape``.
        geometry: Spacing, origin and direction to store.
        path: Destination; the format follows its suffix.
        compress: Use compression where the format supports it.
    """
    path = Path(path)
    if tuple(array.shape) != geometry.array_shape:
        raise ValueError(f"{path}: array shape {array.shape} does not match geometry {geometry.array_shape}")
    image = sitk.GetImageFromArray(array)
    geometry.apply(image)
    write_sitk(image, path, compress=compress)


def write_sitk(image: sitk.Image, path: str | os.PathLike, compress: bool = True) -> None:
    """Write a SimpleITK image atomically."""
    path = Path(path)
    with atomic_path(path, suffix=image_suffix(path.name)) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=compress)
