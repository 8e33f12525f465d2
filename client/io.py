"""Reading scans and label maps, writing label maps.

``read_scan(path)`` accepts NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``,
``.nhdr``), MetaImage (``.mha``, ``.mhd``), a DICOM series or study folder
(files with any or no extension) and a single DICOM file (refused unless it is
a multi-slice volume, with a message saying what it is). It returns a
:class:`client.scan.ScanVolume` in the axis convention of :mod:`client.scan`,
with rescale slope/intercept applied, integer HU kept integer, identifier-free
metadata and ``metadata["notes"]`` listing anything done to the data (gantry
tilt corrected, spacing regularised, first volume of a 4D image taken).

Validation (each a :class:`ScanReadError` naming the file, what was expected and
what was found): not an image, truncated or corrupt, 2D, non-CT modality,
implausible HU range, absurd spacing, empty series, undecodable pixel data.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from . import _dicom
from ._atomic import atomic_path
from .contract import LABEL_LIVER, LABEL_MAPS, LABEL_SPLEEN
from .errors import ScanReadError
from .scan import ScanVolume

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
LABEL_WRITE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")
MIN_SLICES = 8  # a CT volume for screening has at least this many slices
MIN_INPLANE = 16  # and at least this many rows and columns
SPACING_RANGE_MM = (0.05, 25.0)


def image_suffix(path: str | Path) -> str | None:
    """The image-format suffix of ``path`` (``.nii.gz`` counts as one), or None."""
    name = Path(path).name.lower()
    for s in IMAGE_SUFFIXES:
        if name.endswith(s):
            return s
    return None


def strip_image_suffix(name: str) -> str:
    s = image_suffix(name)
    return name[: -len(s)] if s else name


# --- validation ------------------------------------------------------------------
def check_hu_range(array: np.ndarray, source: str) -> None:
    """Refuse volumes whose values cannot be CT in Hounsfield units.

    CT in HU has air or fat (below -50 HU) somewhere in any abdominal field of
    view, and almost nothing above 4000 HU (metal is clipped near 3071 by most
    scanners). Raw detector values stored without the rescale intercept (0..4095,
    air at 0) and MR intensities fail this.
    """
    a = np.asarray(array)
    step = max(1, a.size // 2_000_000)
    sample = a.reshape(-1)[::step].astype(np.float32)
    if not np.all(np.isfinite(sample)):
        raise ScanReadError(f"{source}: voxel values include NaN or infinity")
    lo, hi = np.percentile(sample, [0.5, 99.5])
    mn = float(sample.min())
    if mn > -50.0 or hi > 4000.0 or lo < -3100.0:
        raise ScanReadError(
            f"{source}: implausible HU range: expected CT in Hounsfield units (air about -1000, "
            f"soft tissue 0 to 100, minimum below -50), got minimum {mn:.0f}, "
            f"0.5-99.5 percentiles {lo:.0f} to {hi:.0f} (not CT, or rescale slope/intercept missing?)"
        )


def check_geometry(shape, spacing, source: str, min_slices: int = MIN_SLICES) -> None:
    if len(shape) != 3:
        raise ScanReadError(
            f"{source}: expected a 3D volume, got {len(shape)}D image {tuple(shape)}"
        )
    if shape[0] < min_slices:
        kind = "2D image" if shape[0] == 1 else f"only {shape[0]} slices"
        raise ScanReadError(
            f"{source}: expected a volume of at least {min_slices} slices, got {kind} (shape {tuple(shape)})"
        )
    if min(shape[1:]) < MIN_INPLANE:
        raise ScanReadError(
            f"{source}: expected at least {MIN_INPLANE} x {MIN_INPLANE} pixels per slice, got {tuple(shape[1:])}"
        )
    lo, hi = SPACING_RANGE_MM
    if not all(np.isfinite(s) and lo <= s <= hi for s in spacing):
        raise ScanReadError(
            f"{source}: absurd voxel spacing {tuple(round(float(s), 4) for s in spacing)} mm "
            f"(z, y, x); expected each between {lo} and {hi} mm"
        )


# --- reading ---------------------------------------------------------------------
def _nifti_expected_bytes(head: bytes, path: Path) -> int:
    """``vox_offset + voxels * bitpix / 8`` from a NIfTI-1/2 header."""
    import struct

    if len(head) < 348:
        raise ScanReadError(f"{path}: truncated: {len(head)} bytes, shorter than a NIfTI header")
    for endian in "<>":
        size = struct.unpack(endian + "i", head[:4])[0]
        if size == 348:  # NIfTI-1
            dims = struct.unpack(endian + "8h", head[40:56])
            bitpix = struct.unpack(endian + "h", head[72:74])[0]
            offset = int(struct.unpack(endian + "f", head[108:112])[0])
            break
        if size == 540 and len(head) >= 540:  # NIfTI-2
            dims = struct.unpack(endian + "8q", head[16:80])
            bitpix = struct.unpack(endian + "h", head[14:16])[0]
            offset = int(struct.unpack(endian + "q", head[168:176])[0])
            break
    else:
        raise ScanReadError(f"{path}: not a NIfTI file (header size field is not 348 or 540)")
    n = int(np.prod([max(1, int(d)) for d in dims[1 : 1 + max(1, min(7, int(dims[0])))]]))
    return offset + n * max(1, bitpix) // 8


def check_nifti_complete(path: Path) -> None:
    """Refuse a NIfTI-1/2 file shorter than its header says (ITK pads such files with zeros).

    ``.nii``: the file size is compared with ``vox_offset + voxels * bitpix / 8``.
    ``.nii.gz``: fast path, the gzip trailer's ISIZE (uncompressed size mod 2^32)
    must equal that size (a file cut short ends in compressed data, which matches
    by chance with probability 2^-32); otherwise the stream is decompressed to the
    end, catching a cut stream or CRC error (and accepting multi-member files).
    """
    import gzip
    import struct
    import zlib

    if not path.name.lower().endswith(".gz"):
        with open(path, "rb") as fh:
            expected = _nifti_expected_bytes(fh.read(544), path)
        total = path.stat().st_size
    else:
        try:
            with gzip.open(path, "rb") as fh:
                expected = _nifti_expected_bytes(fh.read(544), path)
            with open(path, "rb") as fh:
                fh.seek(-4, os.SEEK_END)
                isize = struct.unpack("<I", fh.read(4))[0]
        except (EOFError, OSError, zlib.error) as exc:
            raise ScanReadError(f"{path}: truncated or corrupt compressed file ({exc})") from exc
        if isize == expected % (1 << 32):
            return
        total = 0
        try:
            with gzip.open(path, "rb") as fh:
                while chunk := fh.read(1 << 22):
                    total += len(chunk)
        except (EOFError, OSError, zlib.error) as exc:
            raise ScanReadError(f"{path}: truncated or corrupt compressed file ({exc})") from exc
    if total < expected:
        raise ScanReadError(
            f"{path}: truncated: header describes {expected} bytes of image, file holds {total}"
        )


def _read_itk_file(path: Path, min_slices: int) -> ScanVolume:
    import SimpleITK as sitk

    sitk.ProcessObject_SetGlobalWarningDisplay(False)  # ITK prints to the console otherwise

    if image_suffix(path) in (".nii", ".nii.gz"):
        check_nifti_complete(path)
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        msg = str(exc).strip().splitlines()
        detail = next((m for m in reversed(msg) if m.strip()), "unreadable")[:300]
        raise ScanReadError(
            f"{path}: truncated, corrupt or not an image ({detail.strip()})"
        ) from exc
    notes: list[str] = []
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise ScanReadError(
            f"{path}: expected one grey value per voxel, got {img.GetNumberOfComponentsPerPixel()} components"
        )
    dim = img.GetDimension()
    if dim == 4:
        size = img.GetSize()
        if size[3] > 1:
            notes.append(f"4d_first_volume_only (4th dimension has {size[3]} volumes)")
        img = sitk.Extract(
            img, (*size[:3], 0), (0, 0, 0, 0), sitk.ExtractImageFilter.DIRECTIONCOLLAPSETOSUBMATRIX
        )
    elif dim != 3:
        raise ScanReadError(
            f"{path}: expected a 3D volume, got a {dim}D image of size {img.GetSize()}"
        )
    array = sitk.GetArrayFromImage(img)
    spacing = tuple(img.GetSpacing())[::-1]
    check_geometry(array.shape, spacing, str(path), min_slices)
    if (
        array.dtype.kind == "f"
        and np.array_equal(array, np.round(array))
        and np.abs(array).max() < 32768
    ):
        array = array.astype(np.int16)  # integer HU stored as float: keep integers
    if array.dtype.kind in "iu" and array.size and array.min() >= -32768 and array.max() <= 32767:
        array = array.astype(np.int16, copy=False)  # int32 NIfTI HU: half the memory
    meta = {"format": image_suffix(path).lstrip(".")}
    for key, tag in (("modality", "modality"), ("intent", "intent_name")):
        if img.HasMetaDataKey(tag) and img.GetMetaData(tag).strip():
            meta[key] = img.GetMetaData(tag).strip()
    meta["notes"] = notes
    return ScanVolume(
        array=array,
        spacing=spacing,
        origin=img.GetOrigin(),
        direction=np.asarray(img.GetDirection()).reshape(3, 3),
        metadata=meta,
        source=str(path),
    )


def _read_dicom(
    path: Path, min_slices: int, require_ct: bool, series_uid: str | None = None, files=None
) -> ScanVolume:
    if path.is_dir():
        groups, skipped = _dicom.scan_folder(path, files)
        if not groups:
            raise ScanReadError(
                f"{path}: empty series: no DICOM files found ({skipped} non-DICOM files skipped)"
            )
    else:
        h = _dicom.read_header(path)
        if h is None:
            raise ScanReadError(f"{path}: not an image: neither NIfTI/NRRD/MHA nor DICOM")
        if h.has_pixels and _dicom.SOP_NON_IMAGE.get(h.sop_class) is None:
            _dicom.check_pixel_data(h)
        groups, skipped = {h.series_uid: [h]}, 0
    hs = _dicom.choose_series(groups, path, min_slices, require_ct, series_uid)
    vol, spacing, origin, direction, meta, notes = _dicom.load_series(hs, path)
    check_geometry(vol.shape, spacing, str(path), min_slices)
    meta["format"] = "dicom"
    meta["n_series_in_folder"] = len(groups)
    meta["notes"] = notes
    return ScanVolume(vol, spacing, origin, direction, metadata=meta, source=str(path))


def read_scan(
    path: str | Path,
    *,
    min_slices: int = MIN_SLICES,
    require_ct: bool = True,
    check_hu: bool = True,
    series_uid: str | None = None,
    files=None,
) -> ScanVolume:
    """Read one CT volume (file or DICOM folder) into a :class:`ScanVolume`.

    Parameters
    ----------
    path : str or Path
        Image file or DICOM folder.
    min_slices : int
        Fewer slices than this is refused ("2D image" / "too few slices").
    require_ct : bool
        Refuse DICOM whose Modality is not CT (MR, SEG, RTSTRUCT, ...).
    check_hu : bool
        Refuse values that cannot be HU (see :func:`check_hu_range`).
    series_uid : str, optional
        For a DICOM folder holding several series: read this one (else the
        series-choice rule of :mod:`client._dicom` picks the axial CT volume).
    files : sequence of paths, optional
        For a DICOM folder: read only these files (batch discovery already knows
        which files hold the series, so a study folder is not walked again).
    """
    path = Path(path)
    if not path.exists():
        raise ScanReadError(f"{path}: no such file or folder")
    if path.is_file() and path.stat().st_size == 0:
        raise ScanReadError(f"{path}: empty file (0 bytes)")
    if path.is_file() and image_suffix(path):
        scan = _read_itk_file(path, min_slices)
        if require_ct and scan.metadata.get("modality", "CT").upper() not in ("CT", ""):
            raise ScanReadError(f"{path}: expected modality CT, got {scan.metadata['modality']}")
    else:
        scan = _read_dicom(path, min_slices, require_ct, series_uid, files)
    if check_hu:
        check_hu_range(scan.array, str(path))
    return scan


def read_label_map(
    path: str | Path, like: ScanVolume, label_map: str | dict = "default"
) -> np.ndarray:
    """Read a label map for ``like`` and return uint8 labels (1 liver, 2 spleen) on its grid.

    ``label_map`` names an entry of :data:`client.contract.LABEL_MAPS` or is a dict
    ``{"liver": value, "spleen": value}``. A map on the same grid is used as is; a
    map with the same physical extent but another grid (e.g. saved in another
    orientation) is resampled onto the scan by nearest neighbour.
    """
    import SimpleITK as sitk

    path = Path(path)
    values = LABEL_MAPS[label_map] if isinstance(label_map, str) else dict(label_map)
    if not path.exists():
        raise ScanReadError(f"{path}: label map not found")
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise ScanReadError(
            f"{path}: unreadable label map ({str(exc).strip().splitlines()[-1][:200]})"
        ) from exc
    if img.GetDimension() != 3:
        raise ScanReadError(f"{path}: expected a 3D label map, got {img.GetDimension()}D")
    ref = like.to_sitk(np.zeros(like.shape, np.uint8))
    same = (
        tuple(img.GetSize()) == tuple(ref.GetSize())
        and np.allclose(img.GetSpacing(), ref.GetSpacing(), rtol=1e-3, atol=1e-4)
        and np.allclose(img.GetOrigin(), ref.GetOrigin(), atol=1e-2)
        and np.allclose(img.GetDirection(), ref.GetDirection(), atol=1e-3)
    )
    if not same:
        img = sitk.Resample(img, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    raw = sitk.GetArrayFromImage(img)
    out = np.zeros(raw.shape, np.uint8)
    out[raw == values["liver"]] = LABEL_LIVER
    out[raw == values["spleen"]] = LABEL_SPLEEN
    return out


def write_label_map(labels: np.ndarray, like: ScanVolume, path: str | Path) -> Path:
    """Write ``labels`` ([z, y, x] on ``like``'s grid) with ``like``'s geometry, atomically.

    The file appears complete or not at all (temporary file in the same folder,
    then ``os.replace``), so an interrupted batch never leaves a half-written mask.
    """
    import SimpleITK as sitk

    path = Path(path)
    suffix = image_suffix(path)
    if suffix not in LABEL_WRITE_SUFFIXES:
        raise ValueError(f"{path}: label maps are written as {', '.join(LABEL_WRITE_SUFFIXES)}")
    labels = np.asarray(labels)
    if labels.shape != like.shape:
        raise ValueError(f"{path}: labels {labels.shape} do not match the scan {like.shape}")
    img = like.to_sitk(labels.astype(np.uint8))
    with atomic_path(path, suffix) as tmp:
        sitk.WriteImage(img, tmp, useCompression=True)
    return path
