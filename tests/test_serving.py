"""The real bundled Triton server (nvidia-pytriton wheel) serving the shipped model."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from client.core import contract
from client.core.errors import InferenceError
from client.core.paths import SHIPPED_ONNX
from client.core.paths import SOURCE_REPOSITORY as DEFAULT_REPOSITORY
from client.serving.futures import InferenceFutures
from client.serving.server import EmbeddedServer
from client.serving.triton import SegmentationClient

pytestmark = pytest.mark.server
ONNX = SHIPPED_ONNX


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
    from client.reading.preprocess import preprocess
    from training.phantoms import make_phantom

    out = []
    for seed in range(n):
        p = make_phantom(seed, shape=(48, 96, 96), spacing=(5.0, 3.5, 3.5))
        out.append(preprocess(p.hu, p.spacing, p.direction, model_shape)[0])
    return np.stack(out)


def test_client_reads_the_model_shape_from_the_server(client):
    assert len(client.model.model_shape) == 3 and client.model.max_batch_size >= 2


def test_outputs_equal_onnxruntime(client, ort_session):
    x = _phantom_inputs(client.model.model_shape, 3)
    (ref,) = ort_session.run([contract.OUTPUT_NAME], {contract.INPUT_NAME: x})
    assert np.array_equal(client.infer(x)[contract.OUTPUT_NAME], ref)
    assert np.array_equal(client.infer(x[:1])[contract.OUTPUT_NAME], ref[:1])
    assert (ref == 1).mean() > 0.01  # the model segments something: a real comparison


def test_every_transport_is_a_transport_and_infers_outputs_by_name(server, client, ort_session):
    """SegmentationClient, SupervisedSegmenter and EndpointPool: one interface
    (client.serving.model.Transport), one parsed ServedModel, the outputs by name equal to
    ONNX Runtime's; the one futures layer over each gives the same."""
    from client.serving.endpoints import EndpointPool
    from client.serving.model import ServedModel, Transport
    from client.serving.supervisor import SupervisedSegmenter
    from client.serving.triton import served_model

    m = client.model
    x = _phantom_inputs(m.model_shape, 2)
    names = [contract.OUTPUT_NAME, contract.CONFIDENCE_NAME]
    ref = dict(zip(names, _both(ort_session, x)))
    assert isinstance(m, ServedModel) and m.has_confidence and m.output_names == tuple(names)
    assert m.name == contract.MODEL_NAME and m.versions == ("1",) and m.version == "1"
    assert m.input_name == contract.INPUT_NAME and m.input_shape == (1, *m.model_shape)
    assert m == served_model(m.config, {"versions": ["1"]})  # parsed from the config alone
    with (
        SupervisedSegmenter(server.grpc_url, max_in_flight=2) as sup,
        EndpointPool([server.grpc_url], max_in_flight=2) as pool,
    ):
        for t in (client, sup, pool):
            assert isinstance(t, Transport), type(t)
            assert t.model == m and server.grpc_url in t.url
            out = t.infer(x)
            assert list(out) == names, type(t)
            for n in names:
                assert out[n].dtype == np.uint8 and np.array_equal(out[n], ref[n]), (type(t), n)
            with InferenceFutures(t) as pending:
                assert pending.max_in_flight == t.max_in_flight
                one = pending.submit(x[1:]).result()
            assert list(one) == names and all(np.array_equal(one[n], ref[n][1:]) for n in names)
        assert sup.statistics()["volumes"] == 3 and pool.statistics()["volumes"] == 3
    assert not isinstance(object(), Transport)


def test_concurrent_requests_are_merged_by_the_dynamic_batcher(client, ort_session):
    x = _phantom_inputs(client.model.model_shape, 2)
    before = client.statistics()
    with InferenceFutures(client) as pending:
        futures = [pending.submit(x[i % 2][None]) for i in range(12)]
        results = [f.result()[contract.OUTPUT_NAME][0] for f in futures]
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
    (ref,) = ort_session.run([contract.OUTPUT_NAME], {contract.INPUT_NAME: x})
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
    ok = client.infer(np.zeros((1, 1, *client.model.model_shape), np.uint8))
    assert ok[contract.OUTPUT_NAME].shape == (1, *client.model.model_shape)


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
        [sys.executable, "-m", "client.cli.serve", "--log", str(tmp_path / "s.log")],
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


# --- the model's declared preprocessing, served (issue 8 item 3) ---------------------------
def _onnx_declared(path: Path) -> dict:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    keys = (contract.PREPROCESS_PARAM, contract.PREPROCESS_SPACING_PARAM)
    return {p.key: p.value for p in m.metadata_props if p.key in keys}


def _repo_with_mode(dest: Path, mode: str) -> Path:
    """A copy of the shipped repository whose config (and ONNX metadata, where it says
    anything) declares ``mode``: the same network, fed the other way."""
    import re

    import onnx

    shutil.copytree(DEFAULT_REPOSITORY, dest)
    cfg = dest / contract.MODEL_NAME / "config.pbtxt"
    declared = _onnx_declared(ONNX)
    spacing = declared.get(contract.PREPROCESS_SPACING_PARAM, "6,6,6")  # the model's own, if any
    text = re.sub(
        r'parameters: \{\s*key: "hepascreen_(preprocess|spacing_mm)"\s*value: \{[^}]*\}\s*\}\n?',
        "",
        cfg.read_text(encoding="utf-8"),
    )
    params = {contract.PREPROCESS_PARAM: mode}
    if mode == "spacing":
        params[contract.PREPROCESS_SPACING_PARAM] = spacing
    for k, v in params.items():
        text += f'parameters: {{\n  key: "{k}"\n  value: {{ string_value: "{v}" }}\n}}\n'
    cfg.write_text(text, encoding="utf-8")
    if declared and declared != params:  # keep the copy consistent (the model checks it)
        onnx_path = dest / contract.MODEL_NAME / "1" / ONNX.name
        m = onnx.load(str(onnx_path))
        keep = [p for p in m.metadata_props if p.key not in declared]
        del m.metadata_props[:]
        m.metadata_props.extend(keep)
        for k, v in params.items():
            m.metadata_props.add(key=k, value=v)
        onnx.save(m, str(onnx_path))
    return dest


@pytest.fixture(scope="module")
def spacing_server(tmp_path_factory):
    base = tmp_path_factory.mktemp("spacing")
    repo = _repo_with_mode(base / "repo", "spacing")
    with EmbeddedServer(repo, log_path=base / "server.log") as srv:
        yield srv


@pytest.fixture(scope="module")
def spacing_client(spacing_server):
    with SegmentationClient(spacing_server.grpc_url, max_in_flight=4) as c:
        yield c


@pytest.fixture(scope="module")
def real_ct(shared_data):
    from client.reading.io import read_label_map, read_scan

    ct = read_scan(shared_data / "totalseg_example" / "ct.nii.gz")
    return ct, read_label_map(shared_data / "totalseg_example" / "labels.nii.gz", ct)


def test_clients_read_the_declared_preprocessing(client, spacing_client):
    from client.reading.preprocess import PreprocessSpec
    from client.serving.triton import model_preprocess_spec

    assert client.model.preprocess_spec == model_preprocess_spec(client.model.config)
    assert client.model.preprocess_spec.model_shape == client.model.model_shape
    spec = spacing_client.model.preprocess_spec
    assert spec.mode == "spacing" and spec.model_shape == spacing_client.model.model_shape
    assert spec == PreprocessSpec.from_parameters(spec.parameters(), spec.model_shape)


def test_spacing_model_windows_come_back_stitched_as_onnxruntime_gives(
    spacing_client, ort_session, real_ct
):
    """A 1.5 m scan served by a 'spacing' model: several windows, each its own request
    (merged by the dynamic batcher), stitched; equal to ONNX Runtime on the same windows."""
    from client.pipeline.screen import StageTimer
    from client.pipeline.segmenters import TritonSegmenter, as_segmentation
    from client.reading.preprocess import preprocess_scan, to_scan_grid
    from client.reading.scan import ScanVolume

    ct, _ = real_ct
    n = int(round(1500 / ct.spacing[0]))
    reps = -(-n // ct.shape[0])
    scan = ScanVolume(np.concatenate([ct.array] * reps)[:n], ct.spacing, ct.origin, ct.direction)
    windows, rec = preprocess_scan(scan, spacing_client.model.preprocess_spec)
    assert len(rec.windows) >= 3
    refs = [_both(ort_session, windows[i : i + 2]) for i in range(0, len(windows), 2)]
    ref_labels = np.concatenate([r[0] for r in refs])
    ref = to_scan_grid(ref_labels, rec)
    # the confidence is mapped back inside the box of the labelled voxels (0 outside)
    ref_conf = to_scan_grid(np.concatenate([r[1] for r in refs]), rec, within=ref_labels)
    before = spacing_client.statistics()["inference_count"]
    timer = StageTimer()
    seg = as_segmentation(TritonSegmenter(spacing_client).segment(scan, None, timer))
    got = seg.labels
    assert got.shape == scan.shape and np.array_equal(got, ref)
    # The served confidence (the config lists it) comes back on the same grid, inside
    # the labelled box, and is not all zero there.
    assert seg.confidence is not None and np.array_equal(seg.confidence, ref_conf)
    assert seg.confidence[ref > 0].min() > 0
    assert (ref == 1).sum() > 1000 and (ref == 2).sum() > 100  # a real comparison
    deadline = time.monotonic() + 10
    while spacing_client.statistics()["inference_count"] - before < len(windows):
        assert time.monotonic() < deadline, "the server did not count one request per window"
        time.sleep(0.1)
    assert timer.seconds["infer"] > 0 and timer.seconds["preprocess"] > 0


def test_spacing_model_segments_the_real_ct(spacing_client, real_ct):
    """The shipped network fed 6 mm windows instead of the whole volume at 64^3 (for this
    CT about the same voxel size): the organs still come back on the scan's grid."""
    from client.pipeline.screen import StageTimer
    from client.pipeline.segmenters import TritonSegmenter, as_segmentation

    ct, labels = real_ct
    got = as_segmentation(TritonSegmenter(spacing_client).segment(ct, None, StageTimer())).labels
    for v, floor in ((1, 0.85), (2, 0.7)):
        a, b = got == v, labels == v
        assert 2 * (a & b).sum() / (a.sum() + b.sum()) >= floor, v


def test_endpoints_that_disagree_on_preprocessing_are_refused(server, tmp_path_factory):
    """Same model name and input size, other preprocessing: not used side by side."""
    from client.serving.endpoints import EndpointPool
    from client.serving.triton import model_preprocess_spec

    with SegmentationClient(server.grpc_url) as c:
        shipped = model_preprocess_spec(c.model.config).mode
    other = "spacing" if shipped == "resize" else "resize"
    base = tmp_path_factory.mktemp("other")
    repo = _repo_with_mode(base / "repo", other)
    with EmbeddedServer(repo, log_path=base / "server.log") as srv:
        pool = EndpointPool([server.grpc_url, srv.grpc_url], max_in_flight=1, connect_timeout_s=30)
        with pool:
            assert pool.healthy_urls() == [server.grpc_url]
            assert pool.model.preprocess_spec.mode == shipped
            (ep,) = [e for e in pool.endpoints if e.url == srv.grpc_url]
            assert "preprocessing" in ep.last_error and other in ep.last_error, ep.last_error


def test_model_refuses_onnx_metadata_that_contradicts_its_config(tmp_path):
    """The Python backend: an ONNX that says 'spacing' under a 'resize' config never loads."""
    import onnx

    repo = _repo_with_mode(tmp_path / "repo", "resize")
    onnx_path = repo / contract.MODEL_NAME / "1" / ONNX.name
    m = onnx.load(str(onnx_path))
    m.metadata_props.add(key=contract.PREPROCESS_PARAM, value="spacing")
    m.metadata_props.add(key=contract.PREPROCESS_SPACING_PARAM, value="6,6,6")
    onnx.save(m, str(onnx_path))
    srv = EmbeddedServer(repo, log_path=tmp_path / "s.log", startup_timeout_s=60)
    with pytest.raises(InferenceError):
        srv.start()
    log = (tmp_path / "s.log").read_text(encoding="utf-8", errors="replace")
    assert "ONNX metadata declares preprocessing spacing" in log, log[-2000:]


# --- the CONFIDENCE output, served (raw gRPC: the tensors as Triton sends them) -----------
def _raw_infer(url, x, outputs):
    """One request; ``outputs`` names the requested outputs (None: Triton's default, all)."""
    import tritonclient.grpc as g

    raw = g.InferenceServerClient(url)
    try:
        inp = g.InferInput(contract.INPUT_NAME, list(x.shape), "UINT8")
        inp.set_data_from_numpy(x)
        req = None if outputs is None else [g.InferRequestedOutput(n) for n in outputs]
        res = raw.infer(contract.MODEL_NAME, [inp], outputs=req)
        return {o.name: res.as_numpy(o.name) for o in res.get_response().outputs}
    finally:
        raw.close()


def _both(sess, x):
    return sess.run([contract.OUTPUT_NAME, contract.CONFIDENCE_NAME], {contract.INPUT_NAME: x})


def test_served_confidence_equals_onnxruntime_and_labels_alone_stay_alone(server, ort_session):
    shape = tuple(int(d) for d in ort_session.get_inputs()[0].shape[2:])
    x = _phantom_inputs(shape, 2)
    labels, conf = _both(ort_session, x)
    assert (labels == 1).mean() > 0.01 and conf.min() >= 85 and (conf < 255).sum() > 100
    both = [contract.OUTPUT_NAME, contract.CONFIDENCE_NAME]
    got = _raw_infer(server.grpc_url, x, both)
    assert list(got) == both
    assert got[contract.CONFIDENCE_NAME].dtype == np.uint8
    assert np.array_equal(got[contract.OUTPUT_NAME], labels)
    assert np.array_equal(got[contract.CONFIDENCE_NAME], conf)
    only = _raw_infer(server.grpc_url, x[:1], [contract.OUTPUT_NAME])
    assert list(only) == [contract.OUTPUT_NAME]  # nothing else on the wire
    assert np.array_equal(only[contract.OUTPUT_NAME], labels[:1])
    conf_only = _raw_infer(server.grpc_url, x[1:], [contract.CONFIDENCE_NAME])
    assert list(conf_only) == [contract.CONFIDENCE_NAME]
    assert np.array_equal(conf_only[contract.CONFIDENCE_NAME], conf[1:])
    assert sorted(_raw_infer(server.grpc_url, x[:1], None)) == sorted(both)


def test_merged_requests_each_get_the_outputs_they_asked_for(server, ort_session):
    """Concurrent requests, some for LABELS only, some for both: the dynamic batcher
    may run them as one batch; each response still carries exactly its own outputs."""
    import threading

    import tritonclient.grpc as g

    shape = tuple(int(d) for d in ort_session.get_inputs()[0].shape[2:])
    x = _phantom_inputs(shape, 2)
    labels, conf = _both(ort_session, x)
    raw = g.InferenceServerClient(server.grpc_url)
    results, done = {}, threading.Semaphore(0)
    try:
        for i in range(8):
            inp = g.InferInput(contract.INPUT_NAME, [1, *x.shape[1:]], "UINT8")
            inp.set_data_from_numpy(x[i % 2 : i % 2 + 1])
            names = [contract.OUTPUT_NAME] + ([contract.CONFIDENCE_NAME] if i % 3 else [])
            outs = [g.InferRequestedOutput(n) for n in names]

            def cb(result, error, i=i):
                results[i] = (result, error)
                done.release()

            raw.async_infer(contract.MODEL_NAME, [inp], cb, outputs=outs)
        for _ in range(8):
            assert done.acquire(timeout=120)
    finally:
        raw.close()
    for i, (res, err) in sorted(results.items()):
        assert err is None, err
        names = [o.name for o in res.get_response().outputs]
        assert names == [contract.OUTPUT_NAME] + ([contract.CONFIDENCE_NAME] if i % 3 else [])
        assert np.array_equal(res.as_numpy(contract.OUTPUT_NAME), labels[i % 2 : i % 2 + 1])
        if i % 3:
            assert np.array_equal(res.as_numpy(contract.CONFIDENCE_NAME), conf[i % 2 : i % 2 + 1])


def _config_outputs(repo: Path, keep: int) -> None:
    """Keep the first ``keep`` outputs of the copied repository's config (Triton's schema)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    path = repo / contract.MODEL_NAME / "config.pbtxt"
    cfg = text_format.Parse(path.read_text(encoding="utf-8"), model_config_pb2.ModelConfig())
    del cfg.output[keep:]
    path.write_text(text_format.MessageToString(cfg), encoding="utf-8")


def test_a_labels_only_config_serves_an_onnx_with_both_outputs(tmp_path, ort_session):
    import tritonclient.grpc as g

    repo = tmp_path / "repo"
    shutil.copytree(DEFAULT_REPOSITORY, repo)
    _config_outputs(repo, 1)
    x = _phantom_inputs(tuple(int(d) for d in ort_session.get_inputs()[0].shape[2:]), 1)
    labels, _ = _both(ort_session, x)
    with EmbeddedServer(repo, log_path=tmp_path / "s.log", startup_timeout_s=60) as srv:
        raw = g.InferenceServerClient(srv.grpc_url)
        try:
            cfg = raw.get_model_config(contract.MODEL_NAME, as_json=True)["config"]
        finally:
            raw.close()
        assert [o["name"] for o in cfg["output"]] == [contract.OUTPUT_NAME]
        got = _raw_infer(srv.grpc_url, x, None)
        assert list(got) == [contract.OUTPUT_NAME]
        assert np.array_equal(got[contract.OUTPUT_NAME], labels)
        with pytest.raises(Exception, match=contract.CONFIDENCE_NAME):
            _raw_infer(srv.grpc_url, x, [contract.OUTPUT_NAME, contract.CONFIDENCE_NAME])


def test_model_refuses_a_config_listing_confidence_the_onnx_lacks(tmp_path):
    import onnx

    repo = tmp_path / "repo"
    shutil.copytree(DEFAULT_REPOSITORY, repo)
    onnx_path = repo / contract.MODEL_NAME / "1" / ONNX.name
    m = onnx.load(str(onnx_path))
    keep = [o for o in m.graph.output if o.name != contract.CONFIDENCE_NAME]
    del m.graph.output[:]
    m.graph.output.extend(keep)  # an export made before CONFIDENCE existed
    onnx.save(m, str(onnx_path))
    srv = EmbeddedServer(repo, log_path=tmp_path / "s.log", startup_timeout_s=60)
    with pytest.raises(InferenceError):
        srv.start()
    log = (tmp_path / "s.log").read_text(encoding="utf-8", errors="replace")
    assert "config.pbtxt lists output CONFIDENCE, the ONNX file has LABELS" in log, log[-2000:]
    assert "--add-confidence-only" in log
