"""PACS outputs for DICOM inputs: a DICOM Segmentation and a measurement Structured Report.

Both are opt-in (``--dicom-seg``, ``--dicom-sr``) and are the only outputs that carry
patient and study identifiers: they copy the source series' Patient and Study module
attributes (highdicom does that from the source datasets) so that PACS files them with
the study they were computed from, and nothing the source does not already carry.
Neither the case_id nor the source path is written into them (folder names may hold
patient names).

Geometry. The label map comes on the scan grid that :func:`client.reading.io.read_scan` built
from the series (slices sorted along the normal; gantry tilt shifted, uneven gaps
resampled). The segmentation is written frame by frame on the SOURCE slices: every
pixel of every source image is mapped to the scan grid through both geometries and
takes the nearest label, so the SEG overlays the images the radiologist sees, whatever
regularisation the reader did. When the scan grid is the source grid (the common case)
this is an exact copy of the label map's slices.

Usage (one scan, after the measurement)::

    from client.outputs.dicom_out import write_dicom_seg, write_dicom_sr
    from client.outputs.results import case_files
    paths = case_files(out, case)  # the OUT layout: dicom/<case_id>.seg.dcm, .sr.dcm
    seg = write_dicom_seg(src.files or src.path, labels, row, paths.seg,
                          scan=scan, series_uid=src.series_uid)
    write_dicom_sr(src.files or src.path, row, paths.sr, seg_path=seg, series_uid=src.series_uid)
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from client.core.atomic import atomic_path
from client.core.contract import LABEL_LIVER, LABEL_SPLEEN
from client.core.errors import ScanReadError

ALGORITHM_NAME = "HepaScreen"
MANUFACTURER = "HepaScreen"
# Private coding scheme for the concepts that have no standard code (the ratio, the grade).
CODING_SCHEME = "99HEPASCREEN"
SEGMENTS = {LABEL_LIVER: "Liver", LABEL_SPLEEN: "Spleen"}
SEG_SERIES_NUMBER = 9901
SR_SERIES_NUMBER = 9902
QC_SERIES_NUMBER = 9903

__all__ = [
    "ALGORITHM_NAME",
    "CODING_SCHEME",
    "derive_uid",
    "labels_on_source_slices",
    "source_series",
    "write_dicom_qc",
    "write_dicom_seg",
    "write_dicom_sr",
]


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("hepascreen")
    except Exception:  # noqa: BLE001 - not installed as a distribution (source tree)
        return "0.1.0"


def source_series(source, series_uid: str | None = None) -> list:
    """Headers of the source series, sorted along the slice normal as the reader sorts them.

    Parameters
    ----------
    source : str, Path or sequence of paths
        A DICOM folder (series or study: the series is chosen by the reader's rule in
        :mod:`client.reading.dicom`), one DICOM file, or the files of one series (as
        :class:`client.reading.discover.ScanSource` ``.files`` holds them).
    series_uid : str, optional
        Series to use when ``source`` holds several.

    Returns
    -------
    list of client.reading.dicom.SliceHeader
        Header-only datasets in ``.ds``, first slice first.

    Raises
    ------
    ScanReadError
        No DICOM image series found, or mixed orientations.
    """
    from client.reading import dicom as _dicom
    from client.reading.io import MIN_SLICES

    if isinstance(source, (str, Path)):
        p = Path(source)
        folder, files = (p, None) if p.is_dir() else (p.parent, [p])
    else:
        files = [Path(f) for f in source]
        if not files:
            raise ScanReadError("no source DICOM files given")
        folder = files[0].parent
    groups, _ = _dicom.scan_folder(folder, files)
    if not groups:
        raise ScanReadError(f"{folder}: no DICOM files among the source files")
    min_slices = 1 if files is not None and len(files) == 1 else MIN_SLICES
    hs = _dicom.choose_series(groups, folder, min_slices, True, series_uid)
    _, _, normal = _dicom._orientation_frame(hs, folder)
    dist = np.array([float(h.position @ normal) for h in hs])
    return [hs[i] for i in np.argsort(dist, kind="stable")]


# Type 2 Patient/Study attributes highdicom reads from the first source image. An
# anonymised series often lacks them; they are then written empty ("unknown" in DICOM),
# never invented.
_TYPE2_LINKAGE = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)


def _file_meta_uid(ds, keyword: str) -> str:
    meta = getattr(ds, "file_meta", None)
    return str(meta.get(keyword, "") or "") if meta is not None else ""


def _source_datasets(hs, output: str = "SEG/SR") -> list:
    """Header datasets of the source slices, ready to be copied into an output.

    Missing Type 2 linkage attributes are set empty; empty SOP Class/Instance UIDs are
    taken from the file meta header (``MediaStorageSOPClassUID`` /
    ``MediaStorageSOPInstanceUID``: some anonymisers leave them only there).

    Raises
    ------
    ScanReadError
        The series cannot be filed by a PACS: no Study or Series Instance UID, or an
        instance with no SOP Instance UID anywhere (``output`` names what is not written).
    """
    import copy

    out = []
    for h in hs:
        ds = h.ds
        for k in ("StudyInstanceUID", "SeriesInstanceUID"):
            if not str(ds.get(k, "") or ""):
                raise ScanReadError(
                    f"{h.path}: the source has no {k}, so a PACS could not file a {output} "
                    "with its study; not written"
                )
        missing = [k for k in _TYPE2_LINKAGE if k not in ds]
        fill = {}
        for k, meta_k in (
            ("SOPClassUID", "MediaStorageSOPClassUID"),
            ("SOPInstanceUID", "MediaStorageSOPInstanceUID"),
        ):
            if not str(ds.get(k, "") or ""):
                fill[k] = _file_meta_uid(ds, meta_k)
                if not fill[k]:
                    raise ScanReadError(
                        f"{h.path}: expected a {k} in the data set or {meta_k} in the file "
                        f"meta header, found neither; a {output} cannot reference it; not written"
                    )
        if (
            str(ds.get("PatientIdentityRemoved", "")).upper() == "YES"
            and not str(ds.get("DeidentificationMethod", "") or "")
            and not ds.get("DeidentificationMethodCodeSequence")
        ):
            # Type 1C once identity is removed; some anonymisers leave it empty (seen on
            # a real GE series). Say so rather than copy an invalid empty value.
            fill["DeidentificationMethod"] = "not stated in the source"
        if missing or fill:
            ds = copy.copy(ds)  # shallow: only top-level elements are added or replaced
            for k in missing:
                setattr(ds, k, "")
            for k, v in fill.items():
                setattr(ds, k, v)
        out.append(ds)
    return out


def _sop_instance_uid(h) -> str:
    return str(h.ds.get("SOPInstanceUID", "") or "") or _file_meta_uid(
        h.ds, "MediaStorageSOPInstanceUID"
    )


def _uid_key(hs, settings: str | None) -> str | None:
    """The key that fixes a scan's SEG and SR UIDs (None: random UIDs).

    SHA-256 of the source series' SOP Instance UIDs (sorted) and ``settings`` (the model
    and measurement settings as text): the same source screened with the same model and
    settings gives the same SEG and SR UIDs, so a PACS that receives them twice (a
    re-run, a re-sent study) keeps one copy.
    """
    if settings is None:
        return None
    import hashlib

    h = hashlib.sha256()
    for uid in sorted(_sop_instance_uid(x) for x in hs):
        h.update(uid.encode() + b"\0")
    h.update(str(settings).encode())
    return h.hexdigest()


def derive_uid(key: str | None, role: str) -> str:
    """A UID for ``role`` ("seg.series", "sr.sop", ...): random when ``key`` is None,
    else the UUID-derived UID (``2.25.``, PS3.5 B.2) of a name-based UUID of key + role."""
    import uuid

    import highdicom as hd

    if key is None:
        return hd.UID()
    u = uuid.uuid5(uuid.NAMESPACE_OID, f"hepascreen:{key}:{role}")
    return hd.UID(f"2.25.{u.int}")


def _grid_from_headers(hs) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple]:
    """Scan grid as :func:`client.reading.dicom.load_series` builds it: origin, direction, spacing."""
    row, col = hs[0].orientation[:3], hs[0].orientation[3:]
    normal = np.cross(row, col)
    dist = np.array([float(h.position @ normal) for h in hs])
    if len(hs) > 1:
        dz = float(np.median(np.diff(dist)))
        n = int(round((dist[-1] - dist[0]) / dz)) + 1
    else:
        dz, n = float(getattr(hs[0].ds, "SliceThickness", 1.0) or 1.0), 1
    ps = hs[0].pixel_spacing or (1.0, 1.0)
    spacing = np.array([dz, float(ps[0]), float(ps[1])])
    direction = np.stack([row, col, normal], axis=1)
    return np.asarray(hs[0].position, float), direction, spacing, (n, hs[0].rows, hs[0].cols)


def labels_on_source_slices(hs, labels: np.ndarray, scan=None) -> np.ndarray:
    """The label map sampled on every source slice (nearest neighbour, 0 outside the grid).

    Parameters
    ----------
    hs : list of SliceHeader
        Source slices from :func:`source_series`.
    labels : numpy.ndarray
        Label map ``[z, y, x]`` on the scan grid.
    scan : ScanVolume, optional
        Gives the scan grid's geometry; without it the grid is rebuilt from the headers
        as the reader builds it.

    Returns
    -------
    numpy.ndarray
        uint8 ``[n_source_slices, rows, columns]``, frame k on source slice ``hs[k]``.
    """
    labels = np.asarray(labels)
    if scan is not None:
        origin = np.asarray(scan.origin, float)
        direction = np.asarray(scan.direction, float).reshape(3, 3)
        spacing = np.asarray(scan.spacing, float)
        shape = tuple(scan.shape)
    else:
        origin, direction, spacing, shape = _grid_from_headers(hs)
    if labels.ndim != 3 or tuple(labels.shape) != tuple(shape):
        raise ValueError(
            f"label map {tuple(labels.shape)} does not match the scan grid {tuple(shape)} "
            f"of series {hs[0].series_uid}"
        )
    # index (x, y, z) = inv(direction * spacing_xyz) @ (physical - origin)
    to_index = np.linalg.inv(direction * spacing[::-1][None, :])
    nz, ny, nx = shape
    out = np.zeros((len(hs), hs[0].rows, hs[0].cols), np.uint8)
    for k, h in enumerate(hs):
        r, c = h.orientation[:3], h.orientation[3:]
        ps = h.pixel_spacing or (1.0, 1.0)
        a = to_index @ (np.asarray(h.position, float) - origin)
        u = to_index @ (r * float(ps[1]))  # one column step
        v = to_index @ (c * float(ps[0]))  # one row step
        rows, cols = h.rows, h.cols
        if (
            np.allclose(u, (1, 0, 0), atol=1e-4)
            and np.allclose(v, (0, 1, 0), atol=1e-4)
            and np.allclose(a[:2], np.rint(a[:2]), atol=1e-3)
        ):
            # Same in-plane grid, shifted by whole pixels: copy the overlapping block.
            z, y0, x0 = int(np.rint(a[2])), int(np.rint(a[1])), int(np.rint(a[0]))
            if not 0 <= z < nz:
                continue
            ys, xs = max(0, y0), max(0, x0)
            ye, xe = min(ny, y0 + rows), min(nx, x0 + cols)
            if ye > ys and xe > xs:
                out[k, ys - y0 : ye - y0, xs - x0 : xe - x0] = labels[z, ys:ye, xs:xe]
            continue
        ii, jj = np.mgrid[0:rows, 0:cols]
        idx = a[:, None, None] + u[:, None, None] * jj + v[:, None, None] * ii
        ix, iy, iz = (np.rint(idx[d]).astype(np.int64) for d in range(3))
        inside = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny) & (iz >= 0) & (iz < nz)
        out[k][inside] = labels[iz[inside], iy[inside], ix[inside]]
    return out


def _algorithm(model_name: str | None):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    name = ALGORITHM_NAME if not model_name else f"{ALGORITHM_NAME} {model_name}"
    return hd.AlgorithmIdentificationSequence(
        name=name[:64], family=codes.cid7162.ArtificialIntelligence, version=_version()
    )


def write_dicom_seg(
    source,
    labels: np.ndarray,
    row: dict,
    out_path: str | Path,
    *,
    scan=None,
    series_uid: str | None = None,
    model_name: str | None = None,
    uid_settings: str | None = None,
) -> Path:
    """Write the liver and spleen segmentation of one scan as a DICOM SEG (atomically).

    Parameters
    ----------
    source : str, Path or sequence of paths
        The source DICOM series: its folder or its files (see :func:`source_series`).
    labels : numpy.ndarray
        Label map ``[z, y, x]`` on the scan grid (1 liver, 2 spleen), as measured.
    row : dict
        The scan's result row (only used to refuse an error row).
    out_path : str or Path
        Where to write the ``.dcm`` file (parent folders are created).
    scan : ScanVolume, optional
        The scan as read (its geometry maps the label map to the source slices);
        without it the grid is rebuilt from the files.
    series_uid : str, optional
        The series to use when ``source`` holds several (``ScanSource.series_uid``).
    model_name : str, optional
        Segmentation model, written into the algorithm identification.
    uid_settings : str, optional
        The model and measurement settings as text. Given, the SEG's UIDs are derived
        from the source instances and this text (:func:`derive_uid`): a re-run or a
        re-sent study gives the same objects and a PACS keeps one copy. None: new UIDs.

    Returns
    -------
    Path
        ``out_path``.

    Raises
    ------
    ScanReadError
        The source is not a readable DICOM image series, or cannot carry a SEG (no
        FrameOfReferenceUID, Study or Series Instance UID, or SOP Instance UID).
    ValueError
        The label map does not match the scan grid, or the row is an error row.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    if row.get("status") == "error":
        raise ValueError(f"{row.get('case_id')}: no segmentation for a scan that failed")
    hs = source_series(source, series_uid)
    if not str(getattr(hs[0].ds, "FrameOfReferenceUID", "") or ""):
        raise ScanReadError(
            f"{hs[0].path}: the source series has no FrameOfReferenceUID, which a DICOM "
            "Segmentation must share with its images; SEG not written"
        )
    frames = labels_on_source_slices(hs, labels, scan)
    uid_key = _uid_key(hs, uid_settings)
    frames[(frames != LABEL_LIVER) & (frames != LABEL_SPLEEN)] = 0
    algo = _algorithm(model_name or row.get("model"))
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=value,
            segment_label=name,
            segmented_property_category=codes.SCT.Organ,
            segmented_property_type=getattr(codes.SCT, name),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algo,
            tracking_uid=derive_uid(uid_key, f"seg.tracking.{value}"),
            tracking_id=f"{name} segmentation",
        )
        for value, name in SEGMENTS.items()
    ]
    with warnings.catch_warnings():
        # highdicom warns about one-component names ("ANONYMOUS"); they are the source's.
        warnings.filterwarnings("ignore", message=".*person name.*", category=UserWarning)
        seg = _segmentation(hd, hs, frames, descriptions, uid_key)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_path, ".dcm") as tmp:
        seg.save_as(tmp)
    return out_path


def _segmentation(hd, hs, frames, descriptions, uid_key=None):
    return hd.seg.Segmentation(
        source_images=_source_datasets(hs, "SEG"),
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=derive_uid(uid_key, "seg.series"),
        series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=derive_uid(uid_key, "seg.sop"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=ALGORITHM_NAME,
        software_versions=_version(),
        device_serial_number="0",
        content_label="HEPASCREEN",
        content_description="Liver and spleen (automatic)",
        series_description="HepaScreen liver/spleen segmentation",
        omit_empty_frames=True,
    )


def _code(value: str, meaning: str):
    from highdicom.sr import CodedConcept

    return CodedConcept(value=value[:16], scheme_designator=CODING_SCHEME, meaning=meaning[:64])


# Row field -> (code value, meaning, unit kind). Every numeric field the SR carries.
SR_GLOBAL_MEASUREMENTS = {
    "ratio": ("LSRATIO", "Liver/spleen attenuation ratio", "ratio"),
    "ratio_ci_low": ("LSRATIO_CI_LOW", "Liver/spleen ratio 95% CI lower bound", "ratio"),
    "ratio_ci_high": ("LSRATIO_CI_HIGH", "Liver/spleen ratio 95% CI upper bound", "ratio"),
    "ratio_mean_pairwise": ("LSRATIO_PAIRWISE", "Mean of pairwise cube ratios", "ratio"),
    "liver_minus_spleen_hu": ("LMINUSS_HU", "Liver minus spleen attenuation", "hu"),
    "n_pairs": ("N_PAIRS", "Number of liver-spleen cube pairs", "count"),
    # Which criterion produced which number (docs/phase.md): the PDFF estimate holds on
    # unenhanced CT only, the liver-HU interval goes with the ratio grade or pv_assessment.
    "pdff_estimate_pct": ("PDFF_EST", "PDFF estimate from unenhanced liver HU", "percent"),
    "liver_hu_ci_low": ("LIVER_HU_CI_LOW", "Liver attenuation 95% CI lower bound", "hu"),
    "liver_hu_ci_high": ("LIVER_HU_CI_HIGH", "Liver attenuation 95% CI upper bound", "hu"),
}
SR_SHORT_CODES = {
    "liver_spleen_ratio": "LS_RATIO",
    "portal_venous_liver_hu": "PV_LIVER_HU",
    "moderate_steatosis_likely": "PV_LIKELY",
    "moderate_steatosis_possible": "PV_POSSIBLE",
    "moderate_steatosis_unlikely": "PV_UNLIKELY",
}
# Row field -> (code value, meaning) of the phase and criterion evaluations.
SR_PHASE_EVALUATIONS = {
    "phase": ("PHASE", "Contrast phase"),
    "phase_source": ("PHASE_SOURCE", "Contrast phase read from"),
    "criterion": ("CRITERION", "Steatosis criterion applied for this phase"),
    "pv_assessment": ("PV_ASSESSMENT", "Portal-venous liver attenuation assessment"),
}
ORGAN_FIELDS = {
    "Liver": ("liver_hu", "liver_volume_ml"),
    "Spleen": ("spleen_hu", "spleen_volume_ml"),
}


def _finite(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if np.isfinite(f) else None


def write_dicom_sr(
    source,
    row: dict,
    out_path: str | Path,
    *,
    seg_path: str | Path | None = None,
    series_uid: str | None = None,
    model_name: str | None = None,
    uid_settings: str | None = None,
    allow_failed: bool = False,
    study: dict | None = None,
    series_case_id: str | None = None,
) -> Path:
    """Write the measurements of one scan as a DICOM TID 1500 measurement report (atomically).

    Content: liver and spleen mean attenuation (HU) and volume (mL) in one group per organ
    (TID 1411 referencing the SEG's segments when ``seg_path`` is given, else TID 1501
    with the organ as finding site); one TID 1501 group with the liver/spleen ratio, its
    95 % interval bounds, the pairwise-mean ratio, liver minus spleen (HU), the number of
    pairs, the grade and every flag as coded evaluations (scheme ``99HEPASCREEN``); the
    algorithm name and version on every group and as the observing device.

    Parameters
    ----------
    source : str, Path or sequence of paths
        The source DICOM series (see :func:`source_series`).
    row : dict
        The scan's result row (``results.csv`` columns).
    out_path : str or Path
        Where to write the ``.dcm`` file.
    seg_path : str or Path, optional
        The DICOM SEG written by :func:`write_dicom_seg` for the same scan.
    series_uid : str, optional
        The series to use when ``source`` holds several.
    model_name : str, optional
        Segmentation model, written into the algorithm identification.
    uid_settings : str, optional
        The model and measurement settings as text. Given, the SR's UIDs are derived
        from the source instances and this text (:func:`derive_uid`): a re-run or a
        re-sent study gives the same objects and a PACS keeps one copy. None: new UIDs.
    allow_failed : bool
        For an error row, write an SR that says the screening failed (grade
        ``INDETERMINATE``, status ``FAILED``, no measurements; the error text is not
        copied: it may quote paths) instead of refusing (the DICOM node does).
    study : dict, optional
        The study's answer (a :func:`client.pipeline.study.study_answer` row): written as one more
        group "Study answer" (study grade, criterion, whether this series answered, the
        answering series' ratio / liver HU / PDFF estimate / portal-venous assessment),
        so that each series' SR of a multi-series study carries the study's answer.
    series_case_id : str, optional
        This series' case_id, to say whether it is the one that answered the study.

    Returns
    -------
    Path
        ``out_path``.

    Raises
    ------
    ScanReadError
        The source is not a readable DICOM image series, or cannot carry an SR (no
        Study or Series Instance UID, or SOP Instance UID).
    ValueError
        The row is an error row (nothing measured) and ``allow_failed`` is False.
    """
    import highdicom as hd
    import pydicom

    failed = row.get("status") == "error"
    if failed and not allow_failed:
        raise ValueError(f"{row.get('case_id')}: no measurements for a scan that failed")
    hs = source_series(source, series_uid)
    uid_key = _uid_key(hs, uid_settings)
    model = model_name or row.get("model")
    name = f"{ALGORITHM_NAME} {model}" if model else ALGORITHM_NAME
    algo = hd.sr.AlgorithmIdentification(name=name[:64], version=_version())
    units = _sr_units(hd)
    seg = pydicom.dcmread(str(seg_path), stop_before_pixels=True) if seg_path else None
    groups = _organ_groups(hd, row, algo, units, uid_key, hs, seg)
    groups.append(_ratio_group(hd, row, algo, units, uid_key, failed))
    if study is not None:
        groups.append(_study_group(hd, study, series_case_id, algo, units, uid_key))
    report = _measurement_report(hd, groups, name, uid_key)
    evidence = _source_datasets(hs, "SR")
    if seg is not None:
        evidence.append(seg)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*person name.*", category=UserWarning)
        sr = _comprehensive_sr(hd, evidence, report, uid_key)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_path, ".dcm") as tmp:
        sr.save_as(tmp)
    return out_path


def _sr_units(hd) -> dict:
    """Unit kind -> UCUM concept, for every unit kind the SR's measurements use."""
    from pydicom.sr.codedict import codes

    return {
        "hu": codes.UCUM.HounsfieldUnit,
        "ratio": codes.UCUM.NoUnits,
        "count": codes.UCUM.NoUnits,
        "ml": hd.sr.CodedConcept("mL", "UCUM", "milliliter"),
        "percent": hd.sr.CodedConcept("%", "UCUM", "percent"),
    }


def _organ_groups(hd, row: dict, algo, units: dict, uid_key, hs, seg) -> list:
    """One group per organ: mean attenuation and volume; TID 1411 referencing the SEG's
    segment when ``seg`` is given, else TID 1501 with the organ as finding site."""
    from pydicom.sr.codedict import codes

    groups = []
    for k, (organ, (hu_key, vol_key)) in enumerate(ORGAN_FIELDS.items(), start=1):
        site = getattr(codes.SCT, organ)
        ms = []
        hu, vol = _finite(row.get(hu_key)), _finite(row.get(vol_key))
        if hu is not None:
            ms.append(
                hd.sr.Measurement(
                    name=codes.DCM.AttenuationCoefficient,
                    value=hu,
                    unit=units["hu"],
                    derivation=codes.SCT.Mean,
                    algorithm_id=algo,
                )
            )
        if vol is not None:
            ms.append(
                hd.sr.Measurement(
                    name=codes.SCT.Volume, value=vol, unit=units["ml"], algorithm_id=algo
                )
            )
        tracking = hd.sr.TrackingIdentifier(
            uid=derive_uid(uid_key, f"sr.tracking.{organ}"), identifier=f"{organ} measurements"
        )
        common = dict(
            tracking_identifier=tracking,
            finding_type=site,
            finding_sites=[hd.sr.FindingSite(site)],
            algorithm_id=algo,
            measurements=ms or None,
        )
        if seg is None:
            groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(**common))
            continue
        ref = hd.sr.ReferencedSegment(
            sop_class_uid=seg.SOPClassUID,
            sop_instance_uid=seg.SOPInstanceUID,
            segment_number=k,
            source_series=hd.sr.SourceSeriesForSegmentation(hs[0].series_uid),
        )
        groups.append(
            hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                referenced_segment=ref, **common
            )
        )
    return groups


def _ratio_group(hd, row: dict, algo, units: dict, uid_key, failed: bool):
    """The TID 1501 group of the scan's answer: the ratio and its interval, the numbers of
    each criterion (:data:`SR_GLOBAL_MEASUREMENTS`), grade, phase, criterion, status, flags."""
    return _answer_group(
        hd, (row, SR_GLOBAL_MEASUREMENTS), _row_evaluations(hd, row, failed), algo, units,
        (derive_uid(uid_key, "sr.tracking.ratio"), "Liver/spleen attenuation"),
        ("LSRATIO", "Liver/spleen attenuation ratio"),
    )  # fmt: skip


def _answer_group(hd, values, evaluations: list, algo, units: dict, tracking, finding):
    """One TID 1501 group: the measurements of ``values = (dict, {key: (code, meaning,
    unit kind)})`` that are finite numbers, ``evaluations``, tracked as ``tracking =
    (uid, identifier)`` with finding type ``finding = (code, meaning)``."""
    source, table = values
    ms = []
    for key, (code, meaning, unit) in table.items():
        v = _finite(source.get(key))
        if v is not None:
            ms.append(hd.sr.Measurement(_code(code, meaning), v, units[unit], algorithm_id=algo))
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=tracking[0], identifier=tracking[1]),
        finding_type=_code(*finding),
        algorithm_id=algo,
        measurements=ms or None,
        qualitative_evaluations=evaluations,
    )


def _row_evaluations(hd, row: dict, failed: bool) -> list:
    """Coded evaluations of a row: grade, phase and criterion words, FAILED, every flag."""
    evals = [
        hd.sr.QualitativeEvaluation(
            _code("GRADE", "Hepatic steatosis grade (liver/spleen ratio)"),
            _code(str(row.get("grade") or "indeterminate").upper(), str(row.get("grade"))),
        )
    ]
    for key, (code, meaning) in SR_PHASE_EVALUATIONS.items():
        v = str(row.get(key) or "")
        if v:  # code values are at most 16 characters: the words stay in the meaning
            value = SR_SHORT_CODES.get(v, v.upper())
            evals.append(hd.sr.QualitativeEvaluation(_code(code, meaning), _code(value, v)))
    if failed:
        evals.append(
            hd.sr.QualitativeEvaluation(
                _code("STATUS", "Screening status"),
                _code("FAILED", "screening failed; nothing was measured"),
            )
        )
    for f in _flags(row):
        evals.append(
            hd.sr.QualitativeEvaluation(_code("FLAG", "Quality flag"), _code(f.upper(), f))
        )
    return evals


def _measurement_report(hd, groups: list, name: str, uid_key):
    """TID 1500 around ``groups``, the algorithm as the observing device."""
    from pydicom.sr.codedict import codes

    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=derive_uid(uid_key, "sr.device"),
            name=name[:64],
            manufacturer_name=MANUFACTURER,
            model_name=_version(),
        ),
    )
    return hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.cid100.CTUnspecifiedBodyRegion,
        imaging_measurements=groups,
    )


# Study-answer field -> (code value, meaning, unit kind).
SR_STUDY_MEASUREMENTS = {
    "ratio": ("STUDY_LSRATIO", "Study answer: liver/spleen attenuation ratio", "ratio"),
    "liver_hu": ("STUDY_LIVER_HU", "Study answer: liver attenuation", "hu"),
    "pdff_estimate_pct": ("STUDY_PDFF", "Study answer: PDFF estimate", "percent"),
}


def _study_group(hd, study: dict, case_id: str | None, algo, units: dict, uid_key):
    """The TID 1501 group carrying a study's answer (client.pipeline.study.study_answer)."""
    grade = str(study.get("grade") or "indeterminate")
    criterion = str(study.get("criterion") or "none")
    answer = str(study.get("answer_case_id") or "")
    by = "NONE" if not answer else ("THIS" if case_id and answer == case_id else "OTHER")
    by_meaning = {
        "NONE": "no series answered the study",
        "THIS": "this series answered the study",
        "OTHER": "another series of the study answered it",
    }[by]
    evals = [
        hd.sr.QualitativeEvaluation(
            _code("STUDY_GRADE", "Study hepatic steatosis grade"), _code(grade.upper(), grade)
        ),
        hd.sr.QualitativeEvaluation(
            _code("STUDY_CRITERION", "Criterion of the study answer"),
            _code(SR_SHORT_CODES.get(criterion, criterion.upper()), criterion),
        ),
        hd.sr.QualitativeEvaluation(
            _code("ANSWERED_BY", "Series that answered the study"), _code(by, by_meaning)
        ),
    ]
    pv = study.get("pv_assessment")
    if pv:
        evals.append(
            hd.sr.QualitativeEvaluation(
                _code("STUDY_PV_ASSESS", "Study answer: portal-venous liver assessment"),
                _code(SR_SHORT_CODES.get(str(pv), str(pv).upper()), str(pv)),
            )
        )
    return _answer_group(
        hd, (study, SR_STUDY_MEASUREMENTS), evals, algo, units,
        (derive_uid(uid_key, "sr.tracking.study"), "Study answer"), ("STUDY", "Study answer"),
    )  # fmt: skip


def _comprehensive_sr(hd, evidence, report, uid_key=None):
    return hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report,
        series_instance_uid=derive_uid(uid_key, "sr.series"),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=derive_uid(uid_key, "sr.sop"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        series_description="HepaScreen liver/spleen measurements",
    )


def _flags(row: dict) -> Sequence[str]:
    flags = row.get("flags") or ""
    return flags if isinstance(flags, (list, tuple)) else [f for f in str(flags).split(";") if f]


def write_dicom_qc(
    source,
    png_path: str | Path,
    out_path: str | Path,
    *,
    series_uid: str | None = None,
    uid_settings: str | None = None,
) -> Path:
    """Write a QC picture as a DICOM Secondary Capture of the source's study (atomically).

    Marked ``BurnedInAnnotation YES``: the picture's caption is burned into the pixels
    (measurements, grade, flags and the case_id; the DICOM node's case_ids are hashes).
    The Patient and Study attributes are copied from the source, as for the SEG/SR.

    Parameters
    ----------
    source : str, Path or sequence of paths
        The source DICOM series (see :func:`source_series`).
    png_path : str or Path
        The QC picture (``qc/<case_id>.png``).
    out_path : str or Path
        Where to write the ``.dcm`` file.
    series_uid : str, optional
        The series to use when ``source`` holds several.
    uid_settings : str, optional
        As for :func:`write_dicom_seg`: fixed UIDs from the source and this text.

    Returns
    -------
    Path
        ``out_path``.

    Raises
    ------
    ScanReadError
        The source is not a readable DICOM image series, or cannot carry the picture.
    """
    import highdicom as hd
    from PIL import Image

    hs = source_series(source, series_uid)
    ref = _source_datasets(hs, "QC secondary capture")[0]
    uid_key = _uid_key(hs, uid_settings)
    with Image.open(png_path) as im:
        rgb = np.ascontiguousarray(np.asarray(im.convert("RGB")))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*person name.*", category=UserWarning)
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=ref,
            pixel_array=rgb,
            photometric_interpretation="RGB",
            bits_allocated=8,
            coordinate_system="PATIENT",
            series_instance_uid=derive_uid(uid_key, "qc.series"),
            series_number=QC_SERIES_NUMBER,
            sop_instance_uid=derive_uid(uid_key, "qc.sop"),
            instance_number=1,
            manufacturer=MANUFACTURER,
            patient_orientation=("L", "P"),  # the axial panels (radiological view)
            transfer_syntax_uid="1.2.840.10008.1.2.1",
        )
    sc.BurnedInAnnotation = "YES"
    if "Laterality" not in sc:
        sc.Laterality = ""  # Type 2C: abdomen, not a paired structure (empty, not absent)
    sc.SeriesDescription = "HepaScreen QC picture"
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_path, ".dcm") as tmp:
        sc.save_as(tmp)
    return out_path
