"""Reading scans and label maps, writing label maps.

``read_scan(path)`` accepts NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``,
``.nhdr``), MetaImage (``.mha``, ``.mhd``), a DICOM series or study folder
(files with any or no extension) and a single DICOM file (refused unless it is
a multi-slice volume, with a message saying what it is). It returns a
:class:`client.reading.scan.ScanVolume` in the axis convention of :mod:`client.reading.scan`,
with rescale slope/intercept applied, integer HU kept integer, identifier-free
metadata and ``metadata["notes"]`` listing anything done to the data (gantry
tilt corrected, spacing regularised, first volume of a 4D image taken).

Validation (each a :class:`ScanReadError` naming the file, what was expected and
what was found): not an image, truncated or corrupt, 2D, non-CT modality,
implausible HU range, absurd spacing, empty series, undecodable pixel data.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np

from client.core.atomic import atomic_path
from client.core.contract import LABEL_MAPS, STRUCTURE_LABELS
from client.core.errors import ScanReadError
from client.reading import dicom as _dicom
from client.reading.headers import (
    check_direction,
    check_readable_file,
    gzip_open,
    itk_array,
    itk_safe_path,
    precheck,
    show,
)
from client.reading.scan import ScanVolume

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
def check_finite(array: np.ndarray, source: str) -> None:
    """Refuse float volumes holding NaN or infinity (every voxel is checked, not a sample)."""
    a = np.asarray(array)
    if a.dtype.kind in "fc":
        n_ok = int(np.count_nonzero(np.isfinite(a)))
        if n_ok != a.size:
            n = a.size - n_ok
            what = "1 voxel value is" if n == 1 else f"{n:,} voxel values are"
            raise ScanReadError(f"{source}: {what} NaN or infinity (expected finite HU everywhere)")


def check_hu_range(array: np.ndarray, source: str) -> None:
    """Refuse volumes whose values cannot be CT in Hounsfield units.

    CT in HU has air or fat (below -50 HU) somewhere in any abdominal field of
    view, and almost nothing above 4000 HU (metal is clipped near 3071 by most
    scanners). Raw detector values stored without the rescale intercept (0..4095,
    air at 0) and MR intensities fail this. NaN or infinity anywhere fails too.
    """
    a = np.asarray(array)
    check_finite(a, source)
    step = max(1, a.size // 2_000_000)
    sample = a.reshape(-1)[::step].astype(np.float32)
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
_IMAGE_IO = {
    ".nii.gz": "NiftiImageIO",
    ".nii": "NiftiImageIO",
    ".nrrd": "NrrdImageIO",
    ".nhdr": "NrrdImageIO",
    ".mha": "MetaImageIO",
    ".mhd": "MetaImageIO",
}


def check_nifti_complete(path: Path) -> None:
    """Refuse a NIfTI-1/2 file shorter than its header says (ITK pads such files with zeros).

    Kept for callers of the earlier API; :func:`client.reading.headers.precheck` does this
    and more (``.nii``: file size; ``.nii.gz``: gzip trailer ISIZE, else a streaming count).
    """
    precheck(Path(path), image_suffix(path) or ".nii")


def _checked_reader(path: Path, max_voxels, what: str):
    """Suffix, header checks (before any allocation) and an ITK reader with the suffix's ImageIO."""
    import SimpleITK as sitk

    suffix = image_suffix(path)
    if suffix is None:
        raise ScanReadError(
            f"{show(path)}: unknown {what} format: expected one of {', '.join(IMAGE_SUFFIXES)}"
        )
    info = precheck(path, suffix, max_voxels, what)
    sitk.ProcessObject_SetGlobalWarningDisplay(False)  # ITK prints to the console otherwise
    reader = sitk.ImageFileReader()
    reader.SetImageIO(_IMAGE_IO[suffix])
    return suffix, info, reader


def read_itk_checked(path: str | Path, *, max_voxels: int | None = None, what: str = "image file"):
    """Read a NIfTI/NRRD/MetaImage file with SimpleITK after :func:`client.reading.headers.precheck`.

    The reader is chosen by the suffix (never by probing every format, which makes
    the HDF5 reader print diagnostics to the console), names that are not valid
    UTF-8 are read through an ASCII alias, and ITK's errors are translated into a
    :class:`ScanReadError` naming the file.

    Parameters
    ----------
    path : str or Path
    max_voxels : int, optional
        Refuse headers describing more voxels (default: ``HEPASCREEN_MAX_VOXELS`` or 2^30).
    what : str
        What the file should be, for messages ("image file", "label map").

    Returns
    -------
    SimpleITK.Image

    Raises
    ------
    ScanReadError
        Anything :func:`client.reading.headers.precheck` refuses, or ITK cannot read the file.
    """
    path = Path(path)
    return _itk_read(path, *_checked_reader(path, max_voxels, what), what)


def _itk_read(path: Path, suffix: str, info, reader, what: str):
    """:func:`read_itk_checked` after its header checks (``_checked_reader``)."""
    with itk_safe_path(path, suffix, info) as name:
        reader.SetFileName(name)
        try:
            if info.array is not None and 3 <= len(info.dims) <= 4:
                reader.ReadImageInformation()
                img = _image_from_checked_voxels(reader, info)
                if img is not None:
                    return img
            return reader.Execute()
        except RuntimeError as exc:
            raise _itk_error(exc, name, path, what) from None


def _itk_error(exc: RuntimeError, name: str, path: Path, what: str) -> ScanReadError:
    """ITK's exception as a ScanReadError naming the file (its own last useful line)."""
    text = str(exc).replace(name, show(path))
    if "determinant is 0" in text:
        return ScanReadError(
            f"{show(path)}: singular direction matrix: two image axes point the same "
            "way, so voxels have no 3D position"
        )
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    detail = next(
        (ln for ln in reversed(lines) if not ln.startswith(("/", "ITK ERROR"))),
        lines[-1] if lines else "unreadable",
    )[:300]
    return ScanReadError(f"{show(path)}: corrupt or not a readable {what} ({detail})")


def _image_from_checked_voxels(reader, info):
    """The image from voxels already decompressed by the NaN check, geometry from ITK's header read.

    Float NIfTI only (ITK would decompress the file a second time); scaling as ITK
    applies it (``scl_slope`` not 0 and not the identity). None when the header read
    disagrees with what the check saw (then ITK reads the file itself).
    """
    import SimpleITK as sitk

    size = tuple(reader.GetSize())
    if int(np.prod(size)) != info.array.size or reader.GetNumberOfComponents() != 1:
        return None
    a = info.array.reshape(size[::-1])
    slope, inter = info.scaling
    if slope != 0.0 and (slope != 1.0 or inter != 0.0):
        a = a * a.dtype.type(slope) + a.dtype.type(inter)
    img = sitk.GetImageFromArray(a, isVector=False)
    img.SetSpacing(reader.GetSpacing())
    img.SetOrigin(reader.GetOrigin())
    img.SetDirection(reader.GetDirection())
    for key in reader.GetMetaDataKeys():
        img.SetMetaData(key, reader.GetMetaData(key))
    return img


def read_image_info(path: str | Path, *, max_voxels: int | None = None, what: str = "label map"):
    """Header facts of a NIfTI/NRRD/MetaImage file, after the same checks as a full read.

    For callers that compare geometry before reading voxels (e.g. a label map
    against its scan): no HDF5 probing noise, no abort on undecodable names.

    Returns
    -------
    dict
        ``dimension``, ``size`` (x, y, z, ...), ``spacing``, ``origin``, ``direction``
        (ITK order, as ``SimpleITK.ImageFileReader`` reports them).

    Raises
    ------
    ScanReadError
        As :func:`read_itk_checked`.
    """
    import SimpleITK as sitk

    sitk.ProcessObject_SetGlobalWarningDisplay(False)
    path = Path(path)
    suffix, info, reader = _checked_reader(path, max_voxels, what)
    with itk_safe_path(path, suffix, info) as name:
        reader.SetFileName(name)
        try:
            reader.ReadImageInformation()
        except RuntimeError as exc:
            raise _itk_error(exc, name, path, what) from None
    return {
        "dimension": reader.GetDimension(),
        "size": tuple(reader.GetSize()),
        "spacing": tuple(reader.GetSpacing()),
        "origin": tuple(reader.GetOrigin()),
        "direction": tuple(reader.GetDirection()),
    }


# NIfTI integer types whose voxels ITK returns unchanged (no scaling): ITK pixel type -> numpy.
_ITK_INTEGER_TYPES = {
    "sitkInt8": np.int8, "sitkUInt8": np.uint8, "sitkInt16": np.int16, "sitkUInt16": np.uint16,
    "sitkInt32": np.int32, "sitkUInt32": np.uint32, "sitkInt64": np.int64, "sitkUInt64": np.uint64,
}  # fmt: skip


def _itk_integer_dtype(pixel_id: int):
    import SimpleITK as sitk

    for name, dtype in _ITK_INTEGER_TYPES.items():
        if getattr(sitk, name) == pixel_id:
            return np.dtype(dtype)
    return None


def _gzip_nifti_voxels(path: Path, suffix: str, info, reader):
    """(ITK's header read, voxels [z, y, x]) of a 3D gzip NIfTI of integers, or None.

    The archive's usual file. ITK inflates it with zlib; here it is inflated once by
    ISA-L (the same bytes, about half the CPU: ``benchmarks/bench_allin.py``) straight
    into the array, and the geometry and metadata come from ITK's own header read, so
    the volume is exactly what ``SimpleITK.ReadImage`` gives (``tests/test_io.py``
    compares them). Anything else (float or scaled data, 4D, another format) returns
    None and ITK reads the file.
    """
    if not (
        suffix == ".nii.gz" and info.encoding == "gzip" and len(info.dims) == 3
        and info.dtype is not None and info.dtype.kind in "iu" and info.array is None
    ):  # fmt: skip
        return None
    slope, inter = info.scaling
    if slope != 0.0 and (slope != 1.0 or inter != 0.0):
        return None
    with itk_safe_path(path, suffix, info) as name:
        reader.SetFileName(name)
        try:
            reader.ReadImageInformation()
        except RuntimeError:
            return None  # ITK's full read gives the precise error
    itk_type = _itk_integer_dtype(reader.GetPixelID())
    if (
        reader.GetDimension() != 3 or reader.GetNumberOfComponents() != 1
        or tuple(reader.GetSize()) != tuple(int(d) for d in info.dims)
        or itk_type is None or itk_type != info.dtype.newbyteorder("=")
    ):  # fmt: skip
        return None
    voxels = np.empty(info.n_voxels, info.dtype)
    view, filled = memoryview(voxels).cast("B"), 0
    try:
        with gzip_open(info.data_file, "rb") as gz:
            if len(gz.read(info.data_offset)) != info.data_offset:
                raise EOFError("ends inside the header")
            while filled < view.nbytes and (n := gz.readinto(view[filled:])):
                filled += n
    except (EOFError, OSError, zlib.error) as exc:
        raise ScanReadError(f"{show(path)}: truncated or corrupt compressed data ({exc})") from exc
    if filled != view.nbytes:
        raise ScanReadError(
            f"{show(path)}: truncated: header describes {view.nbytes:,} bytes of image data, "
            f"the file holds {filled:,}"
        )
    if not voxels.dtype.isnative:
        voxels = voxels.astype(voxels.dtype.newbyteorder("="))
    return reader, voxels.reshape(tuple(reader.GetSize())[::-1])


def _read_itk_file(path: Path, min_slices: int, max_voxels: int | None = None) -> ScanVolume:
    import SimpleITK as sitk

    checked = _checked_reader(path, max_voxels, "image file")  # header checks once
    fast = _gzip_nifti_voxels(path, *checked)
    if fast is not None:
        return _itk_scan(path, *fast, [], min_slices)
    img = _itk_read(path, *checked, "image file")
    notes: list[str] = []
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise ScanReadError(
            f"{show(path)}: expected one grey value per voxel, got "
            f"{img.GetNumberOfComponentsPerPixel()} components"
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
            f"{show(path)}: expected a 3D volume, got a {dim}D image of size {img.GetSize()}"
        )
    return _itk_scan(path, img, itk_array(img), notes, min_slices)


def _itk_scan(path: Path, img, array: np.ndarray, notes: list, min_slices: int) -> ScanVolume:
    """The checked ScanVolume of ``array`` with the geometry and metadata of ``img`` (an ITK
    image, or a reader after ``ReadImageInformation``)."""
    check_direction(np.asarray(img.GetDirection()).reshape(3, 3), path)
    spacing = tuple(img.GetSpacing())[::-1]
    check_geometry(array.shape, spacing, show(path), min_slices)
    check_finite(array, show(path))
    if (
        array.dtype.kind == "f"
        and np.array_equal(array, np.round(array))
        and np.abs(array).max() < 32768
    ):
        array = array.astype(np.int16)  # integer HU stored as float: keep integers
    if (
        array.dtype.kind in "iu" and array.dtype != np.int16 and array.size
        and array.min() >= -32768 and array.max() <= 32767
    ):  # fmt: skip
        array = array.astype(np.int16)  # int32 NIfTI HU: half the memory
    meta = {"format": image_suffix(path).lstrip(".")}
    for key, tag in (("modality", "modality"), ("intent", "intent_name")):
        if img.HasMetaDataKey(tag) and img.GetMetaData(tag).strip():
            meta[key] = img.GetMetaData(tag).strip()
    meta["notes"] = notes
    return ScanVolume(
        array=array,
        spacing=spacing,
        # + 0.0: ITK's header read gives -0.0 where its full read gives 0.0 (same value,
        # but DICOM writes "-0"); both paths give the same numbers and the same text
        origin=tuple(float(v) + 0.0 for v in img.GetOrigin()),
        direction=np.asarray(img.GetDirection(), dtype=float).reshape(3, 3) + 0.0,
        metadata=meta,
        source=show(path),
    )


def _read_dicom(
    path: Path,
    min_slices: int,
    require_ct: bool,
    series_uid: str | None = None,
    files=None,
    max_voxels: int | None = None,
) -> ScanVolume:
    if path.is_dir():
        try:
            os.listdir(path)
        except PermissionError:
            raise ScanReadError(
                f"{show(path)}: permission denied: the folder cannot be listed by this user"
            ) from None
        groups, skipped = _dicom.scan_folder(path, files)
        if not groups:
            raise ScanReadError(
                f"{show(path)}: empty series: no DICOM files found ({skipped} non-DICOM files skipped)"
            )
    else:
        check_readable_file(path, "DICOM file")
        h = _dicom.read_header(path)
        if h is None:
            raise ScanReadError(
                f"{show(path)}: not an image: neither NIfTI/NRRD/MHA (by its name) nor DICOM "
                "(by its content)"
            )
        if h.has_pixels and _dicom.SOP_NON_IMAGE.get(h.sop_class) is None:
            _dicom.check_pixel_data(h)
        groups, skipped = {h.series_uid: [h]}, 0
    hs = _dicom.choose_series(groups, path, min_slices, require_ct, series_uid)
    vol, spacing, origin, direction, meta, notes = _dicom.load_series(
        hs, path, max_voxels=max_voxels
    )
    check_geometry(vol.shape, spacing, show(path), min_slices)
    meta["format"] = "dicom"
    meta["n_series_in_folder"] = len(groups)
    meta["notes"] = notes
    return ScanVolume(vol, spacing, origin, direction, metadata=meta, source=show(path))


def _check_exists(path: Path, what: str) -> None:
    if os.path.lexists(path) and not os.path.exists(path):
        check_readable_file(path, what)  # broken link or link loop: says which
    if not os.path.exists(path):
        raise ScanReadError(f"{show(path)}: no such file or folder")


def read_scan(
    path: str | Path,
    *,
    min_slices: int = MIN_SLICES,
    require_ct: bool = True,
    check_hu: bool = True,
    series_uid: str | None = None,
    files=None,
    max_voxels: int | None = None,
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
        Refuse values that cannot be HU (see :func:`check_hu_range`). NaN and
        infinity are refused either way.
    series_uid : str, optional
        For a DICOM folder holding several series: read this one (else the
        series-choice rule of :mod:`client.reading.dicom` picks the axial CT volume).
    files : sequence of paths, optional
        For a DICOM folder: read only these files (batch discovery already knows
        which files hold the series, so a study folder is not walked again).
    max_voxels : int, optional
        Refuse images with more voxels, checked on the header before any
        allocation (default: environment ``HEPASCREEN_MAX_VOXELS`` or 2^30).

    Returns
    -------
    ScanVolume
        ``source`` is the path as printable text (undecodable bytes as ``\\xNN``).

    Raises
    ------
    ScanReadError
        Whatever makes the file unusable; the message names the file and says what
        was expected and what was found.
    """
    path = Path(path)
    _check_exists(path, "image file")
    suffix = image_suffix(path)
    if suffix and path.is_dir():
        raise ScanReadError(
            f"{show(path)}: is a folder, expected a {suffix} file (a folder with an image file's name)"
        )
    if suffix:
        scan = _read_itk_file(path, min_slices, max_voxels)
        if require_ct and scan.metadata.get("modality", "CT").upper() not in ("CT", ""):
            raise ScanReadError(
                f"{show(path)}: expected modality CT, got {scan.metadata['modality']}"
            )
    else:
        scan = _read_dicom(path, min_slices, require_ct, series_uid, files, max_voxels)
    check_finite(scan.array, show(path))
    if check_hu:
        check_hu_range(scan.array, show(path))
    return scan


def read_label_map(
    path: str | Path,
    like: ScanVolume,
    label_map: str | dict = "default",
    *,
    max_voxels: int | None = None,
) -> np.ndarray:
    """Read a label map for ``like`` and return uint8 labels (1 liver, 2 spleen) on its grid.

    ``label_map`` names an entry of :data:`client.core.contract.LABEL_MAPS` or is a dict
    ``{"liver": value, "spleen": value}``. A map on the same grid is used as is; a
    map with the same physical extent but another grid (e.g. saved in another
    orientation) is resampled onto the scan by nearest neighbour.

    The file gets the same checks as a scan (:func:`read_itk_checked`: complete
    data, sane header, orthonormal direction, no NaN), and its values must be
    whole numbers.

    Raises
    ------
    ScanReadError
        Missing, unreadable, truncated or corrupt file, a folder, not 3D, non-integer
        or non-finite labels, no overlap with the scan.
    """
    import SimpleITK as sitk

    path = Path(path)
    values = LABEL_MAPS[label_map] if isinstance(label_map, str) else dict(label_map)
    if not os.path.lexists(path):
        raise ScanReadError(f"{show(path)}: label map not found")
    img = read_itk_checked(path, max_voxels=max_voxels, what="label map")
    if img.GetDimension() == 4 and img.GetSize()[3] == 1:
        size = img.GetSize()
        img = sitk.Extract(
            img, (*size[:3], 0), (0, 0, 0, 0), sitk.ExtractImageFilter.DIRECTIONCOLLAPSETOSUBMATRIX
        )
    if img.GetDimension() != 3:
        raise ScanReadError(
            f"{show(path)}: expected a 3D label map, got a {img.GetDimension()}D image of size "
            f"{img.GetSize()}"
        )
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise ScanReadError(
            f"{show(path)}: expected one label per voxel, got "
            f"{img.GetNumberOfComponentsPerPixel()} components"
        )
    check_direction(np.asarray(img.GetDirection()).reshape(3, 3), path)
    ref = like.to_sitk(np.zeros(like.shape, np.uint8))
    same = (
        tuple(img.GetSize()) == tuple(ref.GetSize())
        and np.allclose(img.GetSpacing(), ref.GetSpacing(), rtol=1e-3, atol=1e-4)
        and np.allclose(img.GetOrigin(), ref.GetOrigin(), atol=1e-2)
        and np.allclose(img.GetDirection(), ref.GetDirection(), atol=1e-3)
    )
    raw = itk_array(img)
    if raw.dtype.kind == "f":
        check_finite(raw, show(path))
        if not np.array_equal(raw, np.round(raw)):
            raise ScanReadError(
                f"{show(path)}: expected whole-number labels, got fractional values "
                "(a probability map or an image, not a label map?)"
            )
    if not same:
        img = sitk.Resample(img, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        raw = itk_array(img)
    out = np.zeros(raw.shape, np.uint8)
    for name, value in values.items():  # liver, spleen and any neighbour the map names
        target = STRUCTURE_LABELS.get(name)
        if target is not None and value is not None and value >= 0:
            out[raw == value] = target
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
    labels = labels.astype(np.uint8, copy=False)
    with atomic_path(path, suffix) as tmp:
        if suffix != ".nii.gz" or not _write_nifti_gz(labels, like, tmp):
            sitk.WriteImage(like.to_sitk(labels), tmp, useCompression=True)
    return path


def _write_nifti_gz(labels: np.ndarray, like: ScanVolume, target: str) -> bool:
    """``labels`` as gzip NIfTI with ITK's own header for ``like``'s geometry, deflated by
    ISA-L at level 1 with no name and no timestamp; False where ITK must write it.

    ITK writes the header of a 2 x 2 x 2 image with the same spacing, origin and
    direction (the qform/sform it derives from them), the three sizes are set, and the
    voxels follow in ITK's order (x fastest: the C order of ``[z, y, x]``). The file
    decompresses to exactly ITK's own ``.nii.gz`` (``tests/test_io.py``) for a fraction
    of the CPU (no full-size ITK image, no uncompressed copy on disk:
    ``benchmarks/bench_allin.py``); the same input gives the same bytes.
    """
    import struct
    import tempfile

    import SimpleITK as sitk
    from isal.igzip import IGzipFile

    nz, ny, nx = labels.shape
    if max(labels.shape) > 32767:  # NIfTI-1 sizes are int16: ITK's NIfTI-2 path
        return False
    with tempfile.TemporaryDirectory(prefix="hepascreen-hdr-") as d:
        probe = os.path.join(d, "h.nii")
        sitk.WriteImage(like.to_sitk(np.zeros((2, 2, 2), np.uint8)), probe, useCompression=False)
        with open(probe, "rb") as fh:
            head = bytearray(fh.read())
    if len(head) != 352 + 8 or struct.unpack_from("<i", head)[0] != 348:
        return False  # not the little-endian single-file layout this relies on
    struct.pack_into("<4h", head, 40, 3, nx, ny, nz)  # dim[0..3]
    with open(target, "wb") as fh, IGzipFile("", "wb", 1, fh, mtime=0) as gz:
        gz.write(head[:352])
        gz.write(memoryview(np.ascontiguousarray(labels)).cast("B"))
    return True
