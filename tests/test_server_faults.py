"""Server faults against the REAL bundled Triton server: kill, freeze, dead URL, no orphans."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from client.core import contract
from client.core.errors import InferenceError
from client.core.paths import SHIPPED_ONNX
from client.serving.futures import InferenceFutures
from client.serving.server import (
    SHM_DIR,
    SHM_PREFIX,
    TMP_PREFIX,
    EmbeddedServer,
    _free_port,
    cleanup_stale,
)
from client.serving.supervisor import SupervisedSegmenter

pytestmark = [pytest.mark.server, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]
ONNX = SHIPPED_ONNX


def _group(pgid: int) -> list[tuple[int, str]]:
    """Live (non-zombie) processes of process group ``pgid``: (pid, command)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text(encoding="utf-8").rsplit(")", 1)[1].split()
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            out.append((int(d.name), cmd[:120]))
    return out


def _wait_gone(pgid: int, timeout_s: float = 10.0) -> list:
    deadline = time.monotonic() + timeout_s
    while (left := _group(pgid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


@pytest.fixture(scope="module")
def inputs_and_reference():
    import onnxruntime as ort

    from client.reading.preprocess import preprocess
    from training.phantoms import make_phantom

    sess = ort.InferenceSession(str(ONNX), providers=["CPUExecutionProvider"])
    shape = tuple(int(d) for d in sess.get_inputs()[0].shape[2:])
    x = []
    for seed in range(3):
        p = make_phantom(seed, shape=(40, 80, 80), spacing=(5.0, 3.5, 3.5))
        x.append(preprocess(p.hu, p.spacing, p.direction, shape)[0])
    x = np.stack(x)
    (ref,) = sess.run([contract.OUTPUT_NAME], {contract.INPUT_NAME: x})
    assert (ref == 1).mean() > 0.01  # the model segments something: a real comparison
    return x, ref


def _labels(seg, x):
    """One volume ``[1, z, y, x]`` through the transport -> its labels ``[z, y, x]``."""
    return seg.infer(x[None])[contract.OUTPUT_NAME][0]


def test_sigkill_of_the_owner_leaves_no_server_and_the_next_start_cleans_up(tmp_path):
    code = (
        "import os, sys, time\n"
        "from client.serving.server import EmbeddedServer\n"
        "s = EmbeddedServer().start()\n"
        "print(s.pid, s._tmp, flush=True)\n"
        "time.sleep(300)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, encoding="utf-8"
    )
    try:
        line = proc.stdout.readline().split()
        assert line, "the owner did not start a server"
        pid, tmp = int(line[0]), Path(line[1])
        members = _group(pid)
        cmds = " ".join(c for _, c in members)
        assert "tritonserver" in cmds and "triton_python_backend_stub" in cmds, members
        shm = [f for f in SHM_DIR.glob(f"{SHM_PREFIX}{proc.pid}-*")]
        assert shm, "the stub's shared memory carries the owner's tag"
        proc.send_signal(signal.SIGKILL)  # no handler, no finally, no atexit
        proc.wait(timeout=10)
        left = _wait_gone(pid, 10.0)
        assert not left, f"orphans after SIGKILL of the owner: {left}"  # waited on the condition
    finally:
        if proc.poll() is None:
            proc.kill()
    # The dead owner's temporary folder and shared memory are still there ...
    assert tmp.exists() and all(f.exists() for f in shm)
    removed = cleanup_stale()  # ... until the next start (EmbeddedServer.start calls this)
    assert tmp.name in removed["folders"] and not tmp.exists()
    assert all(f.name in removed["shm"] and not f.exists() for f in shm)


def test_cleanup_keeps_what_live_owners_use(tmp_path):
    live = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.getpid()}-", dir=tmp_path))
    from client.serving.server import owner_tag

    mine = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{owner_tag()}-", dir=tmp_path))
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True
    )
    dead_pid = int(dead.stdout)
    gone = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{dead_pid}-12345-", dir=tmp_path))
    shm_dir = tmp_path / "shm"
    shm_dir.mkdir()
    (shm_dir / f"{SHM_PREFIX}{owner_tag()}-0-abc").write_bytes(b"x")
    (shm_dir / f"{SHM_PREFIX}{dead_pid}-12345-0-abc").write_bytes(b"x")
    alias = Path(tempfile.mkdtemp(prefix=f"hepascreen-alias-{dead_pid}-12345-", dir=tmp_path))
    removed = cleanup_stale(tmp_path, shm_dir)
    assert mine.exists() and not gone.exists() and not alias.exists()
    assert live.exists()  # no start time in the name: judged by use and age, and it is new
    assert removed["shm"] == [f"{SHM_PREFIX}{dead_pid}-12345-0-abc"]


def test_killed_server_is_restarted_and_requests_in_flight_retried(inputs_and_reference, tmp_path):
    x, ref = inputs_and_reference
    with (
        SupervisedSegmenter(
            log_path=tmp_path / "server.log", max_in_flight=4, watch_interval_s=0
        ) as seg,
        InferenceFutures(seg) as pending,
    ):
        first = seg.server.pid
        assert np.array_equal(_labels(seg, x[0]), ref[0])
        futures = [pending.submit(x[i % 3][None]) for i in range(9)]
        os.kill(first, signal.SIGKILL)  # the server dies with requests in flight
        results = [f.result(timeout=120)[contract.OUTPUT_NAME][0] for f in futures]
        for i, r in enumerate(results):
            assert np.array_equal(r, ref[i % 3]), i
        assert seg.restarts == 1 and seg.server.pid != first
        assert any("exited" in e["event"] for e in seg.events), seg.events
        assert not _wait_gone(first, 10.0), "the dead server's stubs were not cleared"
        st = seg.statistics()
        assert st["volumes"] == 10 and st["restarts"] == 1
    assert (tmp_path / "server.log").stat().st_size > 0


def test_frozen_server_hits_the_deadline_and_is_restarted(inputs_and_reference, tmp_path):
    x, ref = inputs_and_reference
    with (
        SupervisedSegmenter(
            log_path=tmp_path / "server.log", max_in_flight=2, min_deadline_s=3.0,
            watch_interval_s=0,
        ) as seg,
        InferenceFutures(seg) as pending,
    ):  # fmt: skip
        assert np.array_equal(_labels(seg, x[1]), ref[1])
        deadline = seg.deadline_s()
        assert 3.0 <= deadline < 60.0  # derived from the measured time, not the old 300 s
        frozen = seg.server.pid
        os.killpg(frozen, signal.SIGSTOP)  # hung: alive but silent
        try:
            t = time.monotonic()
            futures = [pending.submit(x[i][None]) for i in range(3)]
            results = [f.result(timeout=120)[contract.OUTPUT_NAME][0] for f in futures]
            took = time.monotonic() - t
        finally:
            try:
                os.killpg(frozen, signal.SIGCONT)
            except ProcessLookupError:
                pass
        for i, r in enumerate(results):
            assert np.array_equal(r, ref[i])
        assert seg.restarts == 1
        assert any("stopped answering" in e["event"] for e in seg.events), seg.events
        assert took < deadline + 60.0, took  # deadline + liveness check + restart
        assert not _wait_gone(frozen, 10.0), "the frozen server was not killed"


def test_watchdog_restarts_a_server_that_died_between_requests(inputs_and_reference, tmp_path):
    x, ref = inputs_and_reference
    with SupervisedSegmenter(log_path=tmp_path / "s.log", watch_interval_s=0.2) as seg:
        first = seg.server.pid
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while seg.restarts == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert seg.restarts == 1 and "watchdog" in seg.events[0]["event"]
        assert np.array_equal(_labels(seg, x[2]), ref[2])


def test_restarts_are_bounded_then_requests_fail_at_once(inputs_and_reference, tmp_path):
    x, _ = inputs_and_reference
    with SupervisedSegmenter(
        log_path=tmp_path / "s.log", max_restarts=1, watch_interval_s=0
    ) as seg:
        os.kill(seg.server.pid, signal.SIGKILL)
        _labels(seg, x[0])  # restart 1
        os.kill(seg.server.pid, signal.SIGKILL)
        with pytest.raises(InferenceError, match=r"gave up after 1 restarts .*s\.log"):
            _labels(seg, x[0])
        t = time.monotonic()
        with pytest.raises(InferenceError, match="gave up"):
            _labels(seg, x[0])
        assert time.monotonic() - t < 5.0  # no restart attempt (one takes seconds); generous
        assert not seg.server.is_running()


def _raw_count(client) -> int:
    return int(client.statistics(timeout_s=10.0)["inference_count"])


def _wait_for_count(client, n: int, bound_s: float = 60.0) -> int:
    """Poll the server's own inference_count until it reaches ``n`` (a generous bound, never
    a fixed sleep: Triton counts a request only after its response has gone out)."""
    deadline = time.monotonic() + bound_s
    while (got := _raw_count(client)) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    return got


def test_dead_remote_url_fails_scans_quickly_with_a_clear_message(
    inputs_and_reference, tmp_path, monkeypatch
):
    x, ref = inputs_and_reference
    # A remote segmenter takes its counter baseline right after its two warm-up requests;
    # on a loaded machine Triton may not have counted them yet, and the run's count then
    # includes them (seen: inference_count 2, expected 1). Wait for the warm-up to be
    # counted (the condition, not a time) before the baseline is taken.
    warm_up = SupervisedSegmenter._warm_up

    def counted_warm_up(self):
        before = _raw_count(self.client)
        warm_up(self)
        assert _wait_for_count(self.client, before + 2) >= before + 2

    monkeypatch.setattr(SupervisedSegmenter, "_warm_up", counted_warm_up)
    srv = EmbeddedServer(log_path=tmp_path / "remote.log").start()
    try:
        # Earlier traffic on the "remote" server: not this run's statistics.
        with SupervisedSegmenter(srv.grpc_url) as other:
            _labels(other, x[0])
            total = 3  # its 2 warm-ups + 1 scan, all counted before the next baseline
            assert _wait_for_count(other.client, total) == total
        seg = SupervisedSegmenter(srv.grpc_url, down_recheck_s=60).start()
        assert _raw_count(seg.client) == total + 2  # the new segmenter's warm-up, counted
        assert np.array_equal(_labels(seg, x[1]), ref[1])
        assert _wait_for_count(seg.client, total + 3) == total + 3
        st = seg.statistics()
        assert st["inference_count"] == 1 and st["volumes"] == 1, st
    finally:
        srv.stop()
    times = []
    for _ in range(4):
        t = time.monotonic()
        with pytest.raises(InferenceError, match=rf"Triton at {srv.grpc_url} is not reachable"):
            _labels(seg, x[0])
        times.append(time.monotonic() - t)
    seg.close()
    # Generous bounds (a loaded machine): the first failure within one connect timeout, the
    # next ones answered from the down-mark without a network round (down_recheck_s=60).
    assert times[0] < 15.0 and max(times[1:]) < 2.0, times


def test_unreachable_url_at_start_is_a_clear_error():
    url = f"127.0.0.1:{_free_port('127.0.0.1')}"
    t = time.monotonic()
    with pytest.raises(InferenceError, match=rf"Triton at {url}"):
        SupervisedSegmenter(url, ready_timeout_s=2).start()
    assert time.monotonic() - t < 10


def _holding(path: Path) -> list[tuple[int, str]]:
    """Live processes with ``path`` open (e.g. a server whose log is OUT/server.log)."""
    out = []
    target = str(path)
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if (d / "stat").read_text(encoding="utf-8").rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                continue
            fds = list((d / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) == target:
                    cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ")[:100]
                    out.append((int(d.name), cmd.decode(errors="replace")))
                    break
            except OSError:
                continue
    return out


def test_sigkill_of_the_batch_leaves_no_server(tmp_path, shared_data):
    """The real batch CLI owns the bundled server; SIGKILL it mid-run: nothing survives."""
    inp = tmp_path / "in"
    inp.mkdir()
    for i in range(6):
        os.symlink(shared_data / "totalseg_example" / "ct.nii.gz", inp / f"ct{i}.nii.gz")
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "client.batch",
            str(inp),
            "-o",
            str(out),
            "--quiet",
            "--concurrency",
            "1",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    log = out / "server.log"
    try:
        deadline = time.monotonic() + 120
        server = []
        while time.monotonic() < deadline and proc.poll() is None:
            server = [p for p in _holding(log) if p[0] != proc.pid]
            if any("tritonserver" in c for _, c in server):
                break
            time.sleep(0.2)
        assert any("tritonserver" in c for _, c in server), "the batch never started its server"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        t = time.monotonic()
        while (left := _holding(log)) and time.monotonic() - t < 10:
            time.sleep(0.1)
        assert not left, f"orphans after SIGKILL of the batch: {left}"
    finally:
        if proc.poll() is None:
            proc.kill()


def test_batch_survives_a_killed_and_a_frozen_server_with_identical_results(tmp_path, shared_data):
    """The batch CLI end to end: SIGKILL its server, later SIGSTOP the replacement; every
    scan still gets its row, and copies of one scan get identical measurements."""
    import json
    import shutil

    inp = tmp_path / "in"
    inp.mkdir()
    n = 16  # enough work left after each fault whatever the machine's speed
    for i in range(n):  # copies (not links: discovery keeps one source per file)
        shutil.copy(shared_data / "totalseg_example" / "ct_small.nii.gz", inp / f"ct{i}.nii.gz")
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "client.batch",
            str(inp),
            "-o",
            str(out),
            "--quiet",
            "--concurrency",
            "2",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        encoding="utf-8",
    )
    log = out / "server.log"

    def n_rows() -> int:
        p = out / "results.jsonl"
        return len(p.read_text(encoding="utf-8").splitlines()) if p.exists() else 0

    def server_pid(old: int | None = None) -> int:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            pids = [p for p, c in _holding(log) if "tritonserver" in c and p != old]
            if pids:
                return pids[0]
            time.sleep(0.1)
        raise AssertionError("no (new) server found")

    def paused(at_rows: int):
        """Wait for ``at_rows`` rows, then freeze the batch (SIGSTOP) so that it cannot
        finish before the fault is injected: the test waits on conditions, not on the
        machine being slow enough (seen: the batch done before the kill on a quiet machine)."""
        while n_rows() < at_rows and proc.poll() is None:
            time.sleep(0.05)
        assert proc.poll() is None, "the batch ended before the fault could be injected"
        os.kill(proc.pid, signal.SIGSTOP)
        assert n_rows() < n, "every scan was done before the fault"

    try:
        first = server_pid()
        paused(1)
        try:
            os.kill(first, signal.SIGKILL)
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        second = server_pid(first)
        paused(3)
        try:
            os.killpg(second, signal.SIGSTOP)
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        rc = proc.wait(timeout=300)
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == 0, err[-2000:]
    rows = [
        json.loads(ln) for ln in (out / "results.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    assert len(rows) == n and all(r["status"] in ("ok", "flagged") for r in rows), rows
    assert len({(r["grade"], r["ratio"], r["liver_hu"], r["spleen_hu"]) for r in rows}) == 1
    stats = json.loads((out / "run.json").read_text(encoding="utf-8"))["inference_statistics"]
    assert stats["restarts"] == 2, stats["events"]
    assert not _wait_gone(second, 10.0) and not _holding(log)
