"""DICOM series read in one pass (issue 23): the direct pixel read gives what GDCM gives.

``client.reading.dicom.read_raw_pixels`` reads plain uncompressed slices straight from the file
(the header was parsed once already) and hands every other layout to GDCM. These tests
write the layouts archives hold (signed and unsigned, 12 of 16 bits stored, rescale
intercept -1024, slope 2, implicit and explicit VR, trailing padding, overlay bits above
the stored ones, MONOCHROME1, RLE compression) and check, slice by slice and volume by
volume, that the result is identical to GDCM's, and that the shared edge-case series
read to the same arrays, metadata and errors as with the direct read switched off.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from client.core.errors import ScanReadError
from client.reading import dicom as _dicom
from client.reading.io import read_scan
from client.reading.scan import ScanVolume

pydicom = pytest.importorskip("pydicom")

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "dicom_edge_cases"


def _series(folder: Path, n=6, shape=(48, 40), seed=0) -> list[Path]:
    rng = np.random.default_rng(seed)
    hu = rng.integers(-1000, 1500, size=(n, *shape)).astype(np.int16)
    scan = ScanVolume(hu, (2.0, 0.8, 0.7), (-10.0, 20.0, 30.0), np.eye(3), metadata={})
    return _dicom.write_series(scan, folder, shuffle_seed=seed)


def _rewrite(paths, *, unsigned=False, bits=16, slope=1, intercept=0, explicit=False,
             padding=False, overlay=False, mono1=False, rle=False, jpegls=False):  # fmt: skip
    from pydicom.uid import (
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        JPEGLSLossless,
        RLELossless,
    )

    for p in paths:
        ds = pydicom.dcmread(str(p))
        hu = ds.pixel_array.astype(np.int64) * int(ds.get("RescaleSlope", 1)) + int(
            ds.get("RescaleIntercept", 0)
        )
        stored = (hu - intercept) // slope
        if unsigned:
            stored = np.clip(stored, 0, (1 << bits) - 1)
            arr = stored.astype("<u2")
        else:
            stored = np.clip(stored, -(1 << (bits - 1)), (1 << (bits - 1)) - 1)
            arr = stored.astype("<i2")
        if overlay:
            arr = arr | np.asarray(1 << 15, arr.dtype)  # an overlay plane in bit 15
        ds.PixelRepresentation = 0 if unsigned else 1
        ds.BitsStored, ds.HighBit = bits, bits - 1
        ds.RescaleSlope, ds.RescaleIntercept = str(slope), str(intercept)
        if mono1:
            ds.PhotometricInterpretation = "MONOCHROME1"
        ds.PixelData = arr.tobytes()
        ds["PixelData"].VR = "OW"
        ds.file_meta.TransferSyntaxUID = (
            ExplicitVRLittleEndian if explicit else ImplicitVRLittleEndian
        )
        if padding:
            ds.add_new(0xFFFCFFFC, "OB", b"\0" * 16)  # Data Set Trailing Padding after the pixels
        if rle:
            ds.compress(RLELossless, arr)
        if jpegls:
            ds.compress(JPEGLSLossless, arr)
        ds.save_as(str(p), enforce_file_format=True)


LAYOUTS = {
    "signed_implicit": {},
    "unsigned_12bit_intercept_explicit": {"unsigned": True, "bits": 12, "intercept": -1024,
                                          "explicit": True},
    "slope_2": {"slope": 2, "intercept": -1024, "unsigned": True, "explicit": True},
    "trailing_padding": {"padding": True, "explicit": True},
    "overlay_bit_above_12_stored": {"unsigned": True, "bits": 12, "intercept": -1024,
                                    "overlay": True},
    "monochrome1": {"mono1": True},
    "rle": {"rle": True, "explicit": True},
    "rle_unsigned_12bit_intercept": {"rle": True, "explicit": True, "unsigned": True, "bits": 12,
                                     "intercept": -1024},
}  # fmt: skip
DIRECT = {"signed_implicit", "unsigned_12bit_intercept_explicit", "slope_2", "rle",
          "rle_unsigned_12bit_intercept"}  # fmt: skip


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_the_direct_read_equals_gdcm_or_declines(tmp_path, name):
    paths = _series(tmp_path / name)
    _rewrite(paths, **LAYOUTS[name])
    used = 0
    for p in paths:
        h = _dicom.read_header(p)
        layout = _dicom.raw_pixel_layout(h)
        got = None if layout is None else _dicom.read_raw_pixels(h, layout)
        import SimpleITK as sitk

        want = sitk.GetArrayFromImage(_dicom.read_slice(p))
        want = want.reshape(want.shape[-2], want.shape[-1])
        if got is not None:
            used += 1
            assert np.array_equal(got, want), name
    assert (used == len(paths)) == (name in DIRECT), (name, used)


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_read_scan_gives_the_same_volume_with_and_without_the_direct_read(
    tmp_path, name, monkeypatch
):
    paths = _series(tmp_path / name, seed=3)
    _rewrite(paths, **LAYOUTS[name])
    fast = read_scan(tmp_path / name, min_slices=3)
    monkeypatch.setattr(_dicom, "raw_pixel_layout", lambda h: None)
    slow = read_scan(tmp_path / name, min_slices=3)
    assert fast.array.dtype == slow.array.dtype and np.array_equal(fast.array, slow.array)
    assert fast.spacing == slow.spacing and fast.origin == slow.origin
    assert np.array_equal(fast.direction, slow.direction) and fast.metadata == slow.metadata


def test_a_truncated_slice_is_still_refused_with_the_same_message(tmp_path):
    paths = _series(tmp_path / "s")
    p = sorted(paths)[2]
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(ScanReadError, match="truncated"):
        read_scan(tmp_path / "s", min_slices=3)


def _edge_series():
    if not DATA.is_dir():
        return []
    out = []
    for d in sorted(DATA.rglob("*")):
        if d.is_dir() and any(
            f.is_file() and not f.name.startswith("LICENSE") for f in d.iterdir()
        ):
            out.append(d)
    return out


@pytest.mark.parametrize("folder", _edge_series(), ids=lambda p: str(p.relative_to(DATA)))
def test_shared_edge_case_series_read_the_same(folder, monkeypatch):
    def read():
        try:
            s = read_scan(folder, min_slices=1)
            return ("ok", s.array.dtype, s.array.tobytes(), s.spacing, s.origin, s.metadata)
        except ScanReadError as exc:
            return ("error", str(exc))

    fast = read()
    monkeypatch.setattr(_dicom, "raw_pixel_layout", lambda h: None)
    assert fast == read()


def test_compressed_slices_decode_on_threads_with_the_same_volume_and_errors(tmp_path, monkeypatch):
    pytest.importorskip("jpeg_ls", reason="pyjpegls writes the JPEG-LS test series")
    paths = sorted(_series(tmp_path / "rle", n=12, seed=5))
    _rewrite(paths, jpegls=True, explicit=True)  # GDCM decodes JPEG-LS (pydicom only RLE here)
    assert all(_dicom.raw_pixel_layout(_dicom.read_header(p)) is None for p in paths)
    monkeypatch.setattr(_dicom, "GDCM_SERIES", False)  # the per-slice path, on threads
    monkeypatch.setattr(_dicom, "GDCM_THREADS", 4)
    threaded = read_scan(tmp_path / "rle", min_slices=3)
    monkeypatch.setattr(_dicom, "GDCM_THREADS", 1)
    serial = read_scan(tmp_path / "rle", min_slices=3)
    assert np.array_equal(threaded.array, serial.array)
    # Two broken slices: the error names the first one along the stack either way.
    hs = sorted((_dicom.read_header(p) for p in paths), key=lambda h: h.position[2])
    for h in (hs[4], hs[8]):
        h.path.write_bytes(h.path.read_bytes()[:-2000])
    messages = []
    for threads in (1, 4):
        monkeypatch.setattr(_dicom, "GDCM_THREADS", threads)
        with pytest.raises(ScanReadError) as err:
            read_scan(tmp_path / "rle", min_slices=3)
        messages.append(str(err.value))
    assert messages[0] == messages[1] and hs[4].path.name in messages[0]


@pytest.mark.parametrize("name", ["rle", "slope_2", "monochrome1", "overlay_bit_above_12_stored"])
def test_one_series_reader_decodes_like_a_reader_per_slice(tmp_path, name, monkeypatch):
    paths = _series(tmp_path / name, n=9, seed=7)
    _rewrite(paths, **LAYOUTS[name])
    monkeypatch.setattr(_dicom, "raw_pixel_layout", lambda h: None)  # everything through GDCM
    one = read_scan(tmp_path / name, min_slices=3)
    monkeypatch.setattr(_dicom, "GDCM_SERIES", False)
    per_slice = read_scan(tmp_path / name, min_slices=3)
    assert one.array.dtype == per_slice.array.dtype
    assert np.array_equal(one.array, per_slice.array)
