"""``--ray local``: a real local Ray instance (2 actors) and two bundled Triton servers."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from client.batch import main as batch_main

from .scaleout_data import comparable, make_archive, rows

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'hepascreen[ray]'")

pytestmark = [pytest.mark.slow, pytest.mark.server]
N = 6


@pytest.fixture(scope="module")
def setup(tmp_path_factory, shared_data):
    from client.serving.server import EmbeddedServer

    base = tmp_path_factory.mktemp("ray")
    scans, masks = make_archive(base, shared_data, n=N)
    with EmbeddedServer() as a, EmbeddedServer() as b:
        ref = base / "single"  # the reference: one process, one server
        assert batch_main([str(scans), "-o", str(ref), "--url", a.grpc_url, "--quiet"]) == 0
        yield base, scans, [a.grpc_url, b.grpc_url], ref, (a, b)


def ray_cli(args) -> int:
    """``python -m client.batch ARGS`` in its own process, as a user runs it: one Ray
    session per process (several ray.init/shutdown cycles in one process, as pytest
    would do in-process, are not what the CLI does)."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "client.batch", *args], timeout=300,
                          capture_output=True, encoding="utf-8")  # fmt: skip
    if proc.returncode != 0:  # diagnostics for a failing run (error rows are in OUT too)
        print(proc.stderr[-3000:])
    return proc.returncode


def _ray_args(scans, out, urls, *extra):
    args = [str(scans), "-o", str(out), "--quiet", "--ray", "local", "--ray-workers", "2"]
    for u in urls:
        args += ["--url", u]
    return args + list(extra)


def test_rows_equal_a_single_process_run_and_resume_needs_no_ray(setup):
    base, scans, urls, ref, _ = setup
    out = base / "ray"
    assert ray_cli(_ray_args(scans, out, urls)) == 0
    want, got = comparable(ref), comparable(out)
    assert len({r["ratio"] for r in want.values()}) == N  # six different answers to match
    assert got == want
    run = json.loads((out / "run.json").read_text(encoding="utf-8"))
    assert run["status"] == "finished" and run["n_processed"] == N
    info = run["ray"]
    assert info["workers"] == 2 and len(info["worker_processes"]) == 2
    assert all(p["pid"] != run["pid"] for p in info["worker_processes"])  # not the driver
    assert info["retried"] == [] and info["segmenter"]["urls"] == urls
    assert (out / "report.html").is_file() and len(list((out / "qc").iterdir())) == N
    # --resume: nothing left, so no Ray instance and no server are started
    before = (out / "results.jsonl").read_bytes()
    assert ray_cli(_ray_args(scans, out, ["127.0.0.1:9"], "--resume")) == 0
    assert (out / "results.jsonl").read_bytes() == before


def test_a_worker_killed_mid_run_still_gives_exactly_one_row_per_scan(setup):
    base, scans, urls, ref, _ = setup
    out = base / "killed"
    killed = []

    def kill_one_worker():  # once the workers are listed, SIGKILL one while scans remain
        t_end = time.monotonic() + 180
        while time.monotonic() < t_end and not killed:
            try:
                run = json.loads((out / "run.json").read_text(encoding="utf-8"))
                n_rows = len((out / "results.jsonl").read_text(encoding="utf-8").splitlines())
            except (OSError, ValueError):
                n_rows, run = 0, {}
            procs = (run.get("ray") or {}).get("worker_processes")
            if procs and n_rows <= N - 3:  # (waiting for a first row missed fast runs)
                os.kill(procs[0]["pid"], signal.SIGKILL)
                killed.append(procs[0]["pid"])
            time.sleep(0.05)

    watcher = threading.Thread(target=kill_one_worker, daemon=True)
    watcher.start()
    rc = ray_cli(_ray_args(scans, out, urls))
    watcher.join(timeout=5)
    assert killed, "the worker was not killed (run too fast?)"
    assert rc == 0
    got = rows(out)
    assert sorted(r["case_id"] for r in got) == sorted(comparable(ref))  # one row each
    assert comparable(out) == comparable(ref)
    run = json.loads((out / "run.json").read_text(encoding="utf-8"))
    retried = run["ray"]["retried"]
    assert retried and all(r["try"] == 1 for r in retried)  # re-sent once, then done
    assert "Actor" in retried[0]["reason"] or "Worker" in retried[0]["reason"]
    assert not list(out.rglob(".tmp-*"))  # no half-written mask or picture left behind
    assert run["n_processed"] == N and run["status"] == "finished"


def _when_actors_ready(out, action, timeout_s: float = 180) -> threading.Thread:
    """Run ``action()`` once run.json lists the Ray workers (they start their first scans)."""

    def watch():
        t_end = time.monotonic() + timeout_s
        while time.monotonic() < t_end:
            try:
                run = json.loads((out / "run.json").read_text(encoding="utf-8"))
            except (OSError, ValueError):
                run = {}
            if (run.get("ray") or {}).get("worker_processes"):
                action()
                return
            time.sleep(0.02)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


def test_an_endpoint_killed_mid_run_the_actors_finish_on_the_other(setup):
    base, scans, urls, ref, (a, _b) = setup
    out = base / "endpoint_killed"
    killed = []
    watcher = _when_actors_ready(out, lambda: (a.kill(), killed.append(True)))
    try:
        rc = ray_cli(_ray_args(scans, out, urls))
        watcher.join(timeout=5)
    finally:
        a.start()  # same ports: back for anyone after us
    assert killed, "the endpoint was not killed mid-run"
    assert rc == 0 and comparable(out) == comparable(ref)
    run = json.loads((out / "run.json").read_text(encoding="utf-8"))
    assert run["ray"]["retried"] == []  # no worker died: the endpoint pools failed over
    per_worker = [w["statistics"] for w in run["ray"]["worker_statistics"]]
    events = [e["event"] for st in per_worker for e in st["events"]]
    assert any(f"{a.grpc_url} taken out" in e for e in events), events
    served = [e["requests"] for st in per_worker for e in st["endpoints"]]
    assert sum(served) == N


def test_sigterm_ends_a_ray_run_cleanly(setup, tmp_path):
    import subprocess
    import sys

    base, scans, *_ = setup
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "client.batch", str(scans), "-o", str(out), "--quiet",
           "--ray", "local", "--ray-workers", "2", "--masks", str(base / "masks")]  # fmt: skip
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, encoding="utf-8")
    workers = []
    t_end = time.monotonic() + 120
    while not workers and time.monotonic() < t_end and proc.poll() is None:
        try:
            workers = json.loads((out / "run.json").read_text(encoding="utf-8"))["ray"][
                "worker_processes"
            ]
        except (OSError, ValueError, KeyError):
            time.sleep(0.05)
    assert workers, "the run did not start its Ray workers"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    run = json.loads((out / "run.json").read_text(encoding="utf-8"))
    assert proc.returncode == 130, err[-2000:]  # as without Ray (Ray's own handler would exit 15)
    assert run["status"] == "interrupted" and "rerun with --resume" in err
    assert len(rows(out)) == run["n_processed"]  # rows written so far are whole
    time.sleep(1)
    for w in workers:  # the actors went with the run
        with pytest.raises(ProcessLookupError):
            os.kill(w["pid"], 0)


def test_ray_auto_joins_a_running_cluster(setup, tmp_path):
    """``ray start --head`` (this test's own process, stopped by its pid), then ``--ray auto``
    from a separate driver process (Ray reads RAY_AUTH_MODE when it is imported)."""
    import shutil
    import socket
    import subprocess
    import sys

    base, scans, _, _, _ = setup
    ray_cli = shutil.which("ray", path=str(Path(sys.executable).parent))
    assert ray_cli, "the ray command is not installed beside this Python"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_ADDRESS": f"127.0.0.1:{port}"}  # fmt: skip
    head = subprocess.Popen(
        [ray_cli, "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
         "--include-dashboard=false", "--disable-usage-stats"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True,
    )  # fmt: skip
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "client.batch", str(scans), "-o", str(out), "--quiet",
           "--ray", "auto", "--masks", str(base / "masks")]  # fmt: skip
    try:
        t_end, proc = time.monotonic() + 90, None
        while time.monotonic() < t_end:  # the head takes a while to accept drivers
            extra = ["--overwrite"] if out.exists() else []
            proc = subprocess.run(
                cmd + extra, env=env, capture_output=True, encoding="utf-8", timeout=180
            )
            if proc.returncode != 2:
                break
            time.sleep(2)
        assert proc.returncode == 0, proc.stderr[-2000:]
        run = json.loads((out / "run.json").read_text(encoding="utf-8"))
        assert run["ray"]["started_local"] is False and run["ray"]["workers"] == 2
        assert run["n_processed"] == N
        assert head.poll() is None  # joining did not take the cluster down
    finally:
        head.terminate()  # `ray start --block` stops its cluster on SIGTERM
        head.wait(timeout=60)
        marker = Path("/tmp/ray/ray_current_cluster")  # left behind, names our dead head
        if marker.is_file() and marker.read_text(encoding="utf-8").strip().endswith(f":{port}"):
            marker.unlink()


def test_a_scan_that_kills_its_worker_every_time_gets_one_error_row_after_two_resends(setup):
    """The library path (client.scaleout.ray_runner.RayScreen, one Ray session in this process)."""
    from client.pipeline.screen import ScreenConfig
    from client.reading.discover import ScanSource
    from client.scaleout.ray_runner import RayScreen, init_ray

    base, scans, *_ = setup

    class Poison(ScanSource):  # reading it kills the worker process (pickled by value)
        def read(self, **kw):
            os._exit(3)

    files = sorted(scans.iterdir())[:3]
    sources = [ScanSource(f.name.split(".")[0], f, "image") for f in files[:2]]
    sources.insert(1, Poison("poison", files[2], "image"))
    spec = {"kind": "masks", "folder": str(base / "masks"), "label_map": "default"}
    got = []
    started = init_ray("local")
    try:
        with RayScreen(spec, ScreenConfig(out_dir=None), workers=2) as screen:
            screen.run(sources, got.append)
            retried = screen.retried
    finally:
        if started:
            ray.shutdown()
    assert sorted(r["case_id"] for r in got) == sorted(s.case_id for s in sources)
    (bad,) = [r for r in got if r["case_id"] == "poison"]
    assert bad["status"] == "error" and "died 3 times" in bad["error"]
    assert [r["try"] for r in retried if r["case_id"] == "poison"] == [1, 2, 3]
    assert all(r["status"] != "error" for r in got if r["case_id"] != "poison")


# --- --device gpu: actors claim a GPU share (issue 23) -----------------------------------------
GPU_ACTORS = r"""
import json, sys
import ray
from client.pipeline.screen import ScreenConfig
from client.scaleout.ray_runner import RayScreen, gpus_per_worker

ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False,
         object_store_memory=100 * 1024**2, log_to_driver=False, logging_level="WARNING")
share = gpus_per_worker(ray.cluster_resources().get("GPU", 0), 2)
spec = {"kind": "masks", "folder": sys.argv[1], "label_map": "default"}
out = {}
for device, gpus in (("gpu", share), ("cpu", 0.0)):
    screen = RayScreen(spec, ScreenConfig(device=device), workers=2, cpus_per_worker=0.5,
                       gpus_per_worker=gpus)
    with screen:
        out[device] = {"options": screen.options, "workers": screen.worker_info}
print("RESULT " + json.dumps(out))
ray.shutdown()
"""


def test_gpu_actors_claim_a_share_of_the_card_and_ray_shows_it_to_them(tmp_path):
    """A real local Ray with one (logical) GPU: with --device gpu two actors claim half a
    card each, so Ray gives them CUDA_VISIBLE_DEVICES=0 (without the claim it hides every
    GPU); a CPU run claims none."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", GPU_ACTORS, str(tmp_path)], timeout=240,
                          capture_output=True, encoding="utf-8", cwd=Path(__file__).parents[1])  # fmt: skip
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and line, proc.stderr[-3000:]
    got = json.loads(line[0][len("RESULT ") :])
    assert got["gpu"]["options"]["num_gpus"] == 0.5
    for w in got["gpu"]["workers"]:
        assert w["gpu_ids"] == ["0"] and w["cuda_visible_devices"] == "0"
        assert w["gpu_share"] == 0.5
    assert "num_gpus" not in got["cpu"]["options"]
    assert all("gpu_ids" not in w for w in got["cpu"]["workers"])


def test_gpu_share_per_actor_fits_the_cards():
    from client.core.errors import ConfigError
    from client.scaleout.ray_runner import actor_options, gpus_per_worker

    assert gpus_per_worker(1, 1) == 1.0 and gpus_per_worker(1, 4) == 0.25
    assert gpus_per_worker(2, 3) == 0.5  # two actors per card: three fit on two cards
    assert gpus_per_worker(1, 3) * 3 <= 1  # rounded down: the three really fit on one card
    assert gpus_per_worker(4, 2) == 1.0 and gpus_per_worker(1, 2, requested=0.2) == 0.2
    with pytest.raises(ConfigError, match="no GPU"):
        gpus_per_worker(0, 2)
    assert actor_options(0.5, 0.25, 2) == {
        "num_cpus": 0.5, "num_gpus": 0.25, "max_restarts": -1, "max_task_retries": 0,
        "max_concurrency": 2,
    }  # fmt: skip


# --- joining a cluster is bounded (issue 23) ----------------------------------------------------
def test_ray_auto_with_an_unreachable_cluster_fails_fast_naming_the_address(monkeypatch):
    import socket

    from client.core.errors import ConfigError
    from client.scaleout.ray_runner import init_ray

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    t0 = time.monotonic()
    with pytest.raises(ConfigError) as err:
        init_ray("auto")
    assert time.monotonic() - t0 < 30
    assert f"127.0.0.1:{port}" in str(err.value) and "ray status" in str(err.value)


def test_a_join_that_hangs_stops_at_the_deadline_naming_the_address(monkeypatch):
    """Ray's GCS client retries for minutes when the nodes advertise an address the driver
    cannot reach: a join that does not return is cut at HEPASCREEN_RAY_CONNECT_TIMEOUT_S."""
    import socket
    import types

    from client.core.errors import ConfigError
    from client.scaleout import ray_runner

    release = threading.Event()
    fake = types.SimpleNamespace(is_initialized=lambda: False,
                                 init=lambda **kw: release.wait(30))  # fmt: skip
    monkeypatch.setattr(ray_runner, "import_ray", lambda: fake)
    with socket.socket() as server:  # the probe succeeds: a port that accepts
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{server.getsockname()[1]}")
        monkeypatch.setenv(ray_runner.CONNECT_TIMEOUT_ENV, "0.5")
        try:
            with pytest.raises(ConfigError, match=r"did not finish within 0.5 s") as err:
                ray_runner.init_ray("auto")
        finally:
            release.set()
    assert "127.0.0.1:" in str(err.value) and ray_runner.CONNECT_TIMEOUT_ENV in str(err.value)


def test_a_real_ray_join_to_a_silent_address_stops_at_the_deadline_and_exits():
    """A port that accepts connections and never speaks GCS (what a node advertising an
    unreachable address looks like from here): the real ray.init is cut at the deadline
    and the process still exits promptly (no hang in Ray's exit handlers)."""
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        port = s.getsockname()[1]
        env = dict(
            os.environ, RAY_ADDRESS=f"127.0.0.1:{port}", HEPASCREEN_RAY_CONNECT_TIMEOUT_S="8"
        )
        code = (
            "from client.scaleout.ray_runner import init_ray\n"
            "try:\n    init_ray('auto')\n"
            "except Exception as e:\n    print('ERR', type(e).__name__, e)\n"
        )
        t0 = time.monotonic()
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                              encoding="utf-8", timeout=240, cwd=Path(__file__).parents[1])  # fmt: skip
        took = time.monotonic() - t0
    assert "ERR ConfigError" in proc.stdout, proc.stdout + proc.stderr[-2000:]
    assert f"127.0.0.1:{port}" in proc.stdout and "within 8 s" in proc.stdout
    assert took < 8 + 120, took  # the deadline plus a generous margin for start and exit
