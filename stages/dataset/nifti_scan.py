"""Scan of the bytes of a NIfTI file: stream integrity and non-finite voxels, which SimpleITK cannot see.

ITK's NIfTI reader (up to ITK 5.x, the version SimpleITK ships) silently replaces every NaN and ±Inf voxel
with 0 while reading (fixed upstream in ITK pull request #6683), and it reads a truncated ``.nii.gz`` without
an error. The verifier therefore reads NIfTI files itself once, streaming: the gzip stream is decompressed to
its end (so a truncated or corrupt stream is noticed), the header gives the voxel type and count, and NaN/Inf
voxels are counted in the raw data. Nothing is written.
"""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

_CHUNK = 4 * 1024 * 1024
_FLOAT_TYPES = {16: "f4", 64: "f8"}  # NIfTI datatype codes of float32 and float64


class NiftiScanError(ValueError):
    """The bytes are not a readable NIfTI stream (the message says why)."""


@dataclass(frozen=True)
class NiftiScan:
    """What the raw bytes hold.

    Attributes:
        float_data: Whether the voxels are float32/float64 (only then can they be non-finite).
        nan: Number of NaN voxels.
        inf: Number of +Inf/-Inf voxels.
    """

    float_data: bool
    nan: int = 0
    inf: int = 0


def is_nifti(path: str | os.PathLike) -> bool:
    """True for ``.nii`` and ``.nii.gz`` names."""
    name = str(path).lower()
    return name.endswith((".nii", ".nii.gz"))


def scan_nifti(path: str | os.PathLike) -> NiftiScan:
    """Read a ``.nii``/``.nii.gz`` file to its end and count its non-finite voxels.

    Raises:
        NiftiScanError: Not a single-file NIfTI-1/NIfTI-2 image, or fewer voxel bytes than the header announces.
        OSError, EOFError, zlib.error: The gzip stream is corrupt or truncated.
    """
    path = Path(path)
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as stream:
        head = _read_exact(stream, 540, allow_short=True)
        dtype, n_voxels, offset = _parse_header(head)
        data_start = head[offset:] if offset < len(head) else b""
        if offset > len(head):
            _read_exact(stream, offset - len(head))
        if dtype is None:
            _drain(stream)
            return NiftiScan(float_data=False)
        nan, inf = _count_nonfinite(stream, data_start, dtype, n_voxels)
        _drain(stream)
    return NiftiScan(float_data=True, nan=nan, inf=inf)


def _read_exact(stream: BinaryIO, n: int, allow_short: bool = False) -> bytes:
    data = stream.read(n)
    if len(data) < n and not allow_short:
        raise NiftiScanError(f"file ends after {len(data)} of {n} expected bytes")
    return data


def _drain(stream: BinaryIO) -> None:
    while stream.read(_CHUNK):
        pass


def _parse_header(head: bytes) -> tuple[np.dtype | None, int, int]:
    """(float voxel dtype or None, voxel count, data offset) from the first bytes of a NIfTI-1/2 file."""
    if len(head) < 348:
        raise NiftiScanError(f"too short for a NIfTI header ({len(head)} bytes)")
    for endian in "<>":
        size = struct.unpack(endian + "i", head[:4])[0]
        if size == 348:
            if head[344:348] != b"n+1\x00":
                raise NiftiScanError("not a single-file NIfTI-1 image (magic is not 'n+1')")
            dims = struct.unpack(endian + "8h", head[40:56])
            datatype = struct.unpack(endian + "h", head[70:72])[0]
            offset = int(struct.unpack(endian + "f", head[108:112])[0])
            return _finish(endian, dims, datatype, offset)
        if size == 540:
            if len(head) < 540 or head[4:8] != b"n+2\x00":
                raise NiftiScanError("not a single-file NIfTI-2 image (magic is not 'n+2')")
            datatype = struct.unpack(endian + "h", head[12:14])[0]
            dims = struct.unpack(endian + "8q", head[16:80])
            offset = struct.unpack(endian + "q", head[168:176])[0]
            return _finish(endian, dims, datatype, offset)
    raise NiftiScanError("not a NIfTI file (header size is neither 348 nor 540)")


def _finish(endian: str, dims: tuple[int, ...], datatype: int, offset: int) -> tuple[np.dtype | None, int, int]:
    ndim = dims[0]
    if not 1 <= ndim <= 7 or any(d < 0 for d in dims[1 : ndim + 1]):
        raise NiftiScanError(f"invalid dimensions {dims}")
    n_voxels = int(np.prod(dims[1 : ndim + 1], dtype=np.int64))
    code = _FLOAT_TYPES.get(datatype)
    return (np.dtype(endian + code) if code else None), n_voxels, offset


def _count_nonfinite(stream: BinaryIO, first: bytes, dtype: np.dtype, n_voxels: int) -> tuple[int, int]:
    """Count NaN and Inf voxels; ``first`` holds the voxel bytes already read with the header."""
    total = n_voxels * dtype.itemsize
    block = first[:total]
    block += _read_exact(stream, min((-len(block)) % dtype.itemsize, total - len(block)))
    nan = inf = done = 0
    while True:
        values = np.frombuffer(block, dtype=dtype)
        nan += int(np.isnan(values).sum())
        inf += int(np.isinf(values).sum())
        done += len(block)
        if done >= total:
            return nan, inf
        want = min(_CHUNK, total - done)  # _CHUNK is a multiple of every item size
        block = stream.read(want)
        if len(block) < want:
            raise NiftiScanError(f"truncated: voxel data ends {total - done - len(block)} bytes early")
