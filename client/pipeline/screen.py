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

import hashlib
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from client.core import contract
from client.core.errors import ConfigError, ScanReadError, ScreeningError
from client.outputs import results
from client.reading.discover import ScanSource, source_for_path
from client.reading.scan import ScanVolume

DEVICES = ("cpu", "gpu")
MASK_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")


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


@dataclass
class Segmentation:
    """A label map with the model's own confidence, as a segmenter may return it.

    Attributes
    ----------
    labels : ndarray [z, y, x] uint8
        On the scan's grid (1 liver, 2 spleen).
    confidence : ndarray [z, y, x] uint8, optional
        ``round(255 * p)``, p the softmax probability of the predicted class, on the
        same grid (:data:`client.core.contract.CONFIDENCE_NAME`); 0 outside the box of the
        labelled voxels (the measurement reads it inside the organs only).
    confidence_floor : dict, optional
        ``{"liver": f, "spleen": f}``: the gate floors the model's config declares
        (:data:`client.core.contract.CONFIDENCE_FLOOR_PARAM`).
    classes : dict, optional
        ``{name: label value}`` of every class ``labels`` carries (liver 1, spleen 2,
        and the neighbours a model or a label map has: aorta, portal vein, IVC,
        kidneys, ... read by the contrast-phase rules); None: liver and spleen only.
    """

    labels: np.ndarray
    confidence: np.ndarray | None = None
    confidence_floor: dict | None = None
    classes: dict | None = None


def as_segmentation(out) -> Segmentation:
    """A segmenter's result as a :class:`Segmentation` (a bare label map: no confidence)."""
    return out if isinstance(out, Segmentation) else Segmentation(out)


@runtime_checkable
class Segmenter(Protocol):
    """Turns a scan into a liver/spleen label map on the scan's own grid (1 liver, 2 spleen)."""

    kind: str  # "triton" | "masks": the ``segmenter`` column

    def segment(self, scan: ScanVolume, source: ScanSource, timer: StageTimer):
        """Label map ``[z, y, x]`` uint8 on ``scan``'s grid, or a :class:`Segmentation`
        carrying the model's confidence too; raises a ScreeningError on failure."""
        ...

    def describe(self) -> dict:
        """``model_name``, ``model_version``, ``model_sha256`` (None where not applicable)."""
        ...


class TritonSegmenter:
    """The served VNet behind Triton, through :class:`client.serving.supervisor.SupervisedSegmenter`
    (per-request deadlines, restarts of a dead or frozen bundled server, quick failure of
    a dead remote endpoint, this run's statistics).

    Use :meth:`bundled` (start the bundled server) or :meth:`connect` (a running server).

    Parameters
    ----------
    client : object
        Anything with ``submit(tensor) -> Future``, ``model_shape``, ``preprocess_spec``,
        ``model_name``, ``statistics()`` and ``close()`` (a started ``SupervisedSegmenter``,
        an ``EndpointPool`` or a ``client.serving.triton.SegmentationClient``).
    model_sha256 : str, optional
        SHA-256 of the served model file, when known (the bundled server's repository).
    repository : Path, optional
        The bundled server's model repository (None for a remote server).
    """

    kind = "triton"

    def __init__(self, client, model_sha256: str | None = None, repository: Path | None = None):
        self.client = client
        self.model_sha256 = model_sha256
        self.repository = repository

    @classmethod
    def bundled(
        cls,
        model_repository: Path | str | None = None,
        *,
        device: str = "cpu",
        log_path: Path | str | None = None,
        max_in_flight: int = contract.DEFAULT_MAX_IN_FLIGHT,
        **supervisor_kw,
    ) -> TritonSegmenter:
        """Start the bundled Triton server and connect to it (stopped by :meth:`close`).

        ``model_repository`` is found by the rule of :mod:`client.core.paths` when omitted;
        ``device="gpu"`` loads the model's ``configs/gpu.pbtxt`` (ONNX Runtime CUDA provider).
        """
        from client.core.paths import model_repository as find_repository
        from client.serving.supervisor import SupervisedSegmenter

        repo = find_repository(model_repository)
        extra = ["--model-config-name=gpu"] if device == "gpu" else []
        sup = SupervisedSegmenter(
            None, model_repository=repo, log_path=log_path, max_in_flight=max_in_flight,
            server_kwargs={"extra_args": extra}, **supervisor_kw,
        ).start()  # fmt: skip
        return cls(sup, model_file_sha256(repo), repo)

    @classmethod
    def connect(
        cls, url: str, *, max_in_flight: int = contract.DEFAULT_MAX_IN_FLIGHT, **client_kw
    ) -> TritonSegmenter:
        """Use the Triton server at ``url`` (``host:port``); ``client_kw`` (TLS options, ...)
        go to :class:`client.serving.triton.SegmentationClient`."""
        from client.serving.supervisor import SupervisedSegmenter

        sup = SupervisedSegmenter(url, max_in_flight=max_in_flight, client_kwargs=client_kw)
        return cls(sup.start())

    def segment(self, scan: ScanVolume, source: ScanSource, timer: StageTimer):
        """Preprocess as the served model declares (``client.preprocess_spec``), infer every
        window, stitch and map the labels back onto the scan's grid.

        Returns the label map, or a :class:`Segmentation` with the model's confidence map
        (mapped the same way) when the served model has the confidence output.
        """
        from client.reading.preprocess import preprocess_scan, to_scan_grid

        with timer("preprocess"):
            windows, record = preprocess_scan(scan, self.preprocess_spec)
            windows = np.ascontiguousarray(windows)
        # Only asked of a client that has the output (older drop-ins lack the keyword).
        kw = {"with_confidence": True} if getattr(self.client, "has_confidence", False) else {}
        with timer("infer"):
            # One request per window: the dynamic batcher merges them with other scans'
            # requests, and ``submit``'s back-pressure bounds what is in flight. The
            # stage ends when the last window's labels are back.
            outs = [f.result() for f in [self.client.submit(w, **kw) for w in windows]]
            if kw:
                labels = np.stack([o[0] for o in outs])
                confidence = None if outs[0][1] is None else np.stack([o[1] for o in outs])
            else:
                labels, confidence = np.stack(outs), None
        classes = getattr(self.client, "classes", None)
        with timer("map_back"):
            return Segmentation(
                to_scan_grid(labels, record),
                # only inside the labelled box: the measurement reads it in the organs
                None if confidence is None else to_scan_grid(confidence, record, within=labels),
                getattr(self.client, "confidence_floor", None) if confidence is not None else None,
                classes if classes and len(classes) > 2 else None,
            )

    @property
    def preprocess_spec(self):
        """The served model's :class:`client.reading.preprocess.PreprocessSpec` (a client without
        one, e.g. an older drop-in, is taken as ``resize`` at its ``model_shape``)."""
        from client.reading.preprocess import as_spec

        spec = getattr(self.client, "preprocess_spec", None)
        return spec if spec is not None else as_spec(self.client.model_shape)

    def describe(self) -> dict:
        version = None
        grpc = getattr(self.client, "client", self.client)  # SupervisedSegmenter -> its client
        try:  # the model's served versions (tritonclient metadata)
            meta = grpc._client.get_model_metadata(self.client.model_name, as_json=True)
            version = ",".join(meta.get("versions", [])) or None
        except Exception:
            pass
        return {
            "model_name": self.client.model_name,
            "model_version": version,
            "model_sha256": self.model_sha256,
        }

    def statistics(self) -> dict | None:
        """This run's inference statistics (None when the server does not answer)."""
        from client.core.errors import InferenceError

        try:
            return self.client.statistics()
        except InferenceError:
            return None

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> TritonSegmenter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class MaskFolderSegmenter:
    """Label maps brought by the user (``--masks DIR``) instead of the model.

    For a scan with case_id ``C`` it reads ``DIR/C.nii.gz`` (or ``.nii``, ``.nrrd``,
    ``.mha``), a multilabel map with the values of ``label_map``; or, failing that,
    TotalSegmentator's per-organ output folder ``DIR/C/liver.nii.gz`` +
    ``DIR/C/spleen.nii.gz`` (binary masks). A map is resampled onto the scan by
    nearest neighbour only when it covers the same physical box; otherwise the scan
    gets the error "mask does not match scan".

    Parameters
    ----------
    folder : Path
    label_map : str or dict
        A key of :data:`client.core.contract.LABEL_MAPS` or ``{"liver": v, "spleen": v}``.
    """

    kind = "masks"
    repository = None

    def __init__(self, folder: Path | str, label_map: str | dict = "default"):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise ConfigError(f"--masks {folder}: not a folder")
        if isinstance(label_map, str) and label_map not in contract.LABEL_MAPS:
            raise ConfigError(
                f"label map {label_map!r}: expected one of {', '.join(contract.LABEL_MAPS)}"
            )
        self.label_map = label_map

    def find(self, case_id: str) -> tuple:
        """The mask file(s) for ``case_id``: ``(multilabel,)`` or ``((name, file), ...)`` of a
        per-organ folder (liver, spleen, and the neighbours it holds); () when none."""
        for s in MASK_SUFFIXES:
            p = self.folder / f"{case_id}{s}"
            if p.is_file():
                return (p,)
            if p.exists():
                raise ScanReadError(f"{p}: expected a label map file, found a folder")
        organ_dir = self.folder / case_id
        if organ_dir.is_dir():
            organs = []
            for organ in contract.STRUCTURE_LABELS:
                hits = [organ_dir / f"{organ}{s}" for s in MASK_SUFFIXES]
                hit = next((p for p in hits if p.is_file()), None)
                if hit is None and organ in ("liver", "spleen"):
                    raise ScanReadError(
                        f"{organ_dir}: per-organ mask folder without {organ}.nii.gz"
                    )
                if hit is not None:
                    organs.append((organ, hit))
            return tuple(organs)
        return ()

    def segment(self, scan: ScanVolume, source: ScanSource, timer: StageTimer) -> np.ndarray:
        from client.reading.io import read_label_map

        with timer("read"):
            files = self.find(source.case_id)
            if not files:
                raise ScanReadError(
                    f"{self.folder / (source.case_id + '.nii.gz')}: label map not found "
                    f"(nor a per-organ folder {self.folder / source.case_id}/liver.nii.gz)"
                )
            for f in files:
                check_mask_matches_scan(f if len(files) == 1 else f[1], scan)
            if len(files) == 1:
                labels = read_label_map(files[0], scan, self.label_map)
                values = (
                    contract.LABEL_MAPS[self.label_map]
                    if isinstance(self.label_map, str)
                    else self.label_map
                )
                names = [n for n in values if n in contract.STRUCTURE_LABELS]
            else:  # TotalSegmentator's per-organ folder: liver, spleen, neighbours if there
                labels = np.zeros(scan.shape, np.uint8)
                names = []
                for name, f in files:
                    value = contract.STRUCTURE_LABELS[name]
                    m = read_label_map(f, scan, {name: 1}) > 0
                    labels[m & (labels == 0) if name not in ("liver", "spleen") else m] = value
                    names.append(name)
            classes = {n: contract.STRUCTURE_LABELS[n] for n in names}
            return Segmentation(labels, classes=classes if len(classes) > 2 else None)

    def describe(self) -> dict:
        return {"model_name": None, "model_version": None, "model_sha256": None}

    def statistics(self) -> None:
        return None

    def close(self) -> None:
        pass

    def __enter__(self) -> MaskFolderSegmenter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_segmenter(
    stack,
    *,
    masks: Path | str | None = None,
    label_map: str | dict = "default",
    url: str | None = None,
    model_repository: Path | str | None = None,
    device: str = "cpu",
    server_log: Path | str | None = None,
    max_in_flight: int = contract.DEFAULT_MAX_IN_FLIGHT,
    **client_kw,
) -> Segmenter:
    """The segmenter a run asks for; whatever it starts is stopped by ``stack`` (an ExitStack).

    ``masks`` gives a :class:`MaskFolderSegmenter`; ``url`` a :class:`TritonSegmenter`
    on that server; neither the bundled server (:meth:`TritonSegmenter.bundled`).
    ``client_kw`` (TLS options) go to :class:`client.serving.triton.SegmentationClient`.
    """
    if masks:
        return MaskFolderSegmenter(masks, label_map)
    if url:
        seg = TritonSegmenter.connect(url, max_in_flight=max_in_flight, **client_kw)
    else:
        seg = TritonSegmenter.bundled(
            model_repository, device=device, log_path=server_log, max_in_flight=max_in_flight
        )
    return stack.enter_context(seg)


def _physical_box(size, spacing, origin, direction) -> np.ndarray:
    """(2, 3) min/max LPS corners of the voxel-edge box of an ITK image (size/spacing x, y, z)."""
    d = np.asarray(direction, float).reshape(3, 3)
    corners = []
    for i in (-0.5, size[0] - 0.5):
        for j in (-0.5, size[1] - 0.5):
            for k in (-0.5, size[2] - 0.5):
                corners.append(np.asarray(origin) + d @ (np.array([i, j, k]) * np.asarray(spacing)))
    c = np.array(corners)
    return np.stack([c.min(0), c.max(0)])


def check_mask_matches_scan(path: Path, scan: ScanVolume) -> None:
    """Refuse a label map that does not cover the scan's physical box (header only).

    Same grid, or the same box within ``max(1.5 voxels, 1 mm)`` per side (a map saved
    in another orientation or at another resolution is resampled); anything else,
    e.g. the label map of another scan, raises ScanReadError "mask does not match scan".
    """
    from client.reading.io import read_image_info

    # Checked header read (client.reading.io): truncated, empty or mis-named files get clear errors.
    info = read_image_info(path, what="label map")
    if info["dimension"] != 3:
        raise ScanReadError(f"{path}: expected a 3D label map, got {info['dimension']}D")
    m_size, m_spacing = tuple(info["size"]), tuple(info["spacing"])
    m_box = _physical_box(m_size, m_spacing, info["origin"], info["direction"])
    s_size, s_spacing = scan.shape[::-1], scan.spacing[::-1]
    s_box = _physical_box(s_size, s_spacing, scan.origin, scan.direction)
    tol = max(1.0, 1.5 * max(max(s_spacing), max(m_spacing)))
    off = float(np.abs(m_box - s_box).max())
    if off > tol:
        fmt = lambda b: " x ".join(f"{lo:.0f}..{hi:.0f}" for lo, hi in zip(b[0], b[1]))  # noqa: E731
        raise ScanReadError(
            f"{path}: mask does not match scan {scan.source}: the label map covers "
            f"{fmt(m_box)} mm (LPS), the scan {fmt(s_box)} mm; sides differ by up to "
            f"{off:.1f} mm (tolerance {tol:.1f} mm; grids {m_size} vs {tuple(s_size)})"
        )


def model_file_sha256(model_repository: Path | str) -> str | None:
    """SHA-256 of ``<repository>/hepascreen_vnet/1/<onnx_file>`` (None when absent)."""
    path = Path(model_repository) / contract.MODEL_NAME / "1" / "model.onnx"
    if not path.is_file():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


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
        files = write_outputs(src, scan, labels, row, segmenter, config, assessment)
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
) -> dict:
    """Per-scan files in ``config.out_dir``: mask (with 3D Slicer / ITK-SNAP label files),
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
        classes = getattr(getattr(segmenter, "client", None), "classes", None) or {}
        names = {**contract.LABEL_NAMES, **{int(v): str(n) for n, v in classes.items()}}
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
    "MaskFolderSegmenter",
    "ScanResult",
    "ScreenConfig",
    "Segmenter",
    "StageTimer",
    "TritonSegmenter",
    "check_mask_matches_scan",
    "open_segmenter",
    "covariates",
    "screen_scan",
    "write_outputs",
]
