"""The segmenters: what turns a scan into a label map on its own grid, and the one factory.

:class:`Segmenter` is the protocol :func:`client.pipeline.screen.screen_scan` calls;
:class:`TritonSegmenter` serves it from the model behind Triton (a
:class:`client.serving.model.Transport`: one bundled or remote server through
:class:`client.serving.supervisor.SupervisedSegmenter`, or several through
:class:`client.serving.endpoints.EndpointPool`, with requests in flight through
:class:`client.serving.futures.InferenceFutures`); :class:`MaskFolderSegmenter` reads
the label maps a user brings (``--masks``). :func:`open_segmenter` is the one factory the
CLI, the DICOM node, Ray workers and library users open a segmenter with.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from client.core import contract
from client.core.errors import ConfigError, InferenceError, ScanReadError
from client.reading.discover import ScanSource
from client.reading.scan import ScanVolume
from client.serving.futures import InferenceFutures
from client.serving.model import ServedModel, Transport

if TYPE_CHECKING:
    from client.pipeline.screen import StageTimer

MASK_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")


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
    """The served VNet behind Triton: preprocessing as the model declares it, one request
    per window through :class:`client.serving.futures.InferenceFutures`, the windows
    stitched back onto the scan's grid.

    Use :meth:`bundled` (start the bundled server), :meth:`connect` (running servers) or
    :func:`open_segmenter`.

    Parameters
    ----------
    transport : client.serving.model.Transport
        A started :class:`client.serving.supervisor.SupervisedSegmenter` (per-request
        deadlines, restarts of a dead or frozen bundled server, quick failure of a dead
        remote endpoint, this run's statistics), an
        :class:`client.serving.endpoints.EndpointPool` or a
        :class:`client.serving.triton.SegmentationClient`; closed by :meth:`close`.
    model_sha256 : str, optional
        SHA-256 of the served model file, when known (the bundled server's repository).
    repository : Path, optional
        The bundled server's model repository (None for a remote server).
    max_in_flight : int, optional
        Requests outstanding at once (default: ``transport.max_in_flight``).
    """

    kind = "triton"

    def __init__(
        self,
        transport: Transport,
        model_sha256: str | None = None,
        repository: Path | None = None,
        *,
        max_in_flight: int | None = None,
    ):
        self.transport = transport
        self.futures = InferenceFutures(transport, max_in_flight)
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
        cls,
        url,
        *,
        max_in_flight: int = contract.DEFAULT_MAX_IN_FLIGHT,
        probe_interval_s: float | None = None,
        wait_healthy_s: float | None = None,
        connect_timeout_s: float | None = None,
        **client_kw,
    ) -> TritonSegmenter:
        """Use the Triton server(s) at ``url``: a ``host:port`` or a list of them (one: a
        :class:`client.serving.supervisor.SupervisedSegmenter`; several: an
        :class:`client.serving.endpoints.EndpointPool`, whose ``probe_interval_s``,
        ``wait_healthy_s`` and ``connect_timeout_s`` apply). ``client_kw`` (TLS options,
        ...) go to :class:`client.serving.triton.SegmentationClient`."""
        from client.serving.endpoints import EndpointPool, unique_urls
        from client.serving.supervisor import SupervisedSegmenter

        urls = unique_urls(url)
        if len(urls) == 1:
            return cls(SupervisedSegmenter(
                urls[0], max_in_flight=max_in_flight, client_kwargs=client_kw
            ).start())  # fmt: skip
        pool_kw = {
            k: v
            for k, v in (
                ("probe_interval_s", probe_interval_s),
                ("wait_healthy_s", wait_healthy_s),
                ("connect_timeout_s", connect_timeout_s),
            )
            if v is not None
        }
        pool = EndpointPool(urls, max_in_flight=max_in_flight, client_kwargs=client_kw, **pool_kw)
        return cls(pool.start())

    @property
    def model(self) -> ServedModel:
        """The served model (:class:`client.serving.model.ServedModel`)."""
        return self.transport.model

    @property
    def preprocess_spec(self):
        """The served model's :class:`client.reading.preprocess.PreprocessSpec`."""
        return self.model.preprocess_spec

    def segment(self, scan: ScanVolume, source: ScanSource, timer: StageTimer):
        """Preprocess as the served model declares (``model.preprocess_spec``), infer every
        window, stitch and map the labels back onto the scan's grid.

        Returns a :class:`Segmentation`: the labels, and the model's confidence map
        (mapped the same way) with its floors when the served model has that output.
        """
        from client.reading.preprocess import preprocess_scan, to_scan_grid

        model = self.model
        with timer("preprocess"):
            windows, record = preprocess_scan(scan, model.preprocess_spec)
            windows = np.ascontiguousarray(windows)
        with timer("infer"):
            # One request per window: the dynamic batcher merges them with other scans'
            # requests, and ``submit``'s back-pressure bounds what is in flight. The
            # stage ends when the last window's outputs are back.
            outs = [f.result() for f in [self.futures.submit(w[None]) for w in windows]]
            labels = np.concatenate([o[contract.OUTPUT_NAME] for o in outs])
            confidence = (
                np.concatenate([o[contract.CONFIDENCE_NAME] for o in outs])
                if model.has_confidence
                else None
            )
        classes = model.classes
        with timer("map_back"):
            return Segmentation(
                to_scan_grid(labels, record),
                # only inside the labelled box: the measurement reads it in the organs
                None if confidence is None else to_scan_grid(confidence, record, within=labels),
                model.confidence_floor if confidence is not None else None,
                dict(classes) if len(classes) > 2 else None,
            )

    def describe(self) -> dict:
        return {
            "model_name": self.model.name,
            "model_version": self.model.version,
            "model_sha256": self.model_sha256,
        }

    def statistics(self) -> dict | None:
        """This run's inference statistics (None when the server does not answer)."""
        try:
            return self.transport.statistics()
        except InferenceError:
            return None

    def close(self) -> None:
        """Wait for the requests in flight, then close the transport (its server too)."""
        try:
            self.futures.close()
        finally:
            self.transport.close()

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
    url=None,
    model_repository: Path | str | None = None,
    device: str = "cpu",
    server_log: Path | str | None = None,
    max_in_flight: int = contract.DEFAULT_MAX_IN_FLIGHT,
    **client_kw,
) -> Segmenter:
    """The segmenter a run asks for; whatever it starts is stopped by ``stack`` (an ExitStack).

    ``masks`` gives a :class:`MaskFolderSegmenter`; ``url`` (a ``host:port`` or a list of
    them) a :class:`TritonSegmenter` on that server, or on several through an
    :class:`client.serving.endpoints.EndpointPool`; neither the bundled server
    (:meth:`TritonSegmenter.bundled`). ``client_kw`` (TLS options) go to
    :class:`client.serving.triton.SegmentationClient`.
    """
    from client.serving.endpoints import unique_urls

    if masks:
        return MaskFolderSegmenter(masks, label_map)
    urls = unique_urls(url)
    if urls:
        seg = TritonSegmenter.connect(urls, max_in_flight=max_in_flight, **client_kw)
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


__all__ = [
    "MASK_SUFFIXES",
    "MaskFolderSegmenter",
    "Segmentation",
    "Segmenter",
    "TritonSegmenter",
    "as_segmentation",
    "check_mask_matches_scan",
    "model_file_sha256",
    "open_segmenter",
]
