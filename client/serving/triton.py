"""gRPC client of the served VNet: contract checks, the served model, retries.

gRPC errors are translated into :class:`client.core.errors.InferenceError` where they
enter (as tritonclient's own ``raise_error_grpc`` does); transient ones
(UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED) are retried with
exponential backoff. The model config is parsed once, at connection, into a
:class:`client.serving.model.ServedModel` (:func:`served_model`, from the parsers
below). Requests in flight are :class:`client.serving.futures.InferenceFutures`'
business.
"""

from __future__ import annotations

import time

import numpy as np

from client.core import contract
from client.core.errors import InferenceError
from client.serving.model import ServedModel

# Explicit message limits: a 128^3 uint8 batch of 8 is 16.8 MB; plain gRPC's
# default receive limit is 4 MB.
MAX_MESSAGE_BYTES = 2**31 - 1
_TRANSIENT = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED")


def _grpc():
    import tritonclient.grpc as grpcclient

    return grpcclient


def _status_name(exc) -> str:
    status = exc.status() if hasattr(exc, "status") else None
    return str(status or "").rsplit(".", 1)[-1]


class SegmentationClient:
    """Client of the ``hepascreen_vnet`` model on a Triton server (a
    :class:`client.serving.model.Transport`).

    Parameters
    ----------
    url : str
        ``host:port`` of the server's gRPC endpoint.
    model_name : str
    timeout_s : float
        Per-request deadline (client timeout) in seconds.
    max_in_flight : int
        Requests meant to be outstanding at once (the bound of
        :class:`client.serving.futures.InferenceFutures` over this client).
    retries : int
        Retries of a transient failure (backoff 0.5 s, 1 s, 2 s, ...).
    ssl, root_certificates, private_key, certificate_chain :
        TLS options passed to tritonclient for remote servers.
    ready_timeout_s : float
        How long to wait for server and model readiness at construction.

    Attributes
    ----------
    model : client.serving.model.ServedModel
        The served model, read at construction.

    Raises
    ------
    InferenceError
        Server unreachable, model not ready, or the model's configuration disagrees
        with client/core/contract.py (names, dtypes, dims).
    """

    def __init__(
        self,
        url: str,
        model_name: str = contract.MODEL_NAME,
        *,
        timeout_s: float = 300.0,
        max_in_flight: int = contract.DEFAULT_MAX_IN_FLIGHT,
        retries: int = 3,
        ssl: bool = False,
        root_certificates: str | None = None,
        private_key: str | None = None,
        certificate_chain: str | None = None,
        ready_timeout_s: float = 30.0,
    ):
        g = _grpc()
        self.url = url
        self.timeout_s = timeout_s
        self.retries = retries
        self.max_in_flight = max(1, int(max_in_flight))
        channel_args = [
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ]
        try:
            self._client = g.InferenceServerClient(
                url,
                ssl=ssl,
                root_certificates=root_certificates,
                private_key=private_key,
                certificate_chain=certificate_chain,
                channel_args=channel_args,
            )
        except Exception as exc:
            raise InferenceError(f"cannot create a gRPC client for {url}: {exc}") from exc
        self._wait_ready(model_name, ready_timeout_s)
        self.model: ServedModel = self._read_model(model_name)

    # -- start-up checks ---------------------------------------------------------
    def _wait_ready(self, name: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        while True:
            try:
                c = self._client
                if c.is_server_live(client_timeout=2.0) and c.is_server_ready(client_timeout=2.0):
                    if c.is_model_ready(name, client_timeout=2.0):
                        return
                    last = f"model {name!r} is not ready"
                else:
                    last = "server not ready"
            except Exception as exc:
                last = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if time.monotonic() >= deadline:
                raise InferenceError(f"Triton at {self.url}: {last} (waited {timeout_s:.0f} s)")
            time.sleep(0.5)

    def _read_model(self, name: str) -> ServedModel:
        try:
            cfg = self._client.get_model_config(name, as_json=True, client_timeout=10.0)["config"]
            meta = self._client.get_model_metadata(name, as_json=True, client_timeout=10.0)
        except Exception as exc:
            raise InferenceError(
                f"Triton at {self.url}: cannot read the model config: {exc}"
            ) from exc
        problems = check_model_config(cfg)
        if problems:
            raise InferenceError(
                f"model {name!r} at {self.url} does not match the HepaScreen contract: "
                + "; ".join(problems)
            )
        return served_model(cfg, meta)

    # -- inference ----------------------------------------------------------------
    def infer(
        self,
        batch: np.ndarray,
        *,
        timeout_s: float | None = None,
        retries: int | None = None,
    ) -> dict[str, np.ndarray]:
        """Segment a batch: uint8 ``[N, 1, z, y, x]`` -> every output of the model by name
        (``model.output_names``: the labels uint8 ``[N, z, y, x]`` and, when served, the
        confidence map of the same shape); retries included.

        Parameters
        ----------
        batch : numpy.ndarray
        timeout_s : float, optional
            Deadline of each attempt (default: the client's ``timeout_s``).
        retries : int, optional
            Retries of a transient failure (default: the client's ``retries``).

        Raises
        ------
        InferenceError
            With ``status`` set to the gRPC status name of the last failure.
        """
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        retries = self.retries if retries is None else retries
        model = self.model
        batch = np.ascontiguousarray(batch)
        expected = tuple(model.input_shape)
        if batch.dtype != np.uint8 or batch.ndim != 5 or tuple(batch.shape[1:]) != expected:
            raise InferenceError(
                f"expected a uint8 batch [N, {', '.join(map(str, expected))}], got {batch.dtype} {list(batch.shape)}"
            )
        g = _grpc()
        delay = 0.5
        for attempt in range(retries + 1):
            inp = g.InferInput(model.input_name, list(batch.shape), "UINT8")
            inp.set_data_from_numpy(batch)
            outs = [g.InferRequestedOutput(name) for name in model.output_names]
            try:
                res = self._client.infer(model.name, [inp], outputs=outs, client_timeout=timeout_s)
                shape = (batch.shape[0], *model.model_shape)
                got = {}
                for name in model.output_names:
                    a = res.as_numpy(name)
                    if a is None or a.shape != shape:
                        raise InferenceError(
                            f"server returned {name} {None if a is None else a.shape} "
                            f"for a batch of {batch.shape[0]}"
                        )
                    got[name] = a.astype(np.uint8, copy=False)
                return got
            except InferenceError:
                raise
            except Exception as exc:
                status = _status_name(exc)
                if status in _TRANSIENT and attempt < retries:
                    time.sleep(delay)
                    delay *= 2
                    continue
                msg = exc.message() if hasattr(exc, "message") else str(exc)
                raise InferenceError(
                    f"inference on {model.name!r} at {self.url} failed "
                    f"({status or type(exc).__name__}): {msg}",
                    status=status or None,
                ) from exc
        raise InferenceError("unreachable")  # pragma: no cover

    def is_live(self, timeout_s: float = 2.0) -> bool:
        """True when the server answers a liveness check within ``timeout_s``."""
        try:
            return bool(self._client.is_server_live(client_timeout=timeout_s))
        except Exception:
            return False

    def statistics(self, timeout_s: float = 10.0) -> dict:
        """Inference statistics of the model: ``inference_count``, ``execution_count``, ..."""
        try:
            st = self._client.get_inference_statistics(
                self.model.name, as_json=True, client_timeout=timeout_s
            )
        except Exception as exc:
            raise InferenceError(f"cannot read statistics from {self.url}: {exc}") from exc
        ms = st.get("model_stats", [{}])[0]
        return {
            "inference_count": int(ms.get("inference_count", 0)),
            "execution_count": int(ms.get("execution_count", 0)),
            "batch_stats": ms.get("batch_stats", []),
        }

    def close(self) -> None:
        try:
            self._client.close()
        except Exception:
            pass

    def __enter__(self) -> SegmentationClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def served_model(cfg: dict, metadata: dict | None = None) -> ServedModel:
    """The :class:`client.serving.model.ServedModel` of a model config (JSON form, checked
    by :func:`check_model_config`) and its metadata (``versions``; None: unknown)."""
    inp = cfg["input"][0]
    return ServedModel(
        name=str(cfg.get("name") or (metadata or {}).get("name") or contract.MODEL_NAME),
        versions=tuple(str(v) for v in (metadata or {}).get("versions", [])),
        input_name=str(inp["name"]),
        input_shape=tuple(int(d) for d in inp["dims"]),
        input_dtype=str(inp["data_type"]),
        preprocess_spec=model_preprocess_spec(cfg),
        classes=model_classes(cfg),
        output_names=tuple(str(o["name"]) for o in cfg["output"]),
        confidence_floor=model_confidence_floor(cfg),
        max_batch_size=int(cfg.get("max_batch_size", 0) or 0),
        config=cfg,
    )


def model_preprocess_spec(cfg: dict):
    """The :class:`client.reading.preprocess.PreprocessSpec` a model config (JSON form) declares.

    Its ``parameters`` :data:`client.core.contract.PREPROCESS_PARAM` (absent: ``resize``) and
    :data:`client.core.contract.PREPROCESS_SPACING_PARAM`, with the input dims' spatial part
    as the model shape.

    Raises
    ------
    client.core.errors.PreprocessError
        Unknown mode or a bad spacing (the message names the parameter and its value).
    """
    from client.reading.preprocess import PreprocessSpec

    dims = [int(d) for d in cfg["input"][0]["dims"]]
    return PreprocessSpec.from_parameters(cfg.get("parameters") or {}, tuple(dims[1:]))


def check_model_config(cfg: dict) -> list[str]:
    """Differences between a Triton model config (JSON form) and client/core/contract.py
    (tensor names, dtypes, dims, batching, and the declared preprocessing)."""
    problems = []
    inputs, outputs = cfg.get("input", []), cfg.get("output", [])
    if len(inputs) != 1 or not 1 <= len(outputs) <= 2:
        return [f"expected 1 input and 1 or 2 outputs, got {len(inputs)} and {len(outputs)}"]
    i, o = inputs[0], outputs[0]
    extra = outputs[1] if len(outputs) == 2 else None
    if i.get("name") != contract.INPUT_NAME:
        problems.append(f"input name: expected {contract.INPUT_NAME}, got {i.get('name')}")
    if o.get("name") != contract.OUTPUT_NAME:
        problems.append(f"output name: expected {contract.OUTPUT_NAME}, got {o.get('name')}")
    if i.get("data_type") != contract.INPUT_DTYPE:
        problems.append(f"input dtype: expected {contract.INPUT_DTYPE}, got {i.get('data_type')}")
    if o.get("data_type") != contract.OUTPUT_DTYPE:
        problems.append(f"output dtype: expected {contract.OUTPUT_DTYPE}, got {o.get('data_type')}")
    idims = [int(d) for d in i.get("dims", [])]
    odims = [int(d) for d in o.get("dims", [])]
    if len(idims) != 4 or idims[0] != contract.INPUT_CHANNELS or min(idims) < 1:
        problems.append(f"input dims: expected [1, z, y, x], got {idims}")
    elif odims != idims[1:]:
        problems.append(f"output dims: expected {idims[1:]}, got {odims}")
    if extra is not None:  # the optional confidence map: same dims as the labels
        if extra.get("name") != contract.CONFIDENCE_NAME:
            problems.append(
                f"second output name: expected {contract.CONFIDENCE_NAME}, got {extra.get('name')}"
            )
        if extra.get("data_type") != contract.CONFIDENCE_DTYPE:
            problems.append(
                f"{contract.CONFIDENCE_NAME} dtype: expected {contract.CONFIDENCE_DTYPE}, "
                f"got {extra.get('data_type')}"
            )
        cdims = [int(d) for d in extra.get("dims", [])]
        if cdims != odims:
            problems.append(f"{contract.CONFIDENCE_NAME} dims: expected {odims}, got {cdims}")
    if int(cfg.get("max_batch_size", 0) or 0) < 1:
        problems.append("max_batch_size must be >= 1 (batched model)")
    if not problems:
        from client.core.errors import PreprocessError

        try:
            model_preprocess_spec(cfg)
        except PreprocessError as exc:
            problems.append(f"preprocessing parameters: {exc}")
        try:
            model_confidence_floor(cfg)
        except ValueError as exc:
            problems.append(str(exc))
        try:
            model_classes(cfg)
        except ValueError as exc:
            problems.append(str(exc))
    return problems


def string_parameter(cfg: dict, name: str) -> str | None:
    """A model config's string parameter (``{"string_value": ...}`` in the JSON form, or
    a plain string); None when absent or blank."""
    raw = (cfg.get("parameters") or {}).get(name)
    if isinstance(raw, dict):
        raw = raw.get("string_value")
    return None if raw is None or not str(raw).strip() else str(raw)


def _pairs(raw: str):
    """``"a=b,c=d"`` -> ``(a, "=", b)`` triples (``sep`` empty where a part has no '=')."""
    return [(k, sep, v.strip()) for k, sep, v in (p.partition("=") for p in raw.split(","))]


def model_classes(cfg: dict) -> dict[str, int]:
    """The classes a model config declares, ``{name: label value}``, from the parameter
    :data:`client.core.contract.CLASSES_PARAM` (``"1=liver,2=spleen,3=kidney_right,..."``);
    liver and spleen only when absent (:data:`client.core.contract.LABEL_NAMES`).

    Raises
    ------
    ValueError
        Malformed value, a repeated value or name, or liver/spleen not at 1 and 2.
    """
    raw = string_parameter(cfg, contract.CLASSES_PARAM)
    if raw is None:
        return {"liver": contract.LABEL_LIVER, "spleen": contract.LABEL_SPLEEN}
    name = contract.CLASSES_PARAM
    out: dict[str, int] = {}
    for val, sep, cls in _pairs(raw):
        try:
            v = int(val)
        except ValueError:
            v = -1
        if not sep or not cls or not 0 < v < 256 or cls in out or v in out.values():
            raise ValueError(
                f"{name}: expected 'VALUE=NAME,...' with distinct values 1..255 and names, "
                f"got {raw!r}"
            )
        out[cls] = v
    if out.get("liver") != contract.LABEL_LIVER or out.get("spleen") != contract.LABEL_SPLEEN:
        raise ValueError(f"{name}: liver must be 1 and spleen 2, got {raw!r}")
    return out


def model_has_confidence(cfg: dict) -> bool:
    """Whether a model config (JSON form) serves the optional confidence map."""
    return any(o.get("name") == contract.CONFIDENCE_NAME for o in cfg.get("output", []))


def model_confidence_floor(cfg: dict) -> dict[str, float] | None:
    """The gate's per-organ confidence floors a model config declares, e.g.
    ``{"liver": 0.93, "spleen": 0.95}`` from ``"liver=0.93,spleen=0.95"`` in the parameter
    :data:`client.core.contract.CONFIDENCE_FLOOR_PARAM`; None when absent.

    Raises
    ------
    ValueError
        Malformed value, an organ other than liver/spleen, a floor outside (0, 1), or a
        floor declared by a model without the confidence output.
    """
    raw = string_parameter(cfg, contract.CONFIDENCE_FLOOR_PARAM)
    if raw is None:
        return None
    name = contract.CONFIDENCE_FLOOR_PARAM
    if not model_has_confidence(cfg):
        raise ValueError(f"{name} is set but the model has no {contract.CONFIDENCE_NAME} output")
    out: dict[str, float] = {}
    for organ, sep, val in _pairs(raw):
        organ = organ.strip()
        try:
            v = float(val)
        except ValueError:
            v = float("nan")
        if not sep or organ not in ("liver", "spleen") or not 0.0 < v < 1.0:
            raise ValueError(
                f"{name}: expected 'liver=F,spleen=F' with floors in (0, 1), got {raw!r}"
            )
        out[organ] = v
    return out
