"""Raw NIfTI scan: non-finite voxels SimpleITK hides, truncated and corrupt streams."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import SimpleITK as sitk

from stages.dataset.nifti_scan import NiftiScanError, is_nifti, scan_nifti


def _values(dtype) -> np.ndarray:
    arr = np.arange(4 * 5 * 6, dtype=dtype).reshape(4, 5, 6)
    arr[1, 2, 3] = np.nan
    arr[3, 4, 5] = np.inf
    arr[0, 0, 1] = -np.inf
    return arr


def _nifti1(arr: np.ndarray, endian: str) -> bytes:
    head = bytearray(352)
    struct.pack_into(endian + "i", head, 0, 348)
    struct.pack_into(endian + "8h", head, 40, 3, *reversed(arr.shape), 1, 1, 1, 1)
    struct.pack_into(endian + "hh", head, 70, {4: 16, 8: 64}[arr.itemsize], arr.itemsize * 8)
    struct.pack_into(endian + "8f", head, 76, 1, 1, 1, 1, 1, 1, 1, 1)
    struct.pack_into(endian + "f", head, 108, 352.0)
    struct.pack_into(endian + "f", head, 112, 1.0)  # scl_slope
    head[344:348] = b"n+1\x00"
    return bytes(head) + arr.astype(arr.dtype.newbyteorder(endian)).tobytes()


def _nifti2(arr: np.ndarray) -> bytes:
    head = bytearray(544)
    struct.pack_into("<i", head, 0, 540)
    head[4:8] = b"n+2\x00"
    struct.pack_into("<hh", head, 12, 16, 32)
    struct.pack_into("<8q", head, 16, 3, *reversed(arr.shape), 1, 1, 1, 1)
    struct.pack_into("<q", head, 168, 544)
    return bytes(head) + arr.astype("<f4").tobytes()


def test_nan_written_by_simpleitk_is_counted(tmp_path):
    """ITK before 6 reads these voxels back as 0, so only the raw bytes show them."""
    arr = _values(np.float32)
    path = tmp_path / "x.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(path))
    scan = scan_nifti(path)
    assert (scan.float_data, scan.nan, scan.inf) == (True, 1, 2)


@pytest.mark.parametrize("endian", ["<", ">"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("compressed", [False, True])
def test_handmade_nifti1(tmp_path, endian, dtype, compressed):
    data = _nifti1(_values(dtype), endian)
    path = tmp_path / ("x.nii.gz" if compressed else "x.nii")
    path.write_bytes(gzip.compress(data) if compressed else data)
    assert sitk.ReadImage(str(path)).GetSize() == (6, 5, 4)  # the hand-made header is a valid NIfTI-1
    scan = scan_nifti(path)
    assert (scan.nan, scan.inf) == (1, 2)


def test_nifti2(tmp_path):
    path = tmp_path / "x.nii"
    path.write_bytes(_nifti2(_values(np.float32)))
    scan = scan_nifti(path)
    assert (scan.float_data, scan.nan, scan.inf) == (True, 1, 2)


def test_integer_data_has_no_float_voxels(tmp_path):
    path = tmp_path / "x.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((3, 4, 5), np.uint8)), str(path))
    assert scan_nifti(path).float_data is False


def test_large_multichunk_image(tmp_path):
    arr = np.zeros((64, 128, 160), np.float32)  # 5 MiB: more than one read chunk
    arr[-1, -1, -1] = np.nan
    path = tmp_path / "x.nii"
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(path))
    assert scan_nifti(path).nan == 1


def test_truncated_and_foreign_files(tmp_path):
    data = _nifti1(_values(np.float32), "<")
    (tmp_path / "short.nii").write_bytes(data[:-10])
    with pytest.raises(NiftiScanError, match="truncated"):
        scan_nifti(tmp_path / "short.nii")
    (tmp_path / "short.nii.gz").write_bytes(gzip.compress(data)[:200])
    with pytest.raises(EOFError):
        scan_nifti(tmp_path / "short.nii.gz")
    (tmp_path / "text.nii").write_bytes(b"hello" * 100)
    with pytest.raises(NiftiScanError, match="not a NIfTI file"):
        scan_nifti(tmp_path / "text.nii")
    (tmp_path / "tiny.nii").write_bytes(b"x")
    with pytest.raises(NiftiScanError, match="too short"):
        scan_nifti(tmp_path / "tiny.nii")
    pair = bytearray(data)
    pair[344:348] = b"ni1\x00"
    (tmp_path / "pair.nii").write_bytes(bytes(pair))
    with pytest.raises(NiftiScanError, match="single-file"):
        scan_nifti(tmp_path / "pair.nii")


def test_is_nifti():
    assert is_nifti("a.nii") and is_nifti("A.NII.GZ") and not is_nifti("a.nrrd") and not is_nifti("a.mha")
