"""A corpus of bad inputs generated here; every one must give a clear error naming the file.

"Clear" means: a :class:`ScanReadError` (never another exception, a hang, an
allocation of what a lying header asks for, or a process abort), one line, the
file named in it and the defect said in words (asserted with a pattern per kind).
The corpus is also used end to end through ``python -m client.batch`` (see
``build_corpus``): each kind becomes one input file or folder.
"""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from client.core.errors import ScanReadError
from client.reading.dicom import write_series
from client.reading.headers import show
from client.reading.io import read_label_map, read_scan
from client.reading.scan import ScanVolume

warnings.filterwarnings("ignore", category=UserWarning, module="pydicom")
ROOT = Path(__file__).resolve().parents[1]


def phantom(shape=(12, 32, 32)) -> ScanVolume:
    """A tiny CT-like volume: air around a 40 HU body with a fat rim, 2 x 1.5 x 1.5 mm."""
    z, y, x = np.indices(shape)
    r = np.hypot(y - shape[1] / 2, x - shape[2] / 2)
    a = np.full(shape, -1000, np.int16)
    a[r < shape[1] * 0.45] = -100
    a[r < shape[1] * 0.38] = 40
    return ScanVolume(a, (2.0, 1.5, 1.5), (0.0, 0.0, 0.0), np.eye(3), source="phantom")


def _img(array, spacing=(1.5, 1.5, 2.0), direction=None):
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(spacing)
    if direction is not None:
        img.SetDirection(direction)
    return img


def _write(img, path: Path) -> Path:
    sitk.WriteImage(img, str(path))
    return path


def _nifti_bytes(array, **kw) -> bytearray:
    """A single-file NIfTI-1 as bytes (written by ITK, then patched by the callers)."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "x.nii"
        _write(_img(array, **kw), p)
        return bytearray(p.read_bytes())


def _patch(buf: bytearray, offset: int, fmt: str, *values) -> bytearray:
    struct.pack_into("<" + fmt, buf, offset, *values)
    return buf


def _meta_text(path: Path, **fields) -> Path:
    """Rewrite fields of a MetaImage header (text before ElementDataFile)."""
    raw = path.read_bytes()
    cut = raw.index(b"ElementDataFile")
    head = raw[:cut].decode()
    lines = []
    for ln in head.splitlines():
        k = ln.split("=")[0].strip()
        lines.append(f"{k} = {fields.pop(k)}" if k in fields else ln)
    lines += [f"{k} = {v}" for k, v in fields.items()]
    path.write_bytes(("\n".join(lines) + "\n").encode() + raw[cut:])
    return path


def _nrrd_text(path: Path, **fields) -> Path:
    raw = path.read_bytes()
    cut = raw.index(b"\n\n") + 2
    head = raw[:cut].decode().splitlines()
    out = []
    for ln in head:
        k = ln.split(":")[0].strip()
        key = k.replace(" ", "_")
        out.append(f"{k}: {fields.pop(key)}" if key in fields else ln)
    path.write_bytes(("\n".join(ln for ln in out if ln) + "\n\n").encode() + raw[cut:])
    return path


@dataclass
class Case:
    kind: str
    path: Path
    match: str  # regex the error must match
    labels: bool = False  # a label map (for --masks), not a scan
    accepted: bool = False  # a defect that is handled, not refused (with a note)


def build_corpus(root: Path, shared_data: Path | None = None) -> list[Case]:
    """Write every kind of bad input under ``root``; return one :class:`Case` per kind."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    ct = phantom()
    a = ct.array
    cases: list[Case] = []

    def add(kind, path, match, **kw):
        cases.append(Case(kind, Path(path), match, **kw))

    good = _write(ct.to_sitk(), root / "good_reference.nii.gz")  # noqa: F841 - control
    # --- empty, not an image, wrong content for the name -------------------------------
    (root / "empty.nii.gz").write_bytes(b"")
    add("empty file .nii.gz", root / "empty.nii.gz", r"empty file \(0 bytes\)")
    (root / "zero_bytes.mha").write_bytes(b"")
    add("zero bytes .mha", root / "zero_bytes.mha", r"empty file \(0 bytes\)")
    (root / "text.nii.gz").write_text("patient scan exported as text\n" * 20)
    add("text named .nii.gz", root / "text.nii.gz", r"not gzip-compressed \(it looks like a text")
    (root / "gzip_named.nii").write_bytes(gzip.compress(bytes(_nifti_bytes(a))))
    add(
        "gzip NIfTI named .nii",
        root / "gzip_named.nii",
        r"gzip-compressed data in a file named \.nii",
    )
    (root / "plain_named.nii.gz").write_bytes(bytes(_nifti_bytes(a)))
    add("plain NIfTI named .nii.gz", root / "plain_named.nii.gz", r"uncompressed NIfTI; rename")
    (root / "wrong_magic.nii").write_bytes(bytes(_patch(_nifti_bytes(a), 344, "4s", b"xyz\0")))
    add("wrong NIfTI magic", root / "wrong_magic.nii", r"header magic")
    (root / "pair_magic.nii").write_bytes(bytes(_patch(_nifti_bytes(a), 344, "4s", b"ni1\0")))
    add("NIfTI pair header as .nii", root / "pair_magic.nii", r"\.hdr/\.img pair")
    rng = np.random.default_rng(0)
    (root / "gzip_garbage.nii.gz").write_bytes(gzip.compress(rng.bytes(4000)))
    add("gzip of random bytes", root / "gzip_garbage.nii.gz", r"not a NIfTI file")
    (root / "text.nrrd").write_text("hello\n")
    add("text named .nrrd", root / "text.nrrd", r"not a NRRD file")
    (root / "text.mha").write_text("ObjectType = Image\n")
    add("MetaImage without fields", root / "text.mha", r"not a MetaImage file")
    (root / "notes_no_extension").write_text("not an image at all\n")
    add("text without extension", root / "notes_no_extension", r"not an image")
    # --- dimensions ---------------------------------------------------------------------
    _write(_img(np.full((32, 32), -1000, np.int16)), root / "image2d.nii.gz")
    add("2D image", root / "image2d.nii.gz", r"expected a 3D volume, got a 2D image")
    _write(_img(a[:1]), root / "one_slice.nii.gz")
    add("single-slice volume", root / "one_slice.nii.gz", r"got 2D image")
    _write(_img(a[:3]), root / "three_slices.nrrd")
    add("too few slices", root / "three_slices.nrrd", r"at least 8 slices, got only 3 slices")
    _write(_img(a[:, :8, :8]), root / "tiny_inplane.mha")
    add("8 x 8 pixels per slice", root / "tiny_inplane.mha", r"at least 16 x 16 pixels")
    _write(sitk.JoinSeries([_img(a), _img(a)]), root / "four_d.nii.gz")
    add("4D image", root / "four_d.nii.gz", r"4d_first_volume_only", accepted=True)
    b5 = _nifti_bytes(a)
    _patch(b5, 40, "8h", 5, 32, 32, 3, 2, 2, 1, 1)  # same voxel count as the data
    (root / "five_d.nii").write_bytes(bytes(b5))
    add("5D image", root / "five_d.nii", r"expected a 3D volume, got a 5D image")
    vec = sitk.Compose([_img(a), _img(a), _img(a)])
    _write(vec, root / "rgb.mha")
    add("3 components per voxel", root / "rgb.mha", r"one grey value per voxel, got 3")
    (root / "huge_dims.nii").write_bytes(
        bytes(_patch(_nifti_bytes(a), 40, "8h", 3, 30000, 30000, 30000, 1, 1, 1, 1))
    )
    add("huge header dims (NIfTI)", root / "huge_dims.nii", r"voxels, more than the limit")
    (root / "huge_dims_small.nii").write_bytes(
        bytes(_patch(_nifti_bytes(a), 40, "8h", 3, 1000, 1000, 400, 1, 1, 1, 1))
    )
    add(
        "dims beyond the file (NIfTI)", root / "huge_dims_small.nii", r"truncated: header describes"
    )
    _nrrd_text(_write(_img(a), root / "huge_dims.nrrd"), sizes="1000 1000 500")
    add(
        "huge header dims (NRRD, 4 KB file)",
        root / "huge_dims.nrrd",
        r"truncated: header describes",
    )
    _meta_text(_write(_img(a), root / "huge_dims.mha"), DimSize="1000 1000 500")
    add("huge header dims (MHA)", root / "huge_dims.mha", r"truncated: header describes")
    _patch(b0 := _nifti_bytes(a), 40, "8h", 3, 32, -5, 12, 1, 1, 1, 1)
    (root / "negative_dim.nii").write_bytes(bytes(b0))
    add("negative dimension", root / "negative_dim.nii", r"invalid image dimensions")
    _patch(b0 := _nifti_bytes(a), 40, "h", 9)
    (root / "dim0_9.nii").write_bytes(bytes(b0))
    add("dim[0] out of range", root / "dim0_9.nii", r"dim\[0\] = 9")
    _patch(b0 := _nifti_bytes(a), 70, "2h", 16, 16)  # float32 with bitpix 16
    (root / "bitpix.nii").write_bytes(bytes(b0))
    add("datatype/bitpix mismatch", root / "bitpix.nii", r"datatype 16 with bitpix 16")
    # --- truncation -----------------------------------------------------------------------
    src = _write(_img(rng.integers(-1000, 200, a.shape).astype(np.int16)), root / "_full.nii.gz")
    data = src.read_bytes()
    (root / "truncated.nii.gz").write_bytes(data[: len(data) // 2])
    src.unlink()
    add("truncated gzip (.nii.gz cut)", root / "truncated.nii.gz", r"truncated")
    nb = bytes(_nifti_bytes(a))
    (root / "short.nii").write_bytes(nb[:-100])
    add("missing last bytes (.nii)", root / "short.nii", r"truncated: header describes")
    (root / "short_stream.nii.gz").write_bytes(gzip.compress(nb[:-100]))
    add(
        "gzip stream missing last bytes",
        root / "short_stream.nii.gz",
        r"truncated: header describes",
    )
    m = _write(_img(a), root / "truncated.mha").read_bytes()
    (root / "truncated.mha").write_bytes(m[:-1000])
    add("truncated .mha", root / "truncated.mha", r"truncated: header describes")
    n = _write(_img(a), root / "truncated.nrrd").read_bytes()
    (root / "truncated.nrrd").write_bytes(n[:-1000])
    add("truncated .nrrd", root / "truncated.nrrd", r"truncated: header describes")
    noise = rng.integers(-1000, 1000, a.shape).astype(np.int16)
    sitk.WriteImage(_img(noise), str(root / "_c.nrrd"), useCompression=True)
    c = (root / "_c.nrrd").read_bytes()
    (root / "_c.nrrd").unlink()
    (root / "truncated_gz.nrrd").write_bytes(c[: len(c) // 2])
    add("truncated gzip NRRD", root / "truncated_gz.nrrd", r"truncated or corrupt")
    sitk.WriteImage(_img(noise), str(root / "_c.mha"), useCompression=True)
    c = (root / "_c.mha").read_bytes()
    (root / "_c.mha").unlink()
    (root / "truncated_zlib.mha").write_bytes(c[: len(c) // 2])
    add("truncated compressed MHA", root / "truncated_zlib.mha", r"truncated or corrupt")
    _write(_img(a), root / "detached.nhdr")
    for f in root.glob("detached.raw*"):
        f.unlink()
    add("NRRD data file missing", root / "detached.nhdr", r"data file .* is missing")
    # --- values ---------------------------------------------------------------------------
    f = a.astype(np.float32)
    fn = f.copy()
    fn[6, 10:20, 10:20] = np.nan
    _write(_img(fn), root / "nan.nii.gz")
    add(
        "NaN voxels (.nii.gz float32)", root / "nan.nii.gz", r"100 voxel values are NaN or infinity"
    )
    fi = f.copy()
    fi[3, 5, 5] = np.inf
    _write(_img(fi), root / "inf.nii")
    add("one inf voxel (.nii)", root / "inf.nii", r"1 voxel value is NaN or infinity")
    _write(_img(fn.astype(np.float64)), root / "nan64.nii.gz")
    add("NaN voxels (float64)", root / "nan64.nii.gz", r"NaN or infinity")
    _write(_img(fn), root / "nan.nrrd")
    add("NaN voxels (.nrrd)", root / "nan.nrrd", r"NaN or infinity")
    _write(_img(-fi), root / "minus_inf.mha")
    add("-inf voxel (.mha)", root / "minus_inf.mha", r"NaN or infinity")
    _write(_img((a.astype(np.int32) + 1024).astype(np.uint16)), root / "raw_values.nii.gz")
    add("HU out of range (no rescale)", root / "raw_values.nii.gz", r"implausible HU range")
    _write(_img(rng.integers(0, 800, a.shape).astype(np.int16)), root / "mr_like.nrrd")
    add("MR-like intensities", root / "mr_like.nrrd", r"implausible HU range")
    _write(_img(a.astype(np.float32) * 1000), root / "hu_times_1000.mha")
    add("HU scaled by 1000", root / "hu_times_1000.mha", r"implausible HU range")
    _patch(bs := _nifti_bytes(f), 112, "f", float("nan"))
    (root / "nan_slope.nii").write_bytes(bytes(bs))
    add("scl_slope NaN", root / "nan_slope.nii", r"scaling is not a number")
    # --- spacing and direction -------------------------------------------------------------
    _nrrd_text(
        _write(_img(a), root / "zero_spacing.nrrd"), space_directions="(0,0,0) (0,1.5,0) (0,0,2)"
    )
    add("zero spacing (NRRD)", root / "zero_spacing.nrrd", r"zero voxel spacing")
    bz = _nifti_bytes(a)
    _patch(bz, 76, "4f", 1.0, 0.0, 1.5, 2.0)
    _patch(bz, 254, "h", 0)  # no sform: pixdim rules
    (root / "zero_pixdim.nii").write_bytes(bytes(bz))
    add("zero spacing (NIfTI pixdim)", root / "zero_pixdim.nii", r"zero voxel spacing")
    _meta_text(_write(_img(a), root / "negative_spacing.mha"), ElementSpacing="1.5 -1.5 2")
    add("negative spacing (MHA)", root / "negative_spacing.mha", r"negative voxel spacing")
    bn = _nifti_bytes(a)
    _patch(bn, 76, "4f", 1.0, 1.5, -1.5, 2.0)
    (root / "negative_pixdim.nii").write_bytes(bytes(bn))
    add("negative spacing (NIfTI)", root / "negative_pixdim.nii", r"negative voxel spacing")
    _meta_text(_write(_img(a), root / "nan_spacing.mha"), ElementSpacing="1.5 nan 2")
    add("NaN spacing", root / "nan_spacing.mha", r"spacing .* is not a number")
    _write(_img(a, spacing=(1.5, 1.5, 300.0)), root / "absurd_spacing.nii.gz")
    add("absurd spacing 300 mm", root / "absurd_spacing.nii.gz", r"absurd voxel spacing")
    shear = (1, 0.5, 0, 0, 0.866, 0, 0, 0, 1)  # axes at 60 degrees
    _meta_text(_write(_img(a), root / "sheared.mha"), TransformMatrix=" ".join(map(str, shear)))
    add("non-orthogonal direction (MHA)", root / "sheared.mha", r"non-orthogonal .* 60\.0 degrees")
    _nrrd_text(
        _write(_img(a), root / "sheared.nrrd"), space_directions="(1.5,0,0) (0.75,1.3,0) (0,0,2)"
    )
    add("non-orthogonal direction (NRRD)", root / "sheared.nrrd", r"non-orthogonal")
    bo = _nifti_bytes(a)
    _patch(bo, 280, "4f", 1.5, 0.5, 0.0, 0.0)  # srow_x: column j leans along x
    (root / "sheared.nii").write_bytes(bytes(bo))
    add("non-orthogonal direction (NIfTI sform)", root / "sheared.nii", r"non-orthogonal")
    _meta_text(_write(_img(a), root / "singular.mha"), TransformMatrix="1 0 0 1 0 0 0 0 1")
    add("singular direction (MHA)", root / "singular.mha", r"singular direction")
    bsg = _nifti_bytes(a)
    _patch(bsg, 280, "4f", 1.5, 1.5, 0.0, 0.0)
    _patch(bsg, 296, "4f", 0.0, 0.0, 0.0, 0.0)
    (root / "singular.nii").write_bytes(bytes(bsg))
    add("singular direction (NIfTI sform)", root / "singular.nii", r"singular direction")
    # --- the file system ------------------------------------------------------------------
    (root / "folder.nii.gz").mkdir(exist_ok=True)
    add(
        "directory named .nii.gz", root / "folder.nii.gz", r"is a folder, expected a \.nii\.gz file"
    )
    os.symlink(root / "does_not_exist.nii.gz", root / "broken_link.nii.gz")
    add("broken symlink", root / "broken_link.nii.gz", r"broken symbolic link")
    os.symlink(root / "loop.nii.gz", root / "loop.nii.gz")
    add("symlink loop", root / "loop.nii.gz", r"symbolic link loop")
    os.mkfifo(root / "fifo.nii.gz")
    add("named pipe named .nii.gz", root / "fifo.nii.gz", r"is a named pipe")
    bad_name = os.path.join(os.fsencode(root), b"trunc_\xff\xfe.nii.gz")
    with open(bad_name, "wb") as fh:
        fh.write(data[: len(data) // 3])
    add(
        "non-UTF-8 name, truncated",
        Path(os.fsdecode(bad_name)),
        r"trunc_\\xff\\xfe\.nii\.gz: truncated",
    )
    # --- DICOM ----------------------------------------------------------------------------
    dcm = root / "dicom"
    write_series(ct, dcm / "_ok", shuffle_seed=1)
    import pydicom

    def series(name):
        d = dcm / name
        shutil.copytree(dcm / "_ok", d)
        return sorted(d.iterdir())

    fs = series("no_pixel_data")
    for p in fs:
        ds = pydicom.dcmread(p)
        del ds.PixelData
        del ds.Rows
        del ds.Columns
        ds.save_as(p)
    add("DICOM without pixel data", dcm / "no_pixel_data", r"no pixel data")
    fs = series("mixed_sizes")
    small = ScanVolume(a[:, :20, :20].copy(), ct.spacing)
    one = write_series(small, dcm / "_small", shuffle_seed=3)[0]
    ds_small = pydicom.dcmread(one)
    ds_first = pydicom.dcmread(fs[0])
    ds_small.SeriesInstanceUID = ds_first.SeriesInstanceUID
    ds_small.ImagePositionPatient = [0, 0, -50.0]
    ds_small.save_as(dcm / "mixed_sizes" / "extra")
    shutil.rmtree(dcm / "_small")
    add("DICOM with mixed sizes", dcm / "mixed_sizes", r"slices of different sizes")
    fs = series("duplicate_positions")
    shutil.copy(fs[0], dcm / "duplicate_positions" / "copy")
    ds = pydicom.dcmread(dcm / "duplicate_positions" / "copy")
    ds.SOPInstanceUID = ds.SOPInstanceUID + ".9"
    ds.save_as(dcm / "duplicate_positions" / "copy")
    add("DICOM duplicate slice positions", dcm / "duplicate_positions", r"same position")
    fs = series("sheared_iop")
    for p in fs:
        ds = pydicom.dcmread(p)
        ds.ImageOrientationPatient = [1, 0, 0, 0.5, 0.866025, 0]
        ds.save_as(p)
    add(
        "DICOM non-orthogonal orientation",
        dcm / "sheared_iop",
        r"non-orthogonal ImageOrientationPatient",
    )
    fs = series("zero_iop")
    for p in fs:
        ds = pydicom.dcmread(p)
        ds.ImageOrientationPatient = [0, 0, 0, 0, 1, 0]
        ds.save_as(p)
    add("DICOM zero orientation vector", dcm / "zero_iop", r"singular ImageOrientationPatient")
    fs = series("truncated_slice")
    raw = fs[3].read_bytes()
    fs[3].write_bytes(raw[: len(raw) - 700])
    add(
        "DICOM series with a truncated slice",
        dcm / "truncated_slice",
        r"truncated pixel data: expected 2048 bytes",
    )
    fs = series("huge_rows")
    for p in fs:
        ds = pydicom.dcmread(p)
        ds.Rows, ds.Columns = 30000, 30000  # 1.8 GB per slice from a 2 KB file
        ds.save_as(p)
    add("DICOM huge Rows/Columns", dcm / "huge_rows", r"voxels, more than the limit")
    fs = series("big_rows")
    for p in fs:
        ds = pydicom.dcmread(p)
        ds.Rows, ds.Columns = 4000, 4000  # under the voxel limit, far over the file size
        ds.save_as(p)
    add("DICOM Rows/Columns beyond the file", dcm / "big_rows", r"truncated( pixel data)?: ")
    fs = series("too_few")
    for p in fs[3:]:
        p.unlink()
    add("DICOM with 3 slices", dcm / "too_few", r"at least 8 slices, got at most 3")
    fs = series("single_file")
    for p in fs[1:]:
        p.unlink()
    add("single DICOM slice", fs[0], r"got a single 2D slice")
    (dcm / "not_dicom").mkdir()
    (dcm / "not_dicom" / "DIRFILE").write_bytes(b"\0" * 300)
    add("folder without DICOM files", dcm / "not_dicom", r"empty series: no DICOM files")
    fs = series("mr")
    for p in fs:
        ds = pydicom.dcmread(p)
        ds.Modality = "MR"
        ds.save_as(p)
    add("DICOM MR series", dcm / "mr", r"expected a CT series, got modality MR")
    shutil.rmtree(dcm / "_ok")
    if shared_data is not None:
        add(
            "DICOM truncated pixel data (real file)",
            shared_data / "dicom_edge_cases" / "pydicom_files" / "MR_truncated.dcm",
            r"truncated pixel data",
        )
    # --- label maps (for --masks) ---------------------------------------------------------
    lab = root / "labels"
    lab.mkdir()
    labels = np.zeros(a.shape, np.uint8)
    labels[4:8, 8:16, 8:16] = 1
    labels[4:8, 18:24, 18:24] = 2
    ok = ct.to_sitk(labels)
    full = _write(ok, lab / "_full.nii").read_bytes()
    (lab / "_full.nii").unlink()
    (lab / "cut_in_half.nii.gz").write_bytes(gzip.compress(full)[: len(gzip.compress(full)) // 2])
    add("label map cut in half", lab / "cut_in_half.nii.gz", r"truncated", labels=True)
    (lab / "missing_last_bytes.nii.gz").write_bytes(gzip.compress(full[:-200]))
    add("label map missing last bytes", lab / "missing_last_bytes.nii.gz", r"truncated: header describes", labels=True)  # fmt: skip
    (lab / "folder.nii.gz").mkdir()
    add("directory instead of a label map", lab / "folder.nii.gz", r"is a folder, expected a label map", labels=True)  # fmt: skip
    add("label map missing", lab / "absent.nii.gz", r"label map not found", labels=True)
    (lab / "empty.nii.gz").write_bytes(b"")
    add("empty label map", lab / "empty.nii.gz", r"empty file", labels=True)
    _write(ct.to_sitk(labels.astype(np.float32) * 0.4), lab / "probabilities.nii.gz")
    add("fractional label map", lab / "probabilities.nii.gz", r"whole-number labels", labels=True)
    ln = labels.astype(np.float32)
    ln[5, 5, 5] = np.nan
    _write(ct.to_sitk(ln), lab / "nan.nii.gz")
    add("NaN in label map", lab / "nan.nii.gz", r"NaN or infinity", labels=True)
    _write(sitk.GetImageFromArray(labels[5]), lab / "slice2d.nii.gz")
    add("2D label map", lab / "slice2d.nii.gz", r"expected a 3D label map, got a 2D", labels=True)
    sh = ct.to_sitk(labels)
    _write(sh, lab / "_s.mha")
    _meta_text(lab / "_s.mha", TransformMatrix=" ".join(map(str, shear)))
    os.replace(lab / "_s.mha", lab / "sheared.mha")
    add("sheared label map", lab / "sheared.mha", r"non-orthogonal", labels=True)
    return cases


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, shared_data):
    return build_corpus(tmp_path_factory.mktemp("bad"), shared_data)


def test_corpus_has_at_least_40_kinds(corpus):
    assert len({c.kind for c in corpus}) >= 40, len(corpus)


def _read(case: Case):
    if case.labels:
        return read_label_map(case.path, phantom())
    return read_scan(case.path)


def test_every_bad_input_gives_a_clear_error_naming_the_file(corpus):
    problems = []
    for case in corpus:
        if case.accepted or "\\x" in show(case.path):
            continue
        try:
            _read(case)
        except ScanReadError as exc:
            msg = str(exc)
            import re

            if show(case.path) not in msg:
                problems.append(f"{case.kind}: file not named: {msg}")
            elif not re.search(case.match, msg):
                problems.append(f"{case.kind}: expected /{case.match}/, got: {msg}")
            elif "\n" in msg or len(msg) > 600:
                problems.append(f"{case.kind}: not one short line: {msg!r}")
        except Exception as exc:  # noqa: BLE001 - the point of the test
            problems.append(f"{case.kind}: {type(exc).__name__} instead of ScanReadError: {exc}")
        else:
            problems.append(f"{case.kind}: accepted silently")
    assert not problems, "\n".join(problems)


def test_handled_defects_are_read_with_a_note(corpus):
    for case in (c for c in corpus if c.accepted):
        scan = _read(case)
        assert any(__import__("re").search(case.match, n) for n in scan.metadata["notes"]), (
            case.kind
        )


def _drop_file_override():
    """In the child before exec: drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the
    bounding set, so even root obeys file permissions after exec (as any user would)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        libc.prctl(24, cap, 0, 0, 0)  # PR_CAPBSET_DROP


def _run_isolated(code: str, *, obey_permissions: bool = False, timeout=60):
    """Run ``code`` in a fresh interpreter; a SimpleITK abort would stay there."""
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        encoding="utf-8",
        cwd=ROOT,
        timeout=timeout,
        preexec_fn=_drop_file_override if obey_permissions else None,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )


def test_non_utf8_names_never_reach_simpleitk(tmp_path):
    """SimpleITK aborts the process (exit 134) on such names; we read through an ASCII alias."""
    d = os.fsencode(tmp_path)
    ct = phantom()
    sitk.WriteImage(ct.to_sitk(), str(tmp_path / "ok.nii.gz"))
    sitk.WriteImage(ct.to_sitk(), str(tmp_path / "ok.mhd"))
    os.rename(tmp_path / "ok.nii.gz", os.path.join(d, b"ct_\xe9\xff.nii.gz"))
    os.rename(tmp_path / "ok.mhd", os.path.join(d, b"ct_\xff.mhd"))  # detached header
    write_series(ct, tmp_path / "series", shuffle_seed=2)
    os.rename(tmp_path / "series", os.path.join(d, b"series_\xff"))
    code = (
        "import os, numpy as np\n"
        "from client.reading.io import read_scan, read_label_map\n"
        f"d = {d!r}\n"
        "for name in (b'ct_\\xe9\\xff.nii.gz', b'ct_\\xff.mhd', b'series_\\xff'):\n"
        "    s = read_scan(os.fsdecode(os.path.join(d, name)))\n"
        "    print(name, s.shape, s.source.encode())\n"
        "lab = read_label_map(os.fsdecode(os.path.join(d, b'ct_\\xe9\\xff.nii.gz')), s,"
        " {'liver': 40, 'spleen': -100})\n"
        "print('labels', int((lab == 1).sum()))\n"
    )
    r = _run_isolated(code)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    assert r.stdout.count("(12, 32, 32)") == 3
    assert "ct_\\\\xe9\\\\xff.nii.gz" in r.stdout  # source is printable text
    assert f"labels {int((ct.array == 40).sum())}" in r.stdout


def test_non_utf8_name_with_a_defect_is_a_clear_error(corpus):
    case = next(c for c in corpus if "\\x" in show(c.path))
    code = (
        "import os\nfrom client.reading.io import read_scan\nfrom client.core.errors import ScanReadError\n"
        f"try:\n    read_scan(os.fsdecode({os.fsencode(case.path)!r}))\n"
        "except ScanReadError as e:\n    print('ERR', e)\n"
    )
    r = _run_isolated(code)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    assert __import__("re").search(case.match, r.stdout), r.stdout


def test_permission_denied_says_so(tmp_path):
    p = _write(phantom().to_sitk(), tmp_path / "locked.nii.gz")
    os.chmod(p, 0)
    os.chmod(tmp_path, 0o755)
    code = (
        "from client.reading.io import read_scan\nfrom client.core.errors import ScanReadError\n"
        f"try:\n    read_scan({str(p)!r})\n"
        "except ScanReadError as e:\n    print('ERR', e)\n"
    )
    r = _run_isolated(code, obey_permissions=True)
    assert f"ERR {p}: permission denied: the file cannot be read by this user" in r.stdout, (
        r.stdout,
        r.stderr[-1000:],
    )


def test_folder_instead_of_label_map_prints_nothing(tmp_path):
    """ITK probing every format printed 26 lines of HDF5 diagnostics; nothing reaches stderr now."""
    (tmp_path / "case.nii.gz").mkdir()
    (tmp_path / "odd.h5.nii.gz").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 600)
    code = (
        "from client.reading.io import read_label_map, read_image_info\n"
        "from client.core.errors import ScanReadError\n"
        "from tests.test_bad_inputs import phantom\n"
        f"for p in ({str(tmp_path / 'case.nii.gz')!r}, {str(tmp_path / 'odd.h5.nii.gz')!r}):\n"
        "    for read in (lambda: read_label_map(p, phantom()), lambda: read_image_info(p)):\n"
        "        try:\n            read()\n"
        "        except ScanReadError as e:\n            print('ERR', e)\n"
    )
    r = _run_isolated(code)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert r.stdout.count("is a folder, expected a label map") == 2
    assert r.stdout.count("odd.h5.nii.gz: named .nii.gz but not gzip-compressed") == 2


def test_image_info_agrees_with_simpleitk(shared_data):
    from client.reading.io import read_image_info

    p = shared_data / "totalseg_example" / "labels.nii.gz"
    info = read_image_info(p)
    r = sitk.ImageFileReader()
    r.SetFileName(str(p))
    r.ReadImageInformation()
    assert info["size"] == r.GetSize() and info["dimension"] == 3
    assert np.allclose(info["direction"], r.GetDirection())
    assert np.allclose(info["origin"], r.GetOrigin())


def test_lying_header_is_refused_before_any_allocation(tmp_path):
    """A 4 KB NRRD asking for 8 GB: refused from the header (peak memory stays small)."""
    p = _nrrd_text(_write(_img(phantom().array), tmp_path / "big.nrrd"), sizes="2000 2000 1000")
    code = (
        "import resource\nfrom client.reading.io import read_scan\nfrom client.core.errors import ScanReadError\n"
        "import SimpleITK\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        f"try:\n    read_scan({str(p)!r}, max_voxels=10**10)\n"
        "except ScanReadError as e:\n    print('ERR', e)\n"
        "print('GROWTH_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n"
    )
    r = _run_isolated(code)
    assert "truncated: header describes 8,000,000,000 bytes" in r.stdout, r.stdout + r.stderr
    growth = int(r.stdout.split("GROWTH_KB")[1])
    assert growth < 200_000, growth  # kB: far below the 8 GB the header asks for


def test_voxel_limit_is_configurable(tmp_path, monkeypatch):
    p = _write(phantom().to_sitk(), tmp_path / "ok.nii.gz")
    assert read_scan(p).shape == (12, 32, 32)
    with pytest.raises(ScanReadError, match="12,288 voxels, more than the limit of 1,000"):
        read_scan(p, max_voxels=1000)
    monkeypatch.setenv("HEPASCREEN_MAX_VOXELS", "5000")
    with pytest.raises(ScanReadError, match="more than the limit of 5,000"):
        read_scan(p)


def test_good_files_in_every_format_still_read(tmp_path, shared_data):
    ct = read_scan(shared_data / "totalseg_example" / "ct.nii.gz")
    for suffix in (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd"):
        p = tmp_path / f"ct{suffix}"
        sitk.WriteImage(ct.to_sitk(), str(p), useCompression=suffix in (".nrrd", ".mha"))
        s = read_scan(p)
        assert np.array_equal(s.array, ct.array), suffix
        assert np.allclose(s.direction, ct.direction), suffix
    f = ct.array.astype(np.float32) + 0.5  # float data without NaN passes the raw check
    sitk.WriteImage(ct.to_sitk(f), str(tmp_path / "float.nii.gz"))
    assert np.allclose(read_scan(tmp_path / "float.nii.gz").array, f)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float_nifti_voxels_from_the_nan_check_equal_itk(tmp_path, suffix, dtype):
    """Float NIfTI voxels come from the NaN check's own decompression (read once):
    identical to SimpleITK's reading, scl_slope/scl_inter included, geometry from ITK."""
    from client.reading.io import read_itk_checked

    ct = phantom()
    a = (ct.array.astype(np.float64) + 0.25).astype(dtype)
    img = ct.to_sitk(a)
    img.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))
    base = tmp_path / "base.nii"
    sitk.WriteImage(img, str(base))
    raw = bytearray(base.read_bytes())
    _patch(raw, 112, "2f", 2.0, -1024.0)
    p = tmp_path / f"scaled{suffix}"
    p.write_bytes(gzip.compress(bytes(raw)) if suffix.endswith("gz") else bytes(raw))
    ours = read_itk_checked(p)
    ref = sitk.ReadImage(str(p))
    assert np.array_equal(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(ref))
    assert np.allclose(sitk.GetArrayFromImage(ours), a.astype(np.float64) * 2 - 1024)
    assert ours.GetDirection() == ref.GetDirection() and ours.GetSpacing() == ref.GetSpacing()
    assert ours.GetOrigin() == ref.GetOrigin()


# --- end to end: the corpus through the batch CLI ---------------------------------------------
# Kinds whose batch-level handling lives outside the reader (discovery, the mask-folder
# segmenter): known gaps until those parts change; listed so a fix shows up here.
KNOWN_BATCH_GAPS: dict[str, str] = {}  # none left


def _batch(args, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "client.batch", *map(str, args), "-o", str(out), "--quiet"],
        cwd=ROOT,
        capture_output=True,
        encoding="utf-8",
        timeout=600,
    )


def _judge(cases, out: Path, r) -> tuple[dict, list]:
    """Per kind: 'clear' (error row naming the file and the defect), 'listed' (a skip
    with a reason in run.json), else what went wrong."""
    import csv
    import json
    import re

    assert r.returncode in (0, 1) and "Traceback" not in r.stderr, r.stderr[-3000:]
    with open(out / "results.csv", newline="", encoding="utf-8", errors="replace") as fh:
        rows = list(csv.DictReader(fh))
    run = json.loads((out / "run.json").read_text(encoding="utf-8"))
    assert run["status"] == "finished", run.get("status")
    listed = {
        str(x.get("path")): x.get("reason")
        for k in ("skipped_series", "ignored", "missing_inputs")
        for x in run.get(k) or []
        if isinstance(x, dict)
    }
    verdict, graded = {}, []
    for c in cases:
        name = show(c.path)
        if c.labels:  # the row is the scan's (case_id = the label map's stem)
            stem = c.path.name[: -len(".nii.gz")]
            row = next((x for x in rows if x["case_id"] == stem), None)
        else:
            row = next((x for x in rows if x.get("source") == name), None)
        if row is None and c.path.parent.name == "single_file":
            row = next((x for x in rows if x.get("source") == show(c.path.parent)), None)
        if row is None:
            hit = any(p == name or p.startswith(name + "/") for p, why in listed.items() if why)
            verdict[c.kind] = "listed" if hit else "silent skip"
        elif c.accepted:
            verdict[c.kind] = "clear"  # read as it should be (what happens next is not ours)
        elif row["status"] != "error":
            graded.append(f"{c.kind}: {row['status']} {row.get('grade')}")
            verdict[c.kind] = "graded"
        elif re.search(c.match, row["error"]) and (
            name in row["error"] or row["source"] in row["error"]
        ):
            verdict[c.kind] = "clear"
        else:
            verdict[c.kind] = f"unclear: {row['error'][:200]}"
    return verdict, graded


@pytest.mark.slow
def test_corpus_through_the_batch_gives_a_row_or_a_listed_skip_for_every_kind(
    tmp_path, shared_data
):
    """Scans: the whole corpus folder as one INPUT (with --masks pointing at an empty folder
    so no server is needed; bad scans fail at reading, before any mask is looked up).
    Label maps: each bad map beside a good scan, through --masks."""
    import re

    root = tmp_path / "in"
    cases = build_corpus(root, shared_data)
    labels_src = tmp_path / "labels_src"
    shutil.move(str(root / "labels"), labels_src)
    scans = [c for c in cases if not c.labels]
    empty = tmp_path / "no_masks"
    empty.mkdir()
    extra = [c.path for c in scans if root not in c.path.parents]
    r = _batch([root, *extra, "--masks", empty], tmp_path / "out_scans")
    verdict, graded = _judge(scans, tmp_path / "out_scans", r)

    mscans, masks = tmp_path / "mask_scans", tmp_path / "masks"
    mscans.mkdir()
    masks.mkdir()
    ct = phantom()
    lab_cases = []
    for c in (c for c in cases if c.labels):
        stem = re.sub(r"\.(nii\.gz|mha)$", "", c.path.name)
        _write(ct.to_sitk(), mscans / f"{stem}.nii.gz")
        dst = masks / f"{stem}.nii.gz"
        src = labels_src / c.path.relative_to(root / "labels")
        if src.is_dir():
            dst.mkdir()
        elif src.name.endswith(".mha"):  # --masks takes NIfTI: a sheared NIfTI sform instead
            lab = np.zeros(ct.shape, np.uint8)
            lab[4:8, 8:16, 8:16] = 1
            b = _nifti_bytes(lab, spacing=(1.5, 1.5, 2.0))
            dst.write_bytes(gzip.compress(bytes(_patch(b, 280, "4f", 1.5, 0.75, 0.0, 0.0))))
        elif src.exists():
            shutil.copy(src, dst)
        match = c.match.replace("got a 2D", "got (a )?2D")
        if src.is_dir():  # the mask-folder segmenter words it itself
            match = r"(is|found) a folder"
        lab_cases.append(Case(c.kind, dst, match, True))
    r2 = _batch([mscans, "--masks", masks], tmp_path / "out_masks")
    v2, g2 = _judge(lab_cases, tmp_path / "out_masks", r2)
    verdict.update(v2)
    assert not graded + g2, graded + g2  # no bad input is ever graded
    bad = {k: v for k, v in verdict.items() if v not in ("clear", "listed")}
    unexpected = {k: v for k, v in bad.items() if k not in KNOWN_BATCH_GAPS}
    print(f"{len(verdict)} kinds; not clear: {bad}")
    assert not unexpected, unexpected
    assert len(verdict) >= 40
