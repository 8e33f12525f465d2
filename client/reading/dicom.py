"""DICOM folders as archives hold them: grouping, series choice, geometry checks.

Series choice in a study folder (documented rule)
------------------------------------------------
1. Every file below the folder is read header-only (pydicom, any or no extension);
   files that are not DICOM (``DIRFILE``, ``DICOMDIR``, notes) are skipped.
2. Files are grouped by SeriesInstanceUID. Dropped: non-image objects (SEG,
   RTSTRUCT, SR/dose reports, presentation states: no pixel data or no image
   geometry), secondary captures (dose screens), localizers/scouts
   (ImageType contains LOCALIZER).
3. Among the CT series left with at least ``min_slices`` slices, axial series
   (slice normal within ~37 degrees of head-feet, so tilted axials count) come
   before coronal/sagittal reformats; then the one with the most slices wins;
   ties prefer a soft-tissue kernel over bone/lung kernels, then thinner slices,
   then the lower SeriesNumber.

Geometry
--------
Slices are sorted by their position along the slice normal (row x column
direction cosines), never by file name or InstanceNumber. Refused with a clear
error: mixed orientations, two slices at the same position (not a volume: several
acquisitions or echoes), fewer than ``min_slices`` slices. Gantry tilt (slice
positions drifting in-plane along the stack) is corrected by shifting every
slice in-plane onto an orthogonal grid, as dcm2niix does. Non-uniform spacing
or missing slices are resampled onto a regular grid at the median spacing by
linear interpolation along the normal when the largest gap is at most
``max_gap_factor`` times the median spacing; larger gaps are refused.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from client.core.errors import ScanReadError
from client.reading.headers import (
    check_direction,
    itk_array,
    itk_safe_path,
    max_voxels_default,
    show,
)

SOP_NON_IMAGE = {
    "1.2.840.10008.5.1.4.1.1.66.4": "DICOM SEG segmentation",
    "1.2.840.10008.5.1.4.1.1.481.3": "RT structure set",
    "1.2.840.10008.1.3.10": "DICOMDIR media directory",
    "1.2.840.10008.5.1.4.1.1.88.67": "X-ray radiation dose SR",
    "1.2.840.10008.5.1.4.1.1.11.1": "presentation state",
}
SOP_SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"
SHARP_KERNEL_HINTS = ("BONE", "LUNG", "SHARP", "B60", "B70", "B80", "YC", "YD", "D", "EDGE")
SAFE_TAGS = {
    "modality": "Modality",
    "manufacturer": "Manufacturer",
    "manufacturer_model": "ManufacturerModelName",
    "kvp": "KVP",
    "convolution_kernel": "ConvolutionKernel",
    "slice_thickness": "SliceThickness",
    "contrast_agent": "ContrastBolusAgent",
    "series_description": "SeriesDescription",
    "body_part": "BodyPartExamined",
}


@dataclass
class SliceHeader:
    path: Path
    series_uid: str
    sop_class: str
    modality: str
    image_type: tuple
    position: np.ndarray | None
    orientation: np.ndarray | None
    rows: int
    cols: int
    pixel_spacing: tuple | None
    kernel: str
    series_number: int
    frames: int
    has_pixels: bool
    ds: object = field(repr=False, default=None)
    # Study grouping and the order of series within a study (client.pipeline.study): not
    # identifiers in any output (rows carry a hash of the study UID only).
    study_uid: str = ""
    description: str = ""
    contrast_agent: str = ""


def _first(v, default=None):
    return default if v is None else v


def read_header(path: Path) -> SliceHeader | None:
    """Header of one file, or None when it is not a DICOM file."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True, force=False)
    except (InvalidDicomError, OSError, ValueError, TypeError, AttributeError, KeyError, EOFError):
        try:  # files without the 128-byte preamble / file meta (e.g. no_meta.dcm)
            ds = pydicom.dcmread(str(path), stop_before_pixels=True, force=True)
            if "SOPClassUID" not in ds and "Modality" not in ds:
                return None
        except Exception:
            return None
    except Exception:
        return None
    try:
        sop = str(ds.get("SOPClassUID", ""))
        ipp = ds.get("ImagePositionPatient")
        iop = ds.get("ImageOrientationPatient")
        ps = ds.get("PixelSpacing")
        try:
            series_number = int(ds.get("SeriesNumber", 0) or 0)
        except (TypeError, ValueError):
            series_number = 0
        return SliceHeader(
            path=path,
            series_uid=str(ds.get("SeriesInstanceUID", "")),
            sop_class=sop,
            modality=str(ds.get("Modality", "")),
            image_type=tuple(str(x).upper() for x in (ds.get("ImageType") or ())),
            position=np.array([float(v) for v in ipp])
            if ipp is not None and len(ipp) == 3
            else None,
            orientation=np.array([float(v) for v in iop])
            if iop is not None and len(iop) == 6
            else None,
            rows=int(ds.get("Rows", 0) or 0),
            cols=int(ds.get("Columns", 0) or 0),
            pixel_spacing=tuple(float(v) for v in ps) if ps is not None and len(ps) == 2 else None,
            kernel=str(ds.get("ConvolutionKernel", "") or ""),
            series_number=series_number,
            frames=int(ds.get("NumberOfFrames", 1) or 1),
            has_pixels=bool(ds.get("Rows")) and bool(ds.get("Columns")),
            ds=ds,
            study_uid=str(ds.get("StudyInstanceUID", "") or ""),
            description=str(ds.get("SeriesDescription", "") or ""),
            contrast_agent=str(ds.get("ContrastBolusAgent", "") or ""),
        )
    except Exception:
        return None


def _walk_files(folder: Path):
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            yield Path(root) / name


def scan_folder(folder: Path, files=None) -> tuple[dict[str, list[SliceHeader]], int]:
    """Headers of the DICOM files below ``folder`` (or of ``files`` only) grouped by series.

    Also returns the count of skipped (non-DICOM) files.
    """
    groups: dict[str, list[SliceHeader]] = {}
    skipped = 0
    for path in files if files is not None else _walk_files(folder):
        h = read_header(Path(path))
        if h is None:
            skipped += 1
            continue
        groups.setdefault(h.series_uid, []).append(h)
    return groups, skipped


def _why_not_volume_series(hs: list[SliceHeader]) -> str | None:
    h = hs[0]
    if h.sop_class in SOP_NON_IMAGE:
        return SOP_NON_IMAGE[h.sop_class]
    if h.sop_class.startswith(SOP_SECONDARY_CAPTURE_PREFIX):
        return "secondary capture (screenshot / dose screen)"
    if any("LOCALIZER" in t or "SCOUT" in t for t in h.image_type):
        return "localizer / scout image"
    if not h.has_pixels:
        return "no pixel data"
    if any(x.position is None or x.orientation is None for x in hs):
        return "no image position/orientation (not a cross-sectional image)"
    return None


def _is_axial(h: SliceHeader) -> bool:
    """Slice normal within ~37 degrees of the patient's head-feet axis (gantry tilt included)."""
    if h.orientation is None:
        return False
    normal = np.cross(h.orientation[:3], h.orientation[3:])
    return bool(abs(normal[2]) > 0.8 * np.linalg.norm(normal))


def _is_sharp(kernel: str) -> bool:
    k = kernel.upper()
    return any(h in k for h in ("BONE", "LUNG", "SHARP", "EDGE", "B60", "B70", "B80"))


def why_not_volume(hs: list[SliceHeader]) -> str | None:
    """Why a series is not an image volume (scout, SEG, dose screen, ...), or None."""
    return _why_not_volume_series(hs)


def choose_series(
    groups: dict[str, list[SliceHeader]],
    folder: Path,
    min_slices: int,
    require_ct: bool,
    series_uid: str | None = None,
) -> list[SliceHeader]:
    """Pick the axial CT volume series from a study (rule in the module docstring)."""
    if series_uid is not None:
        if series_uid not in groups:
            raise ScanReadError(f"{show(folder)}: series {series_uid} not found")
        groups = {series_uid: groups[series_uid]}
    if not groups:
        raise ScanReadError(f"{show(folder)}: no DICOM files found")
    candidates, rejected = [], []
    for uid, hs in groups.items():
        why = _why_not_volume_series(hs)
        if why:
            rejected.append(f"{show(hs[0].path.parent.name) or uid}: {why}")
            continue
        candidates.append(hs)
    if not candidates:
        raise ScanReadError(
            f"{show(folder)}: no image volume among {len(groups)} DICOM series ({'; '.join(rejected)})"
        )
    if require_ct:
        ct = [hs for hs in candidates if hs[0].modality == "CT"]
        if not ct:
            mods = sorted({hs[0].modality or "?" for hs in candidates})
            raise ScanReadError(
                f"{show(folder)}: expected a CT series, got modality {', '.join(mods)}"
            )
        candidates = ct
    n_slices = [sum(h.frames for h in hs) for hs in candidates]
    if max(n_slices) < min_slices:
        got = "a single 2D slice" if max(n_slices) == 1 else f"at most {max(n_slices)} slices"
        raise ScanReadError(
            f"{show(folder)}: expected a volume of at least {min_slices} slices, got {got}"
        )
    candidates = [hs for hs, n in zip(candidates, n_slices) if n >= min_slices]

    def rank(hs):
        thick = float(getattr(hs[0].ds, "SliceThickness", 0) or 0)
        return (not _is_axial(hs[0]), -len(hs), _is_sharp(hs[0].kernel), thick, hs[0].series_number)

    return sorted(candidates, key=rank)[0]


def read_slice(path: Path):
    """One DICOM file through GDCM (chosen explicitly: no probing of other formats),
    under an ASCII alias when its name is not valid UTF-8 (SimpleITK aborts on those)."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetImageIO("GDCMImageIO")
    with itk_safe_path(Path(path), ".dcm") as name:
        reader.SetFileName(name)
        return reader.Execute()


_UNCOMPRESSED = ("", "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2")
# Little-endian uncompressed syntaxes whose pixels are read straight from the file.
_RAW_SYNTAXES = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")
# RLE Lossless: pydicom's own decoder (no plugin needed) measured 3x faster than GDCM's
# on 512 x 512 CT slices (benchmarks/bench_dicom.py); JPEG family stays with GDCM.
_RLE_LOSSLESS = "1.2.840.10008.1.2.5"
_PIXEL_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010) little endian


def raw_pixel_layout(h: SliceHeader) -> dict | None:
    """How to read ``h``'s pixels straight from the file, or None (GDCM decodes it).

    Only the plain case is read directly: one frame, little-endian uncompressed,
    16 bits allocated, one sample, MONOCHROME2, high bit = bits stored - 1, no
    modality LUT, integral rescale slope and intercept. Everything else (compressed,
    big endian, 8/32-bit, MONOCHROME1, colour, fractional rescale) stays with GDCM.
    """
    ds = h.ds
    if ds is None or h.frames != 1 or not h.has_pixels:
        return None
    syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    if syntax not in _RAW_SYNTAXES and syntax != _RLE_LOSSLESS:
        return None
    try:
        if (
            int(ds.get("BitsAllocated", 0) or 0) != 16
            or int(ds.get("SamplesPerPixel", 1) or 1) != 1
            or str(ds.get("PhotometricInterpretation", "") or "").strip() != "MONOCHROME2"
            or "ModalityLUTSequence" in ds
        ):
            return None
        bits = int(ds.get("BitsStored", 16) or 16)
        high = int(ds.get("HighBit", bits - 1))
        signed = int(ds.get("PixelRepresentation", 0) or 0)
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
    except (TypeError, ValueError):
        return None
    if not (1 <= bits <= 16 and high == bits - 1 and signed in (0, 1)):
        return None
    if not (slope.is_integer() and intercept.is_integer()) or slope == 0:
        return None
    return {"signed": bool(signed), "bits": bits, "slope": int(slope), "intercept": int(intercept),
            "rle": syntax == _RLE_LOSSLESS}  # fmt: skip


def read_raw_pixels(h: SliceHeader, layout: dict) -> np.ndarray | None:
    """``h``'s pixels in HU (int32 [rows, cols]) read from the file, or None to use GDCM.

    The pixel element must close the file (its header, explicit or implicit VR, right
    before the last ``rows x cols x 2`` bytes, with that length): anything else (trailing
    padding, an odd layout) is left to GDCM. Stored values outside ``bits`` (overlay
    bits, a sign not extended) also go to GDCM, so whatever is returned is what GDCM
    returns: the stored value times the slope plus the intercept.
    """
    if layout.get("rle"):
        raw = _rle_stored(h)
        if raw is None:
            return None
        return _to_hu(raw, layout)
    n = h.rows * h.cols
    nbytes = 2 * n
    try:
        with open(h.path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            if size < nbytes + 12:
                return None
            f.seek(size - nbytes - 12)
            head = f.read(12)
            data = f.read(nbytes)
    except OSError:
        return None
    length = int(nbytes).to_bytes(4, "little")
    explicit = head[:4] == _PIXEL_TAG and head[4:6] in (b"OW", b"OB") and head[6:8] == b"\0\0"
    if not ((explicit and head[8:] == length) or (head[4:8] == _PIXEL_TAG and head[8:] == length)):
        return None
    if len(data) != nbytes:
        return None
    raw = np.frombuffer(data, dtype="<i2" if layout["signed"] else "<u2").reshape(h.rows, h.cols)
    return _to_hu(raw, layout)


def _rle_stored(h: SliceHeader) -> np.ndarray | None:
    """Stored values of an RLE Lossless slice decoded by pydicom, or None (GDCM then)."""
    import pydicom

    try:
        ds = pydicom.dcmread(str(h.path))
        a = ds.pixel_array
    except Exception:  # noqa: BLE001 - any decoder complaint: GDCM decides and words the error
        return None
    if a.shape != (h.rows, h.cols) or a.dtype.itemsize != 2:
        return None
    return a


def _to_hu(raw: np.ndarray, layout: dict) -> np.ndarray | None:
    """Stored 16-bit values -> HU as GDCM computes them, or None where GDCM would differ."""
    bits, slope, intercept = layout["bits"], layout["slope"], layout["intercept"]
    if bits == 16 and layout["signed"] and slope == 1 and intercept == 0:
        return raw  # int16 HU as stored (read-only view of the bytes; the volume copies it)
    vmin, vmax = int(raw.min()), int(raw.max())
    if bits < 16:  # GDCM masks bits above the stored ones; accept only data that has none
        signed = layout["signed"]
        lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
        if vmin < lo or vmax > hi:
            return None
    fits = -32768 <= intercept <= 32767 and vmax <= 32767
    if slope == 1 and fits and vmin + intercept >= -32768 and vmax + intercept <= 32767:
        out = raw.astype(np.int16)  # every stored value and every result fits: no int32
        if intercept:
            out += np.int16(intercept)
        return out
    out = raw.astype(np.int32)
    if slope != 1:
        out *= slope
    if intercept:
        out += intercept
    return out


def _uncompressed_pixel_bytes(h: SliceHeader) -> int | None:
    """Pixel bytes an uncompressed slice must hold (None when compressed or unknown)."""
    ds = h.ds
    if ds is None:
        return None
    syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    if syntax not in _UNCOMPRESSED:
        return None
    try:
        bits = int(ds.get("BitsAllocated", 16) or 16)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
    except (TypeError, ValueError):
        return None
    return h.rows * h.cols * max(1, h.frames) * samples * max(1, bits // 8)


def check_pixel_data(h: SliceHeader) -> None:
    """Refuse a file whose pixel data is missing, truncated or cannot be decoded."""
    import pydicom

    try:
        ds = pydicom.dcmread(str(h.path), force=True)
        raw = ds.get("PixelData")
    except Exception as exc:  # noqa: BLE001 - any parse failure means a corrupt file
        raise ScanReadError(f"{show(h.path)}: corrupt or truncated DICOM file ({exc})") from exc
    if raw is None:
        raise ScanReadError(f"{show(h.path)}: no pixel data (expected an image)")
    syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    if syntax in ("", "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"):
        expected = (
            h.rows
            * h.cols
            * h.frames
            * int(ds.get("SamplesPerPixel", 1) or 1)
            * (int(ds.get("BitsAllocated", 16) or 16) // 8)
        )
        if len(raw) < expected:
            raise ScanReadError(
                f"{show(h.path)}: truncated pixel data: expected {expected} bytes for "
                f"{h.rows} x {h.cols} x {h.frames} frames, got {len(raw)}"
            )
    try:
        read_slice(h.path)
    except RuntimeError as exc:
        raise ScanReadError(
            f"{show(h.path)}: cannot decode pixel data (transfer syntax {syntax or 'unknown'})"
        ) from exc


def _orientation_frame(hs: list[SliceHeader], folder: Path):
    iop = hs[0].orientation
    for h in hs[1:]:
        if np.max(np.abs(h.orientation - iop)) > 1e-3:
            raise ScanReadError(
                f"{show(folder)}: slices have mixed orientations ({iop.round(3).tolist()} vs "
                f"{h.orientation.round(3).tolist()}); expected one volume"
            )
    row, col = iop[:3], iop[3:]
    if min(np.linalg.norm(row), np.linalg.norm(col)) < 1e-6:
        raise ScanReadError(
            f"{show(folder)}: singular ImageOrientationPatient {iop.round(4).tolist()} "
            "(a zero direction vector)"
        )
    normal = np.cross(row, col)
    check_direction(np.stack([row, col, normal], axis=1), folder, "ImageOrientationPatient")
    if max(abs(np.linalg.norm(row) - 1), abs(np.linalg.norm(col) - 1)) > 1e-3:
        raise ScanReadError(
            f"{show(folder)}: ImageOrientationPatient {iop.round(4).tolist()} does not hold unit "
            "vectors (corrupt geometry)"
        )
    normal = normal / np.linalg.norm(normal)
    return row, col, normal


GDCM_THREADS = 4  # decoding threads for compressed slices (beyond 4 the gain is small)


GDCM_SERIES = True  # decode GDCM's slices with one ImageSeriesReader where it applies


def _gdcm_series(hs: list[SliceHeader]) -> list | None:
    """Slices of ``hs`` (in this order) decoded by one SimpleITK ``ImageSeriesReader``, or None.

    One reader for all slices costs what a plain series reader costs; a reader per slice
    was 1.4x that on JPEG-LS (benchmarks/bench_dicom.py). Used only where it must give
    what per-slice reading gives: every slice of one pixel layout and one rescale (the
    series reader takes the first file's pixel type for all), names ITK can open. Any
    failure returns None: the per-slice path then decodes and words the error exactly.
    """
    import SimpleITK as sitk

    from client.reading.headers import _itk_ok

    def key(h):
        ds = h.ds
        if ds is None:
            return None
        syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
        fields = ("BitsAllocated", "BitsStored", "PixelRepresentation", "SamplesPerPixel",
                  "PhotometricInterpretation", "RescaleSlope", "RescaleIntercept")  # fmt: skip
        return (syntax, h.rows, h.cols, h.frames, *(str(ds.get(f, "")) for f in fields))

    keys = {key(h) for h in hs}
    if len(keys) != 1 or None in keys or not all(_itk_ok(os.fspath(h.path)) for h in hs):
        return None
    reader = sitk.ImageSeriesReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileNames([os.fspath(h.path) for h in hs])
    try:
        a = itk_array(reader.Execute())
    except RuntimeError:
        return None
    if a.ndim != 3 or a.shape[0] != len(hs):
        return None
    return list(a)


def _gdcm_slice(h: SliceHeader) -> np.ndarray:
    """One slice decoded by GDCM, as a 2D array (errors name the file and what is wrong)."""

    try:
        img = read_slice(h.path)
    except RuntimeError:
        check_pixel_data(h)  # says "truncated pixel data: expected ... bytes" when it is
        raise ScanReadError(
            f"{show(h.path)}: corrupt DICOM slice: its pixel data cannot be decoded"
        ) from None
    a = itk_array(img)
    if a.ndim == 4:  # RGB or similar
        raise ScanReadError(
            f"{show(h.path)}: expected grey-level CT pixels, got {a.shape[-1]} channels"
        )
    return a.reshape(a.shape[-2], a.shape[-1])


def _stack_slices(slices: list) -> np.ndarray:
    """The volume of the decoded slices: float32 when any slice is float, else int16 when
    every value fits (each slice's range checked where it is still in cache, no int32
    volume in between), else int32. Same values and dtype as stacking as int32 and
    narrowing afterwards."""
    if any(s.dtype.kind == "f" for s in slices):
        return np.stack(slices).astype(np.float32)
    fits = all(
        s.dtype == np.int16 or (s.size == 0 or (int(s.min()) >= -32768 and int(s.max()) <= 32767))
        for s in slices
    )
    out = np.empty((len(slices), *slices[0].shape), np.int16 if fits else np.int32)
    for k, s in enumerate(slices):
        out[k] = s
    return out


def load_series(
    hs: list[SliceHeader],
    folder: Path,
    max_gap_factor: float = 2.5,
    max_voxels: int | None = None,
):
    """Decode, sort and regularise one series.

    Returns
    -------
    array [z, y, x] (int16 when exact, else float32), spacing (z, y, x), origin (x, y, z),
    direction (3 x 3, ITK), notes (list of str).
    """

    hs, dist, (row, col, normal) = _sorted_slices(hs, folder, max_voxels)
    vol = _decode_slices(hs)
    ps = hs[0].pixel_spacing or (1.0, 1.0)
    spacing_y, spacing_x = float(ps[0]), float(ps[1])
    notes: list[str] = []
    vol = _untilt(vol, hs, dist, (row, col, normal), (spacing_y, spacing_x), notes)
    vol, dz = _regular_spacing(vol, hs, dist, folder, max_gap_factor, notes)
    direction = np.stack([row, col, normal], axis=1)  # columns: index axes i (x), j (y), k (z)
    origin = tuple(float(v) for v in hs[0].position)
    if vol.dtype.kind == "f" and np.allclose(vol, np.round(vol)) and not notes:
        vol = vol.astype(np.int32)
    if (
        vol.dtype.kind == "i"
        and vol.dtype != np.int16
        and vol.min() >= -32768
        and vol.max() <= 32767
    ):
        vol = vol.astype(np.int16)
    meta = {}
    for key, tag in SAFE_TAGS.items():
        v = hs[0].ds.get(tag) if hs[0].ds is not None else None
        if v not in (None, ""):
            meta[key] = float(v) if key in ("kvp", "slice_thickness") else str(v)
    meta["n_slices"] = int(vol.shape[0])
    return vol, (dz, spacing_y, spacing_x), origin, direction, meta, notes


def _sorted_slices(hs: list[SliceHeader], folder: Path, max_voxels: int | None):
    """The slices sorted along the normal, their distances along it and the frame
    ``(row, col, normal)``; refused: multi-frame objects, two slices at one position,
    slices of different sizes, more voxels than the limit, files shorter than their
    header says."""
    if any(h.frames > 1 for h in hs):
        raise ScanReadError(
            f"{show(folder)}: multi-frame DICOM objects are not supported as CT volumes "
            f"({show(hs[0].path.name)} has {hs[0].frames} frames)"
        )
    frame = _orientation_frame(hs, folder)
    normal = frame[2]
    dist = np.array([float(h.position @ normal) for h in hs])
    order = np.argsort(dist, kind="stable")
    hs = [hs[i] for i in order]
    dist = dist[order]
    gaps = np.diff(dist)
    if np.any(gaps < 1e-3):
        k = int(np.argmin(gaps))
        raise ScanReadError(
            f"{show(folder)}: not a volume: {show(hs[k].path.name)} and {show(hs[k + 1].path.name)} lie at the same "
            "position (several acquisitions, echoes or duplicates in one series)"
        )
    shapes = {(h.rows, h.cols) for h in hs}
    if len(shapes) > 1:
        raise ScanReadError(
            f"{show(folder)}: slices of different sizes {sorted(shapes)}; expected one volume"
        )
    limit = max_voxels_default() if max_voxels is None else int(max_voxels)
    n_vox = hs[0].rows * hs[0].cols * len(hs)
    if n_vox > limit:
        raise ScanReadError(
            f"{show(folder)}: {len(hs)} slices of {hs[0].rows} x {hs[0].cols} = {n_vox:,} voxels, "
            f"more than the limit of {limit:,} (raise HEPASCREEN_MAX_VOXELS for larger images)"
        )
    for h in hs:  # file size against the header before GDCM allocates what it says
        need = _uncompressed_pixel_bytes(h)
        if need is not None and os.path.getsize(h.path) < need:
            check_pixel_data(h)  # the precise message
            raise ScanReadError(
                f"{show(h.path)}: truncated: the header describes {need:,} bytes of pixels, "
                f"the file holds {os.path.getsize(h.path):,} bytes in all"
            )
    return hs, dist, frame


def _decode_slices(hs: list[SliceHeader]) -> np.ndarray:
    """The sorted slices' pixels as one volume (:func:`_stack_slices`).

    Plain uncompressed slices are read straight from the file (the header was parsed
    once already); GDCM decodes the rest (compressed, unusual layouts) and any slice the
    direct read does not vouch for (tests/test_dicom_fast_read.py: identical to GDCM on
    every layout). Several GDCM slices decode on a few threads (SimpleITK releases the
    GIL while decoding); errors still name the first bad slice in order.
    """
    slices: list = []
    todo = []
    for k, h in enumerate(hs):
        layout = raw_pixel_layout(h)
        a = read_raw_pixels(h, layout) if layout is not None else None
        slices.append(a)
        if a is None:
            todo.append(k)
    decoded = _gdcm_series([hs[k] for k in todo]) if GDCM_SERIES and len(todo) >= 2 else None
    if decoded is not None:
        for k, a in zip(todo, decoded):
            slices[k] = a
        todo = []
    workers = min(GDCM_THREADS, os.cpu_count() or 1, len(todo))
    if workers > 1 and len(todo) >= 8:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(workers, thread_name_prefix="dicom-decode") as pool:
            for k, a in zip(todo, pool.map(lambda i: _gdcm_slice(hs[i]), todo)):
                slices[k] = a
    else:
        for k in todo:
            slices[k] = _gdcm_slice(hs[k])
    return _stack_slices(slices)


def _untilt(vol, hs, dist, frame, spacing_yx, notes: list) -> np.ndarray:
    """Gantry tilt: positions drift in-plane along the stack; each slice is resampled at
    the in-plane positions of slice 0's grid (a note says so)."""
    row, col, normal = frame
    spacing_y, spacing_x = spacing_yx
    p0 = hs[0].position
    inplane = np.array([(h.position - p0) - ((h.position - p0) @ normal) * normal for h in hs])
    drift = np.linalg.norm(inplane[-1]) if len(hs) > 1 else 0.0
    span = dist[-1] - dist[0] if len(hs) > 1 else 1.0
    if not (drift > 0.01 * max(span, 1.0) and drift > 0.5 * min(spacing_x, spacing_y)):
        return vol
    from scipy import ndimage as ndi

    tilt = float(np.degrees(np.arctan2(drift, span)))
    out = np.empty(vol.shape, np.float32)
    for k in range(vol.shape[0]):
        dy = float(inplane[k] @ col) / spacing_y
        dx = float(inplane[k] @ row) / spacing_x
        # Sample slice k at the in-plane positions of slice 0's grid.
        out[k] = ndi.shift(vol[k].astype(np.float32), (dy, dx), order=1, mode="nearest")
    notes.append(f"gantry_tilt_corrected ({tilt:.1f} deg)")
    return out


def _regular_spacing(vol, hs, dist, folder: Path, max_gap_factor: float, notes: list):
    """``(volume, dz)`` on a regular spacing along the normal: uneven gaps resampled
    linearly to their median (a note says so); gaps over ``max_gap_factor`` x the
    median refused (missing slices)."""
    gaps = np.diff(dist)
    if len(gaps) == 0:
        return vol, float(getattr(hs[0].ds, "SliceThickness", 1.0) or 1.0)
    dz = float(np.median(gaps))
    if np.max(np.abs(gaps - dz)) <= max(0.01 * dz, 0.01):
        return vol, dz
    if np.max(gaps) > max_gap_factor * dz:
        raise ScanReadError(
            f"{show(folder)}: slice gaps up to {np.max(gaps):.2f} mm against a median spacing of "
            f"{dz:.2f} mm (missing slices?); refusing to interpolate gaps over "
            f"{max_gap_factor:g} x the spacing"
        )
    n = int(round((dist[-1] - dist[0]) / dz)) + 1
    target = dist[0] + dz * np.arange(n)
    idx = np.clip(np.searchsorted(dist, target, side="right") - 1, 0, len(dist) - 2)
    w = ((target - dist[idx]) / (dist[idx + 1] - dist[idx])).astype(np.float32)
    w = np.clip(w, 0.0, 1.0)[:, None, None]
    v = vol.astype(np.float32)
    vol = v[idx] * (1 - w) + v[idx + 1] * w
    notes.append(
        f"resampled_nonuniform_spacing (gaps {np.min(gaps):.2f}-{np.max(gaps):.2f} mm -> {dz:.2f} mm)"
    )
    return vol, dz


def write_series(
    scan, folder: Path, *, shuffle_seed: int | None = None, extension: str = ""
) -> list[Path]:
    """Write ``scan`` (a ScanVolume in HU) as a CT DICOM series, one file per slice.

    For tests and the demo sample: int16 pixels with RescaleIntercept 0 / slope 1,
    positions and orientation from the scan's geometry, synthetic UIDs, no
    identifiers (PatientName "ANONYMOUS"). ``shuffle_seed`` gives the files
    random names so readers cannot rely on file order; ``extension`` "" writes
    files without extension, as many archives do.
    """
    import SimpleITK as sitk

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arr = np.asarray(scan.array)
    if arr.min() < -32768 or arr.max() > 32767:
        raise ValueError("HU outside int16")
    arr = np.round(arr).astype(np.int16)
    direction = np.asarray(scan.direction).reshape(3, 3)
    origin = np.asarray(scan.origin, float)
    sz, sy, sx = scan.spacing
    row, col = direction[:, 0], direction[:, 1]
    rng = np.random.default_rng(shuffle_seed)
    names = [f"{k:04d}" for k in range(arr.shape[0])]
    if shuffle_seed is not None:
        names = [f"{int(v):08x}" for v in rng.choice(2**31, size=len(names), replace=False)]
    uid_root = "1.2.826.0.1.3680043.8.498."
    series_uid = uid_root + str(int(rng.integers(1, 2**62)))
    study_uid = uid_root + str(int(rng.integers(1, 2**62)))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetImageIO("GDCMImageIO")
    paths = []
    for k in range(arr.shape[0]):
        img = sitk.GetImageFromArray(arr[k][None])
        pos = origin + k * sz * direction[:, 2]
        img.SetSpacing((sx, sy, sz))
        tags = {
            "0008|0060": "CT",
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
            "0008|0018": f"{series_uid}.{k + 1}",
            "0008|0008": "ORIGINAL\\PRIMARY\\AXIAL",
            "0010|0010": "ANONYMOUS",
            "0010|0020": "ANON",
            "0020|000d": study_uid,
            "0020|000e": series_uid,
            "0020|0011": "2",
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.6f}" for v in pos),
            "0020|0037": "\\".join(f"{v:.9f}" for v in (*row, *col)),
            "0028|0030": f"{sy:.6f}\\{sx:.6f}",
            "0018|0050": f"{sz:.6f}",
            "0028|1052": "0",
            "0028|1053": "1",
            "0018|0060": "120",
            "0018|1210": "STANDARD",
            "0008|103e": "HepaScreen test series",
        }
        for key, v in tags.items():
            img.SetMetaData(key, v)
        p = folder / f"{names[k]}{extension}"
        writer.SetFileName(str(p))
        writer.Execute(img)
        paths.append(p)
    return paths
