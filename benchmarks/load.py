"""Load generator for a HepaScreen Triton endpoint (a small perf_analyzer for this model).

``python -m benchmarks.load [--url HOST:PORT] [--concurrency 1 2 4 8 16] [--batch 1]
[--requests 32] [--max-seconds-per-level 60] [--out FILE.json]``

perf_analyzer is not installable here (the package index serves a 0.1.0 stub),
so this drives the model over gRPC itself, closed loop: for each concurrency C,
C threads each send one request (a batch of ``--batch`` volumes), wait for the
answer and send the next, until ``--requests`` requests are done or
``--max-seconds-per-level`` has passed. Inputs are real preprocessed volumes: the
shared real CT (``../shared/data/totalseg_example``) and phantoms, run through
``client.reading.preprocess.preprocess`` at the input size the served model's
configuration declares (so the same command drives the 64^3 CPU model and a
128^3 GPU deployment).

Reported per level: volumes/s and requests/s, latency p50/p95/p99/mean/max
(seconds, client side, one request), the server's inference and execution counts
(executions < inferences when the dynamic batcher merged requests), and bytes
per request: tensor payload and serialized gRPC messages (request + response
protobuf; HTTP/2 framing adds 9 bytes per frame on top). The JSON result carries
machine info, server version and the model's batching configuration.

Without ``--url`` the bundled server (``client.serving.server.EmbeddedServer``) is started
on loopback ports and stopped at the end. With ``--url`` the endpoint is the one
the user names (TLS options as in ``client.serving.triton``); the generator never picks
targets of its own. Every level is bounded in count and time, so a run stops by
itself.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks._common import machine_info, save_result  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data"
REAL_CT = ("totalseg_example/ct.nii.gz",)


@dataclass
class LoadConfig:
    """What :func:`run_load` does.

    Attributes
    ----------
    url : str or None
        ``host:port`` of a Triton gRPC endpoint; None starts the bundled server on loopback.
    concurrency : list of int
        Requests kept in flight, one level each, in order.
    batch : int
        Volumes per request (at most the model's ``max_batch_size``).
    requests : int
        Requests per level (after warm-up).
    max_seconds_per_level : float
        A level stops sending after this long even if fewer requests were done.
    warmup : int
        Requests sent (and not counted) before the first level.
    phantoms : int
        Phantom volumes in the input pool (beside the real CT).
    data_dir : Path
        Folder of the shared real data (``totalseg_example/ct.nii.gz``).
    model_name : str
    timeout_s : float
        Per-request deadline.
    ssl, root_certificates, private_key, certificate_chain :
        TLS options, as :class:`client.serving.triton.SegmentationClient`.
    model_repository : Path or None
        Repository for the bundled server (default: the project's CPU repository).
    server_pgid : int or None
        Process group of a server on this machine, to report its CPU seconds per volume
        (set automatically for the bundled server).
    """

    url: str | None = None
    concurrency: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16])
    batch: int = 1
    requests: int = 32
    max_seconds_per_level: float = 60.0
    warmup: int = 2
    phantoms: int = 3
    data_dir: Path = DEFAULT_DATA
    model_name: str = "hepascreen_vnet"
    timeout_s: float = 300.0
    ssl: bool = False
    root_certificates: str | None = None
    private_key: str | None = None
    certificate_chain: str | None = None
    model_repository: Path | None = None
    server_pgid: int | None = None


def input_pool(
    model_shape, data_dir: Path, phantoms: int = 3
) -> tuple[list[np.ndarray], list[str]]:
    """Real preprocessed volumes at ``model_shape``: the shared real CT plus phantoms.

    Returns
    -------
    volumes : list of uint8 arrays ``[1, z, y, x]``
    names : list of str
        Where each volume came from.

    Raises
    ------
    FileNotFoundError
        If the shared real CT is missing and no phantom was asked for.
    """
    from client.reading.io import read_scan
    from client.reading.preprocess import preprocess
    from training.phantoms import make_phantom

    vols, names = [], []
    for rel in REAL_CT:
        path = Path(data_dir) / rel
        if path.exists():
            scan = read_scan(path)  # one whole-volume (resize) input: load, not accuracy
            vols.append(preprocess(scan.array, scan.spacing, scan.direction, model_shape)[0])
            names.append(f"real CT {rel}")
    for seed in range(phantoms):
        p = make_phantom(9100 + seed, shape=(48, 96, 96))
        vols.append(preprocess(p.hu, p.spacing, p.direction, model_shape)[0])
        names.append(f"phantom seed {9100 + seed}")
    if not vols:
        raise FileNotFoundError(
            f"no input volumes: {Path(data_dir) / REAL_CT[0]} not found and --phantoms is 0"
        )
    for v in vols:
        if v.dtype != np.uint8 or v.shape != (1, *model_shape):
            raise ValueError(
                f"preprocessing gave {v.dtype} {v.shape}, expected uint8 (1, {model_shape})"
            )
    return vols, names


def percentiles(latencies_s) -> dict:
    """p50/p95/p99, mean and max of latencies (seconds), NumPy's linear interpolation."""
    a = np.asarray(latencies_s, dtype=np.float64)
    if a.size == 0:
        return {"p50_s": None, "p95_s": None, "p99_s": None, "mean_s": None, "max_s": None}
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {
        "p50_s": round(float(p50), 5),
        "p95_s": round(float(p95), 5),
        "p99_s": round(float(p99), 5),
        "mean_s": round(float(a.mean()), 5),
        "max_s": round(float(a.max()), 5),
    }


class _Endpoint:
    """One gRPC connection per worker, made the way client.serving.triton makes its own."""

    def __init__(self, cfg: LoadConfig, url: str):
        import tritonclient.grpc as g

        from client.serving.triton import MAX_MESSAGE_BYTES

        self._g = g
        self.model_name = cfg.model_name
        self.timeout_s = cfg.timeout_s
        self.client = g.InferenceServerClient(
            url,
            ssl=cfg.ssl,
            root_certificates=cfg.root_certificates,
            private_key=cfg.private_key,
            certificate_chain=cfg.certificate_chain,
            channel_args=[
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ],
        )

    def request(self, batch: np.ndarray):
        from client.core import contract

        g = self._g
        inp = g.InferInput(contract.INPUT_NAME, list(batch.shape), "UINT8")
        inp.set_data_from_numpy(batch)
        out = g.InferRequestedOutput(contract.OUTPUT_NAME)
        return inp, out

    def infer(self, inp, out):
        from client.core import contract

        res = self.client.infer(
            self.model_name, [inp], outputs=[out], client_timeout=self.timeout_s
        )
        return res, res.as_numpy(contract.OUTPUT_NAME)

    def close(self):
        try:
            self.client.close()
        except Exception:
            pass


def wire_bytes(endpoint: _Endpoint, batch: np.ndarray) -> dict:
    """Bytes of one request and its answer: raw tensors and serialized gRPC messages."""
    from tritonclient.grpc._utils import _get_inference_request

    inp, out = endpoint.request(batch)
    req = _get_inference_request(
        endpoint.model_name, [inp], "", "", [out], 0, False, False, 0, None, None
    )
    res, labels = endpoint.infer(inp, out)
    resp = res.get_response()
    payload_in, payload_out = int(batch.nbytes), int(labels.nbytes)
    msg_in, msg_out = int(req.ByteSize()), int(resp.ByteSize())
    return {
        "payload_in": payload_in,
        "payload_out": payload_out,
        "payload_total": payload_in + payload_out,
        "grpc_message_in": msg_in,
        "grpc_message_out": msg_out,
        "grpc_message_total": msg_in + msg_out,
        "protocol_overhead": msg_in + msg_out - payload_in - payload_out,
        "per_volume_total": round((msg_in + msg_out) / batch.shape[0], 1),
    }


def process_group_cpu_s(pgid: int) -> float | None:
    """User + system CPU seconds of every live process in process group ``pgid`` (Linux /proc).

    The bundled server runs in its own process group (the tritonserver binary and its
    Python-backend stubs), so this is the server's CPU time. None where /proc is absent.
    """
    import os

    tick = os.sysconf("SC_CLK_TCK")
    total, found = 0, False
    try:
        entries = os.listdir("/proc")
    except OSError:
        return None
    for e in entries:
        if not e.isdigit():
            continue
        try:
            with open(f"/proc/{e}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields after the name: state, ppid, pgrp, ...
            total += int(fields[11]) + int(fields[12])  # utime, stime
            found = True
    return total / tick if found else None


def measure_level(
    endpoints, batches, concurrency, n_requests, max_seconds, server_pgid=None, expected_before=None
) -> dict:
    """:func:`run_level` plus the server's statistics and CPU seconds per volume.

    CPU seconds per volume (this client process; the server's process group when
    ``server_pgid`` is given) barely change when other processes compete for the cores,
    unlike volumes/s: on a shared machine they are the steadier measure of cost.

    Triton counts a request in its statistics only after the response has gone out, so
    the counts are read once they have caught up: with ``expected_before`` (inferences
    the server must have counted before this level: earlier requests of this run), until
    they reach it; without, until two reads 0.2 s apart agree. Either wait is capped at
    5 s. Requests from other clients of the same server are counted too.
    """
    import time as _time

    before = _settled_statistics(endpoints[0], expected_before)
    cpu0 = _time.process_time()
    srv0 = process_group_cpu_s(server_pgid) if server_pgid else None
    lvl = run_level(endpoints, batches, concurrency, n_requests, max_seconds)
    cpu1 = _time.process_time()
    srv1 = process_group_cpu_s(server_pgid) if server_pgid else None
    after = _settled_statistics(endpoints[0], before["inference_count"] + lvl["volumes"])
    n_inf = after["inference_count"] - before["inference_count"]
    n_exec = after["execution_count"] - before["execution_count"]
    lvl["server_inference_count"] = n_inf
    lvl["server_execution_count"] = n_exec
    lvl["mean_server_batch"] = round(n_inf / n_exec, 2) if n_exec else None
    vols = max(1, lvl["volumes"])
    lvl["client_cpu_s_per_volume"] = round((cpu1 - cpu0) / vols, 4)
    if srv0 is not None and srv1 is not None:
        lvl["server_cpu_s_per_volume"] = round((srv1 - srv0) / vols, 4)
    return lvl


def _settled_statistics(endpoint, expected=None, timeout_s: float = 5.0) -> dict:
    """Statistics once ``inference_count >= expected`` (or stable for 0.2 s when None)."""
    deadline = time.monotonic() + timeout_s
    last = _statistics(endpoint)
    while time.monotonic() < deadline:
        if expected is not None and last["inference_count"] >= expected:
            return last
        time.sleep(0.2 if expected is None else 0.05)
        now = _statistics(endpoint)
        if expected is None and now == last:
            return now
        last = now
    return last


def _statistics(endpoint: _Endpoint) -> dict:
    st = endpoint.client.get_inference_statistics(endpoint.model_name, as_json=True)
    ms = st.get("model_stats", [{}])[0]
    return {
        "inference_count": int(ms.get("inference_count", 0)),
        "execution_count": int(ms.get("execution_count", 0)),
    }


def run_level(endpoints, batches, concurrency: int, n_requests: int, max_seconds: float) -> dict:
    """One closed-loop level: ``concurrency`` workers share ``n_requests`` requests."""
    lock = threading.Lock()
    state = {"next": 0, "errors": [], "stopped_by_time": False}
    latencies: list[float] = []
    volumes = [0]
    t0 = time.perf_counter()
    deadline = t0 + max_seconds

    def worker(w: int):
        ep = endpoints[w]
        while True:
            with lock:
                i = state["next"]
                if i >= n_requests:
                    return
                if time.perf_counter() >= deadline:
                    state["stopped_by_time"] = True
                    return
                state["next"] += 1
            batch = batches[i % len(batches)]
            inp, out = ep.request(batch)
            t = time.perf_counter()
            try:
                _, labels = ep.infer(inp, out)
                ok = labels is not None and labels.shape[0] == batch.shape[0]
                err = None if ok else f"bad answer shape {None if labels is None else labels.shape}"
            except Exception as exc:  # noqa: BLE001 - count and report, keep the load going
                err = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
            dt = time.perf_counter() - t
            with lock:
                if err is None:
                    latencies.append(dt)
                    volumes[0] += batch.shape[0]
                else:
                    state["errors"].append(err)

    threads = [threading.Thread(target=worker, args=(w,), daemon=True) for w in range(concurrency)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    return {
        "concurrency": concurrency,
        "requests_ok": len(latencies),
        "requests_failed": len(state["errors"]),
        "errors": sorted(set(state["errors"]))[:5],
        "volumes": volumes[0],
        "wall_s": round(wall, 4),
        "volumes_per_s": round(volumes[0] / wall, 3) if wall > 0 else None,
        "requests_per_s": round(len(latencies) / wall, 3) if wall > 0 else None,
        "stopped_by_time_limit": state["stopped_by_time"],
        "latency": percentiles(latencies),
    }


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def _drive(cfg: LoadConfig, url: str) -> dict:
    from client.serving.triton import SegmentationClient

    with SegmentationClient(
        url,
        cfg.model_name,
        ssl=cfg.ssl,
        root_certificates=cfg.root_certificates,
        private_key=cfg.private_key,
        certificate_chain=cfg.certificate_chain,
        timeout_s=cfg.timeout_s,
    ) as sc:
        model = sc.model
        model_shape, max_batch, model_cfg = model.model_shape, model.max_batch_size, model.config
    if cfg.batch < 1 or cfg.batch > max_batch:
        raise ValueError(
            f"--batch must be 1..{max_batch} (the model's max_batch_size), got {cfg.batch}"
        )
    vols, names = input_pool(model_shape, cfg.data_dir, cfg.phantoms)
    batches = [
        np.ascontiguousarray(
            np.concatenate([vols[(i + j) % len(vols)][None] for j in range(cfg.batch)])
        )
        for i in range(len(vols))
    ]
    n_workers = max(cfg.concurrency)
    endpoints = [_Endpoint(cfg, url) for _ in range(n_workers)]
    try:
        server_meta = endpoints[0].client.get_server_metadata(as_json=True)
        expected = _settled_statistics(endpoints[0])["inference_count"]
        wire = wire_bytes(endpoints[0], batches[0])
        for i in range(cfg.warmup):
            endpoints[0].infer(*endpoints[0].request(batches[i % len(batches)]))
        expected += cfg.batch * (1 + cfg.warmup)
        levels = []
        for c in cfg.concurrency:
            lvl = measure_level(
                endpoints,
                batches,
                c,
                cfg.requests,
                cfg.max_seconds_per_level,
                cfg.server_pgid,
                expected_before=expected,
            )
            expected += lvl["volumes"]
            levels.append(lvl)
    finally:
        for ep in endpoints:
            ep.close()
    batching = model_cfg.get("dynamic_batching")
    return {
        "machine": machine_info(
            numpy=np.__version__,
            tritonclient=_version("tritonclient"),
            python=platform.python_version(),
        ),
        "endpoint": {
            "url": url,
            "tls": cfg.ssl,
            "server": {k: server_meta.get(k) for k in ("name", "version")},
        },
        "model": {
            "name": cfg.model_name,
            "input_shape": [1, *model_shape],
            "max_batch_size": max_batch,
            "dynamic_batching": batching if batching is not None else "off",
            "instance_group": model_cfg.get("instance_group"),
            "backend": model_cfg.get("backend") or model_cfg.get("platform"),
        },
        "config": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in asdict(cfg).items()
            if k not in ("private_key", "certificate_chain", "root_certificates")
        },
        "inputs": names,
        "bytes_per_request": wire,
        "levels": levels,
    }


def run_load(cfg: LoadConfig) -> dict:
    """Drive the endpoint over ``cfg.concurrency`` and return the result (JSON-ready dict).

    Raises
    ------
    client.core.errors.InferenceError
        The endpoint is unreachable or its model breaks the HepaScreen contract.
    ValueError
        A batch larger than the model's ``max_batch_size``, or empty settings.
    """
    if not cfg.concurrency or min(cfg.concurrency) < 1:
        raise ValueError(f"concurrency levels must be >= 1, got {cfg.concurrency}")
    if cfg.requests < 1 or cfg.max_seconds_per_level <= 0:
        raise ValueError("--requests must be >= 1 and --max-seconds-per-level > 0")
    if cfg.url:
        return _drive(cfg, cfg.url)
    from client.serving.server import EmbeddedServer

    with EmbeddedServer(cfg.model_repository) as srv:
        from dataclasses import replace

        res = _drive(replace(cfg, server_pgid=srv.pid), srv.grpc_url)
        res["endpoint"]["bundled_server"] = True
        return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.load", description=__doc__.splitlines()[0]
    )
    ap.add_argument(
        "--url",
        help="host:port of a Triton gRPC endpoint (default: start the bundled server on loopback)",
    )
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--batch", type=int, default=1, help="volumes per request")
    ap.add_argument("--requests", type=int, default=32, help="requests per concurrency level")
    ap.add_argument("--max-seconds-per-level", type=float, default=60.0)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--phantoms", type=int, default=3, help="phantom volumes beside the real CT")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="shared real data folder")
    ap.add_argument("--model", default="hepascreen_vnet")
    ap.add_argument("--model-repository", type=Path, help="repository for the bundled server")
    ap.add_argument("--timeout-s", type=float, default=300.0)
    ap.add_argument("--ssl", action="store_true")
    ap.add_argument("--root-certificates")
    ap.add_argument("--private-key")
    ap.add_argument("--certificate-chain")
    ap.add_argument("--out", type=Path, help="write the JSON result here too")
    args = ap.parse_args(argv)
    cfg = LoadConfig(
        url=args.url,
        concurrency=args.concurrency,
        batch=args.batch,
        requests=args.requests,
        max_seconds_per_level=args.max_seconds_per_level,
        warmup=args.warmup,
        phantoms=args.phantoms,
        data_dir=args.data,
        model_name=args.model,
        timeout_s=args.timeout_s,
        ssl=args.ssl,
        root_certificates=args.root_certificates,
        private_key=args.private_key,
        certificate_chain=args.certificate_chain,
        model_repository=args.model_repository,
    )
    from client.core.errors import ScreeningError

    try:
        res = run_load(cfg)
    except (ScreeningError, ValueError, FileNotFoundError) as exc:
        print(f"load: {exc}", file=sys.stderr)
        return 2
    if args.out:
        save_result(res, args.out.parent, args.out.name)
    else:
        print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
