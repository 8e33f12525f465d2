"""The real bundled Triton server (nvidia-pytriton wheel) serving the shipped model."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from client import contract
from client.errors import InferenceError
from client.server import DEFAULT_REPOSITORY, EmbeddedServer
from client.triton import SegmentationClient

pytestmark = pytest.mark.server
ONNX = DEFAULT_REPOSITORY / contract.MODEL_NAME / "1" / "model.onnx"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); read its state.
    try:
        return Path(f"/proc/{pid}/stat").read_text(encoding="utf-8").split()[2] != "Z"
    except OSError:
        return False


def _group_alive(pgid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text(encoding="utf-8").rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                out.append(int(d.name))
    return out


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    log = tmp_path_factory.mktemp("server") / "server.log"
    with EmbeddedServer(log_path=log) as srv:
        pid = srv.pid
        yield srv
    assert not _alive(pid)


@pytest.fixture(scope="module")
def client(server):
    with SegmentationClient(server.grpc_url, max_in_flight=8) as c:
        yield c


@pytest.fixture(scope="module")
def ort_session():
    import onnxruntime as ort

    return ort.InferenceSession(str(ONNX), providers=["CPUExecutionProvider"])


def _phantom_inputs(model_shape, n):
    from client.preprocess import preprocess
    from training.phantoms import make_phantom

    out = []
    for seed in range(n):
        p = make_phantom(seed, shape=(48, 96, 96), spacing=(5.0, 3.5, 3.5))
        out.append(preprocess(p.hu, p.spacing, p.direction, model_shape)[0])
    return np.stack(out)


def test_client_reads_the_model_shape_from_the_server(client):
    assert len(client.model_shape) == 3 and client.max_batch_size >= 2


def test_outputs_equal_onnxruntime(client, ort_session):
    x = _phantom_inputs(client.model_shape, 3)
    (ref,) = ort_session.run(None, {contract.INPUT_NAME: x})
    assert np.array_equal(client.infer(x), ref)
    assert np.array_equal(client.infer(x[:1]), ref[:1])
    assert (ref == 1).mean() > 0.01  # the model segments something: a real comparison


def test_concurrent_requests_are_merged_by_the_dynamic_batcher(client, ort_session):
    x = _phantom_inputs(client.model_shape, 2)
    before = client.statistics()
    futures = [client.submit(x[i % 2]) for i in range(12)]
    results = [f.result() for f in futures]
    # Statistics are updated just after the responses are sent: poll briefly.
    deadline = time.monotonic() + 10
    while True:
        after = client.statistics()
        if (
            after["inference_count"] - before["inference_count"] >= 12
            or time.monotonic() > deadline
        ):
            break
        time.sleep(0.1)
    (ref,) = ort_session.run(None, {contract.INPUT_NAME: x})
    for i, r in enumerate(results):
        assert np.array_equal(r, ref[i % 2])
    n_inf = after["inference_count"] - before["inference_count"]
    n_exec = after["execution_count"] - before["execution_count"]
    assert n_inf == 12
    assert n_exec < n_inf, (n_exec, n_inf)


def test_bad_request_gets_an_error_and_the_server_lives_on(server, client):
    import tritonclient.grpc as g

    raw = g.InferenceServerClient(server.grpc_url)
    bad = np.zeros((1, 1, 8, 8, 8), np.uint8)
    inp = g.InferInput(contract.INPUT_NAME, list(bad.shape), "UINT8")
    inp.set_data_from_numpy(bad)
    with pytest.raises(Exception, match="unexpected shape|expected"):
        raw.infer(contract.MODEL_NAME, [inp])
    raw.close()
    with pytest.raises(InferenceError, match="expected a uint8 batch"):
        client.infer(bad)
    ok = client.infer(np.zeros((1, 1, *client.model_shape), np.uint8))
    assert ok.shape == (1, *client.model_shape)


def test_wrong_model_name_is_a_clear_error(server):
    with pytest.raises(InferenceError, match="nope"):
        SegmentationClient(server.grpc_url, model_name="nope", ready_timeout_s=2)


def test_server_binds_loopback_only(server):
    assert server.host == "127.0.0.1"
    assert server.grpc_url.startswith("127.0.0.1:")


def test_no_process_left_after_stop_and_after_interrupt(tmp_path):
    srv = EmbeddedServer(log_path=tmp_path / "a.log").start()
    pid = srv.pid
    assert _alive(pid)
    srv.stop()
    assert not _alive(pid) and not _group_alive(pid)
    srv = EmbeddedServer(log_path=tmp_path / "b.log").start()
    pid = srv.pid
    try:
        with srv:
            raise KeyboardInterrupt  # Ctrl-C inside the with block
    except KeyboardInterrupt:
        pass
    assert not _alive(pid) and not _group_alive(pid)
    assert (tmp_path / "a.log").stat().st_size > 0  # server logs go to the file


def test_broken_repository_fails_clearly_and_leaves_nothing(tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(DEFAULT_REPOSITORY, repo, ignore=shutil.ignore_patterns("*.onnx"))
    srv = EmbeddedServer(repo, log_path=tmp_path / "s.log", startup_timeout_s=30)
    with pytest.raises(InferenceError, match="tritonserver|not ready"):
        srv.start()
    assert srv.pid is None
    leftover = [p for p in _group_alive(os.getpgid(0)) if p != os.getpid()]
    assert all(
        "tritonserver" not in Path(f"/proc/{p}/cmdline").read_text(errors="replace")
        for p in leftover
        if Path(f"/proc/{p}").exists()
    )


def test_client_serve_runs_in_the_foreground_and_stops_on_ctrl_c(tmp_path):
    import signal
    import subprocess
    import sys
    import urllib.request

    proc = subprocess.Popen(
        [sys.executable, "-m", "client.serve", "--log", str(tmp_path / "s.log")],
        stdout=subprocess.PIPE,
        encoding="utf-8",
        cwd=Path(__file__).resolve().parents[1],
    )
    lines = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        if line.startswith("Ctrl-C"):
            break
    http = next(ln.split()[-1] for ln in lines if ln.strip().startswith("HTTP"))
    assert http.startswith("127.0.0.1:")
    with urllib.request.urlopen(f"http://{http}/v2/health/ready", timeout=5) as r:
        assert r.status == 200
    t = time.monotonic()
    proc.send_signal(signal.SIGINT)
    try:
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == 0, (rc, time.monotonic() - t)
    time.sleep(0.5)
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://{http}/v2/health/ready", timeout=2)
