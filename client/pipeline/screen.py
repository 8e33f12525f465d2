"""The per-scan screening pipeline as a library: ``screen_scan(source, segmenter, config)``.

The CLI (``client.batch``), notebooks and distributed workers all call
:func:`screen_scan`; nothing here reads command-line options. Data flow of one
scan (:func:`_stages`, top to bottom)::

    read (client.reading.io)  ->  segment (Segmenter: preprocess -> infer -> map back, or read a mask)
      ->  measure (postprocess.assess)  ->  outputs (mask, QC picture, DICOM SEG/SR)

Timing, the error policy (a bad scan is an error row, never an exception) and the
row wrap that list in :func:`screen_scan`.

Example (the README's library example)::

    from client import ScreenConfig, TritonSegmenter, screen_scan

    with TritonSegmenter.bundled() as segmenter:  # or TritonSegmenter.connect("host:8001")
        result = screen_scan("ct.nii.gz", segmenter, ScreenConfig())
    print(result.status, result.grade, result.row["ratio"], result.row["flags"])
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from client.core import contract
from client.core.errors import ConfigError, ScreeningError
from client.outputs import results
from client.pipeline.segmenters import Segmentation, Segmenter, as_segmentation
from client.reading.discover import ScanSource, source_for_path
from client.reading.scan import ScanVolume

DEVICES = ("cpu", "gpu")


def _assess_config():
    from postprocess.config import AssessConfig

    return AssessConfig()


@dataclass(frozen=True)
class ScreenConfig:
    """Everything :func:`screen_scan` needs besides the scan and the segmenter.

    Attributes
    ----------
    assess : postprocess.AssessConfig
        The measurement (cubes, seed, contrast policy, thresholds).
    device : {"cpu", "gpu"}
        Array module of the measurement: NumPy/SciPy or CuPy (needs the ``gpu``
        extra and a CUDA device). Where the model runs is the segmenter's business.
    out_dir : Path, optional
        Folder for per-scan files (``masks/``, ``qc/``, ``dicom/``); None writes no file.
    write_masks : bool
        Write ``masks/<case_id>.nii.gz`` on the scan grid (not for ``--masks`` input).
    write_qc : bool
        Write ``qc/<case_id>.png``.
    dicom_seg, dicom_sr : bool
        Write ``dicom/<case_id>.seg.dcm`` / ``.sr.dcm`` for DICOM inputs
        (:mod:`client.outputs.dicom_out`; these copy the patient/study identifiers on purpose).
    link_uids : bool
        Put Study/Series Instance UIDs in the row (off: no identifiers in rows).
    """

    assess: object = field(default_factory=_assess_config)
    device: str = "cpu"
    out_dir: Path | None = None
    write_masks: bool = True
    write_qc: bool = True
    dicom_seg: bool = False
    dicom_sr: bool = False
    link_uids: bool = False

    def __post_init__(self):
        if self.device not in DEVICES:
            raise ConfigError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.out_dir is not None:
            object.__setattr__(self, "out_dir", Path(self.out_dir))


class StageTimer:
    """Seconds spent per stage (``with timer("read"): ...``) and the stage in progress."""

    def __init__(self):
        self.seconds = dict.fromkeys(contract.STAGES, 0.0)
        self.current: str | None = None

    @contextmanager
    def __call__(self, stage: str):
        self.current = stage
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - t0
        self.current = None


# --- covariates ---------------------------------------------------------------------
_COVARIATE_KEYS = {  # row column -> ScanVolume.metadata key (client.reading.dicom.SAFE_TAGS)
    "manufacturer": "manufacturer",
    "manufacturer_model": "manufacturer_model",
    "kvp": "kvp",
    "convolution_kernel": "convolution_kernel",
    "slice_thickness_mm": "slice_thickness",
    "contrast_agent": "contrast_agent",
    "series_description": "series_description",
}
_HEADER_TAGS = {  # read from the series' first file when the reader did not keep them
    "manufacturer_model": "ManufacturerModelName",
    "study_instance_uid": "StudyInstanceUID",
    "series_instance_uid": "SeriesInstanceUID",
}


def covariates(scan: ScanVolume, source: ScanSource, link_uids: bool = False) -> dict:
    """Acquisition covariates for the row: no identifiers unless ``link_uids``."""
    meta = scan.metadata
    row = {col: meta.get(key) for col, key in _COVARIATE_KEYS.items()}
    wanted = [c for c in _HEADER_TAGS if row.get(c) is None]
    if not link_uids:
        wanted = [c for c in wanted if not c.endswith("_uid")]
    if source.kind == "dicom" and wanted:
        first = source.files[0] if source.files else source.path
        if Path(first).is_dir():
            first = next((p for p in sorted(Path(first).iterdir()) if p.is_file()), None)
        try:
            import pydicom

            ds = pydicom.dcmread(
                str(first), stop_before_pixels=True, force=True,
                specific_tags=[_HEADER_TAGS[c] for c in wanted],
            )  # fmt: skip
            for c in wanted:
                v = ds.get(_HEADER_TAGS[c])
                row[c] = str(v) if v not in (None, "") else None
        except Exception:  # covariates are best effort: the scan itself was read
            pass
    for k in ("kvp", "slice_thickness_mm"):
        try:
            row[k] = None if row[k] is None else float(row[k])
        except (TypeError, ValueError):
            row[k] = None
    return row


# --- the pipeline -------------------------------------------------------------------
@dataclass
class ScanResult:
    """Outcome of :func:`screen_scan` for one scan.

    Attributes
    ----------
    case_id, source : str
    status : str
        ``ok``, ``flagged`` or ``error`` (:data:`client.core.contract.STATUSES`).
    row : dict
        The scan's result columns (schema order is the writer's business); run-level
        provenance (run_id, model, ...) is added by :class:`client.outputs.results.ResultStore`.
    assessment : postprocess.Assessment or None
        None when the scan failed.
    labels : numpy.ndarray or None
        The label map on the scan grid (None when the scan failed).
    files : dict
        Paths written (``mask``, ``qc``, ``dicom_seg``, ``dicom_sr``).
    stage_seconds : dict
    """

    case_id: str
    source: str
    status: str
    row: dict
    assessment: object = None
    labels: np.ndarray | None = None
    files: dict = field(default_factory=dict)
    stage_seconds: dict = field(default_factory=dict)

    @property
    def grade(self) -> str:
        return self.row.get("grade")

    @property
    def error(self) -> str:
        return self.row.get("error") or ""


def _as_source(source) -> ScanSource:
    if isinstance(source, ScanSource):
        return source
    return source_for_path(Path(source))


def _assess(scan: ScanVolume, labels, config: ScreenConfig, seg: Segmentation | None = None):
    from client.serving.gpu import measurement_slot
    from postprocess import assess
    from postprocess._xp import to_device
    from postprocess.phase import tag_phase

    gpu = config.device == "gpu"
    # A GPU slot bounds device memory independently of --concurrency (client/serving/gpu.py).
    with measurement_slot(gpu):
        return assess(
            to_device(scan.array, gpu),
            to_device(labels, gpu),
            scan.spacing,
            config.assess,
            direction=scan.direction,  # organ laterality check (postprocess.gate)
            confidence=None if seg is None else to_device(seg.confidence, gpu),
            confidence_floor=None if seg is None else seg.confidence_floor,
            classes=None if seg is None else seg.classes,
            # What the header says of contrast (agent tag, phase words in the description).
            tag=tag_phase(
                scan.metadata.get("contrast_agent"), scan.metadata.get("series_description")
            ),
        )


def _stages(src: ScanSource, segmenter: Segmenter, config: ScreenConfig, timer: StageTimer):
    """The data flow of one scan, top to bottom."""
    with timer("read"):
        scan = src.read()
    seg = as_segmentation(segmenter.segment(scan, src, timer))  # preprocess -> infer -> map back
    labels = seg.labels
    with timer("measure"):
        assessment = _assess(scan, labels, config, seg)
    row = _measured_row(scan, src, assessment, config)
    with timer("write"):
        files = write_outputs(
            src, scan, labels, row, segmenter, config, assessment, classes=seg.classes
        )
    return labels, assessment, row, files


def screen_scan(source, segmenter: Segmenter, config: ScreenConfig | None = None) -> ScanResult:
    """Screen one scan: read, segment, measure, write its files; never raises for a bad scan.

    Parameters
    ----------
    source : ScanSource, str or Path
        A discovered source, or an image file / DICOM folder (case_id from its name).
    segmenter : Segmenter
        :class:`TritonSegmenter`, :class:`MaskFolderSegmenter` or your own.
    config : ScreenConfig, optional

    Returns
    -------
    ScanResult
        ``status`` ``error`` with the message in ``row["error"]`` when the scan
        could not be measured (unreadable file, server failure, mask mismatch, ...).
    """
    config = config or ScreenConfig()
    src = _as_source(source)
    timer = StageTimer()
    t0 = time.perf_counter()
    labels = assessment = None
    files: dict = {}
    try:
        labels, assessment, row, files = _stages(src, segmenter, config, timer)
    except ScreeningError as exc:
        row = _error_row(str(exc))
    except MemoryError:
        row = _error_row(f"{src.path}: out of memory in stage {timer.current}")
    except Exception as exc:  # noqa: BLE001 - a bad scan never stops the batch
        row = _error_row(
            f"{src.path}: unexpected {type(exc).__name__} in stage {timer.current}: {exc}"
        )
        log_traceback(config.out_dir, src, timer.current, exc)
    row.update(
        case_id=src.case_id,
        source=str(src.path),
        source_id=src.source_id,
        study_id=src.study_id,
        source_fingerprint=src.fingerprint(),
        segmenter=segmenter.kind,
        seconds=round(time.perf_counter() - t0, 3),
        **{f"seconds_{k}": round(v, 4) for k, v in timer.seconds.items()},
    )
    return ScanResult(
        src.case_id,
        str(src.path),
        row["status"],
        row,
        assessment,
        labels,
        files,
        dict(timer.seconds),
    )


def _error_row(message: str) -> dict:
    return {
        "status": contract.STATUS_ERROR,
        "grade": contract.GRADE_INDETERMINATE,
        "error": message,
    }


def _measured_row(scan: ScanVolume, src: ScanSource, assessment, config: ScreenConfig) -> dict:
    row = dict(assessment.to_row())
    notes = [str(n) for n in scan.metadata.get("notes", [])]  # what the reader did
    extra = row.get("notes")  # what the measurement found
    notes += [extra] if isinstance(extra, str) and extra else list(extra or [])
    row["notes"] = "; ".join(notes)
    ev = row.get("contrast_evidence")
    if isinstance(ev, (list, tuple)):
        row["contrast_evidence"] = ";".join(str(x) for x in ev)
    row.update(covariates(scan, src, config.link_uids))
    flagged = bool(assessment.flags) or assessment.grade == contract.GRADE_INDETERMINATE
    row["status"] = contract.STATUS_FLAGGED if flagged else contract.STATUS_OK
    row["error"] = ""
    return row


def write_outputs(
    src: ScanSource,
    scan: ScanVolume,
    labels,
    row: dict,
    segmenter: Segmenter,
    config: ScreenConfig,
    assessment=None,
    *,
    classes: dict | None = None,
) -> dict:
    """Per-scan files in ``config.out_dir``: mask (with 3D Slicer / ITK-SNAP label files
    naming liver, spleen and the other ``classes`` ``{name: value}`` of the segmentation),
    QC picture, DICOM SEG/SR (as configured). Returns ``{kind: Path}``."""
    files: dict = {}
    out = config.out_dir
    if out is None:
        return files
    from postprocess._xp import to_numpy

    labels = to_numpy(labels)
    case = src.case_id
    paths = results.case_files(out, case)  # the OUT layout
    # The mask is the measurement's own record; the rest is optional: a failure there
    # keeps the measured row (flag + reason in notes, _optional_output).
    opt = lambda what, make: _optional_output(what, make, row, src, out)  # noqa: E731
    if config.write_masks and segmenter.kind != "masks":
        from client.reading.io import write_label_map
        from client.reading.labels_sidecar import write_label_sidecars

        files["mask"] = write_label_map(labels, scan, paths.mask)
        # Every class the model declares is in the mask, and named in the label files.
        names = {**contract.LABEL_NAMES, **{int(v): str(n) for n, v in (classes or {}).items()}}
        files.update(
            opt("label sidecars", lambda: write_label_sidecars(files["mask"], names)) or {}
        )
    if config.write_qc:
        from client.outputs.report import qc_png

        ratio = "n/a" if row.get("ratio") is None else f"{row['ratio']:.3f}"
        title = f"{case}  L/S ratio {ratio}  {row['grade']}  {row.get('flags', '')}"
        files["qc"] = opt("QC picture", lambda: qc_png(
            scan.array, labels, scan.spacing, paths.qc, title, scan.direction,
            row=row, assessment=assessment,
        ))  # fmt: skip
    if (config.dicom_seg or config.dicom_sr) and src.kind == "dicom":
        from client.outputs import dicom_out

        desc = segmenter.describe()
        model = desc.get("model_name")
        where = src.files or src.path
        # Same source, model and settings -> same SEG/SR UIDs (a PACS keeps one copy).
        settings = f"{desc.get('model_name')}|{desc.get('model_sha256')}|{config.assess!r}"
        if config.dicom_seg:
            files["dicom_seg"] = opt("DICOM SEG", lambda: dicom_out.write_dicom_seg(
                where, labels, row, paths.seg,
                scan=scan, series_uid=src.series_uid, model_name=model, uid_settings=settings,
            ))  # fmt: skip
        if config.dicom_sr:
            files["dicom_sr"] = opt("DICOM SR", lambda: dicom_out.write_dicom_sr(
                where, row, paths.sr,
                seg_path=files.get("dicom_seg"), series_uid=src.series_uid, model_name=model,
                uid_settings=settings,
            ))  # fmt: skip
    return {k: v for k, v in files.items() if v is not None}


OUTPUT_FLAG = "output_not_written"  # postprocess.flags.FLAGS


def _optional_output(what: str, make, row: dict, src: ScanSource, out: Path):
    """``make()``, or None when it fails: the row keeps its measurement and gets the flag
    :data:`OUTPUT_FLAG` with the reason in ``notes`` (status ``flagged``); an unexpected
    exception's traceback goes to ``OUT/errors.log`` (:func:`log_traceback`)."""
    try:
        return make()
    except Exception as exc:  # noqa: BLE001 - an optional output never costs the measurement
        if not isinstance(exc, ScreeningError):
            log_traceback(out, src, f"write {what}", exc)
        flags = [f for f in str(row.get("flags") or "").split(";") if f]
        row["flags"] = ";".join(flags + [OUTPUT_FLAG] * (OUTPUT_FLAG not in flags))
        detail = (
            str(exc)
            if isinstance(exc, ScreeningError)
            else f"unexpected {type(exc).__name__} (traceback in {ERRORS_LOG})"
        )
        reason = f"{what} not written: {detail}"
        row["notes"] = "; ".join(n for n in (row.get("notes"), reason) if n)
        if row.get("status") == contract.STATUS_OK:
            row["status"] = contract.STATUS_FLAGGED
        return None


ERRORS_LOG = "errors.log"


def log_traceback(out_dir: Path | None, src: ScanSource, stage: str | None, exc: BaseException):
    """Append an unexpected exception's traceback to ``OUT/errors.log`` (no-op without OUT).

    Identifier-free by construction: the scan is named by its ``source_id`` (a hash; rows
    carry it too), and only the exception type and the code frames are written, never
    the message or local values, which may quote DICOM values or paths.
    """
    if out_dir is None:
        return
    import datetime
    import traceback

    frames = traceback.format_list(traceback.extract_tb(exc.__traceback__))
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    text = (
        f"{when} source_id={src.source_id} stage={stage} {type(exc).__name__}"
        " (message: the row's error/notes)\n" + "".join(frames) + "\n"
    )
    try:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        with open(Path(out_dir) / ERRORS_LOG, "a", encoding="utf-8") as fh:
            fh.write(text)
    except OSError:
        pass  # the log is a debugging aid; the row already holds the error


__all__ = [
    "ScanResult",
    "ScreenConfig",
    "StageTimer",
    "covariates",
    "screen_scan",
    "write_outputs",
]
