"""The measurement tools: FLOPs counting, the load generator, the results report.

Speed is measured in benchmarks/, never asserted here; these tests check that the
tools measure the right thing, against independent references (SciPy, a
scatter loop, the exported ONNX graph, PyTorch's own layers, the real bundled
Triton server and its statistics).
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from benchmarks import flops
from client.core.paths import SHIPPED_ONNX

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
ONNX_CPU = SHIPPED_ONNX


# --- FLOPs ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "shape,kernel,stride,pad",
    [((6, 5, 7), (5, 5, 5), (1, 1, 1), (2, 2, 2)), ((8, 6, 9), (2, 2, 4), (2, 2, 1), (0, 0, 0))],
)
def test_brute_force_conv_matches_scipy_and_formula(shape, kernel, stride, pad):
    from scipy.signal import correlate

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, *shape))
    w = rng.normal(size=(3, 2, *kernel))
    out, count = flops.brute_force_conv(x, w, stride, pad)
    xp = np.pad(x, [(0, 0)] + [(p, p) for p in pad])
    sd, sh, sw = stride
    ref = np.stack(
        [
            sum(correlate(xp[ci], w[co, ci], mode="valid") for ci in range(2))[::sd, ::sh, ::sw]
            for co in range(3)
        ]
    )
    np.testing.assert_allclose(out, ref, atol=1e-10)
    assert out.shape[1:] == flops.conv_out_shape(shape, kernel, stride, pad)
    assert count == flops.conv_macs(2, 3, kernel, out.shape[1:])


def test_brute_force_convtranspose_matches_scatter_loop_and_formula():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 2, 3, 2))
    w = rng.normal(size=(3, 2, 2, 2, 4))  # [c_in, c_out, kd, kh, kw]
    stride = (2, 2, 1)
    out, count = flops.brute_force_conv(x, w, stride, transpose=True)
    ref = np.zeros((2, *flops.convtranspose_out_shape(x.shape[1:], w.shape[2:], stride)))
    for ci in range(3):
        for i, j, k in np.ndindex(*x.shape[1:]):
            for a, b, c in np.ndindex(*w.shape[2:]):
                ref[:, i * 2 + a, j * 2 + b, k + c] += x[ci, i, j, k] * w[ci, :, a, b, c]
    np.testing.assert_allclose(out, ref, atol=1e-12)
    assert count == flops.convtranspose_macs(3, 2, w.shape[2:], x.shape[1:])


def test_flops_of_shipped_model_equal_the_onnx_graph():
    pytest.importorskip("onnx")
    settings, layers = flops.config_layers(flops.CONFIGS["shipped CPU (demo_vnet_cpu.yml)"])
    o = flops.onnx_macs(ONNX_CPU)
    assert o["input_shape"][2:] == settings["model_shape"]
    assert sorted(o["conv_macs"]) == sorted(x.macs for x in layers)
    assert o["total_macs"] == sum(x.macs for x in layers)


def test_flops_of_tiny_original_vnet_brute_force_through_torch_layers():
    """Every conv of a real (tiny) VNet, re-executed by the counting executor."""
    torch = pytest.importorskip("torch")
    from training.torch_vnet import TorchVNet

    kernel = [[2, 2, 4], [2, 2, 2], [2, 2, 2], [2, 2, 2]]
    stride = [[2, 2, 1], [2, 2, 1], [2, 2, 2], [2, 2, 2]]
    shape = (16, 16, 20)
    torch.manual_seed(0)
    net = TorchVNet(kernel_size=kernel, stride_size=stride, width=0.125).eval()
    seen = []

    def hook(mod, inp, out):
        seen.append((mod, inp[0][0].detach().double().numpy(), out[0].detach().double().numpy()))

    for m in net.modules():
        if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d)):
            m.register_forward_hook(hook)
    with torch.no_grad():
        net(torch.rand(1, 1, *shape))
    counted = 0
    for mod, x, y in seen:
        transpose = isinstance(mod, torch.nn.ConvTranspose3d)
        w = mod.weight.detach().double().numpy()
        out, n = flops.brute_force_conv(
            x, w, mod.stride, (0, 0, 0) if transpose else mod.padding, transpose=transpose
        )
        out += mod.bias.detach().double().numpy()[:, None, None, None]
        np.testing.assert_allclose(out, y, rtol=1e-4, atol=1e-4)
        counted += n
    layers = flops.vnet_layers(shape, 0.125, kernel, stride)
    assert len(layers) == len(seen)
    assert sum(x.macs for x in layers) == counted


def test_flops_refuses_a_shape_the_network_cannot_run():
    with pytest.raises(ValueError, match="does not fit"):
        flops.vnet_layers((20, 20, 20))


# --- decompression prototype --------------------------------------------------------
def test_prototype_fast_reader_equals_simpleitk_on_real_ct(tmp_path):
    pytest.importorskip("isal")
    import SimpleITK as sitk

    from benchmarks.bench_decompress import read_voxels_isal

    ct = DATA / "totalseg_example" / "ct_small.nii.gz"
    ref = sitk.GetArrayFromImage(sitk.ReadImage(str(ct)))
    arr = read_voxels_isal(ct)
    assert arr is not None and arr.dtype == ref.dtype and np.array_equal(arr, ref)
    # A scaled image is not handled (None: the caller falls back to SimpleITK).
    img = sitk.Cast(sitk.ReadImage(str(ct)), sitk.sitkInt16)
    path = tmp_path / "scaled.nii"
    sitk.WriteImage(img, str(path))
    raw = bytearray(path.read_bytes())
    raw[112:116] = struct.pack("<f", 2.0)  # scl_slope
    gz = tmp_path / "scaled.nii.gz"
    c = zlib.compressobj(1, zlib.DEFLATED, 31)
    gz.write_bytes(c.compress(bytes(raw)) + c.flush())
    assert read_voxels_isal(gz) is None


# --- serving matrix helper -----------------------------------------------------------
def test_repository_without_batching_removes_only_the_batching_block(tmp_path):
    from benchmarks.bench_serving import repository_without_batching

    src = ROOT / "model_repository" / "cpu"
    dest = repository_without_batching(src, tmp_path / "repo")
    before = (src / "hepascreen_vnet" / "config.pbtxt").read_text(encoding="utf-8")
    after = (dest / "hepascreen_vnet" / "config.pbtxt").read_text(encoding="utf-8")
    assert "dynamic_batching" in before and "dynamic_batching" not in after
    assert "preferred_batch_size" not in after and "max_queue_delay" not in after
    for kept in ("max_batch_size", "instance_group", "onnx_file", "VOLUME", "LABELS"):
        assert kept in after
    assert after.count("{") == after.count("}")
    assert (dest / "hepascreen_vnet" / "1" / "model.onnx").exists()


# --- load generator against the real bundled server ----------------------------------
@pytest.mark.slow
@pytest.mark.server
def test_load_generator_against_bundled_server(tmp_path):
    """The CLI drives a real server by --url; its counts agree with the server's own."""
    from benchmarks.load import main
    from client.serving.server import EmbeddedServer

    pbtxt = (ROOT / "model_repository" / "cpu" / "hepascreen_vnet" / "config.pbtxt").read_text(
        encoding="utf-8"
    )
    dims = re.search(r'name: "VOLUME".*?dims: \[([^\]]+)\]', pbtxt, re.S).group(1)
    declared = [int(d) for d in dims.split(",")]
    out = tmp_path / "load.json"
    with EmbeddedServer() as srv:
        rc = main(
            ["--url", srv.grpc_url, "--concurrency", "1", "2", "--requests", "4",
             "--phantoms", "1", "--warmup", "1", "--data", str(DATA), "--out", str(out)]
        )  # fmt: skip
    assert rc == 0
    res = json.loads(out.read_text(encoding="utf-8"))
    assert res["endpoint"]["url"] == srv.grpc_url and "bundled_server" not in res["endpoint"]
    assert res["machine"]["cpu_count"] >= 1 and res["endpoint"]["server"]["version"]
    assert res["model"]["input_shape"] == declared
    assert any(n.startswith("real CT") for n in res["inputs"])
    voxels = int(np.prod(declared))
    wire = res["bytes_per_request"]
    assert wire["payload_in"] == voxels and wire["payload_out"] == voxels // declared[0]
    assert 0 < wire["protocol_overhead"] < 1024
    assert wire["grpc_message_total"] == wire["payload_total"] + wire["protocol_overhead"]
    for lvl in res["levels"]:
        assert lvl["requests_ok"] == 4 and lvl["requests_failed"] == 0
        # The server's own statistics saw exactly the requests the generator sent.
        assert lvl["server_inference_count"] == 4
        assert 1 <= lvl["server_execution_count"] <= 4
        lat = lvl["latency"]
        assert 0 < lat["p50_s"] <= lat["p95_s"] <= lat["p99_s"] <= lat["max_s"]
        assert lvl["volumes_per_s"] == pytest.approx(4 / lvl["wall_s"], rel=0.01)


@pytest.mark.slow
@pytest.mark.server
def test_load_generator_starts_and_measures_the_bundled_server():
    from benchmarks.load import LoadConfig, run_load

    res = run_load(LoadConfig(concurrency=[2], requests=2, phantoms=1, warmup=0, data_dir=DATA))
    assert res["endpoint"]["bundled_server"] and res["endpoint"]["url"].startswith("127.0.0.1:")
    (lvl,) = res["levels"]
    assert lvl["requests_ok"] == 2 and lvl["server_inference_count"] == 2
    # Server CPU comes from its own process group; the model's work is not free.
    assert lvl["server_cpu_s_per_volume"] > 0


def test_load_generator_refuses_bad_settings():
    from benchmarks.load import LoadConfig, percentiles, run_load

    with pytest.raises(ValueError, match="concurrency"):
        run_load(LoadConfig(concurrency=[0]))
    with pytest.raises(ValueError, match="requests"):
        run_load(LoadConfig(requests=0))
    p = percentiles([0.3, 0.1, 0.2, 0.4])
    assert p["p50_s"] == pytest.approx(0.25) and p["max_s"] == pytest.approx(0.4)


# --- RESULTS.md generator ------------------------------------------------------------
def test_make_results_shows_measured_and_lists_missing(tmp_path):
    pytest.importorskip("matplotlib")
    from benchmarks.make_results import build

    res = tmp_path / "results"
    res.mkdir()
    for name in ("batch.json", "decompress.json"):
        src = ROOT / "benchmarks" / "results" / name
        if src.exists():
            shutil.copy(src, res / name)
    serving = {
        "machine": {"platform": "test", "cpu_count": 2},
        "model_shape": [64, 64, 64],
        "inputs": ["phantom"],
        "requests_per_cell": 4,
        "repeats": 1,
        "results": {
            f"triton_batching_{m}_batch1_c{c}": {
                "path": "triton_grpc",
                "dynamic_batching": m,
                "batch": 1,
                "concurrency": c,
                "volumes_per_s": 5.0 + c,
                "ratio": 1.0,
                "latency": {"p50_s": 0.1 * c, "p95_s": 0.2 * c, "p99_s": 0.3 * c},
            }
            for m in ("on", "off")
            for c in (1, 2)
        },
    }
    (res / "serving.json").write_text(json.dumps(serving))
    scaling = {
        "machine": {"platform": "test", "cpu_count": 2},
        "what": "test",
        "scaling": [
            {"grid": [n, n, n], "voxels": n**3, "ours_cpu": 0.01 * n, "original_cpu": 0.1 * n,
             "ours_peak_mb": n, "original_peak_mb": 5 * n}
            for n in (64, 128)
        ],
    }  # fmt: skip
    (res / "postprocess_scaling.json").write_text(json.dumps(scaling))
    out = tmp_path / "RESULTS.md"
    plots = tmp_path / "plots"
    text = build(res, out, plots)
    assert "The machine was shared" in text
    assert "## Serving" in text and "| triton_grpc | on | 1 | 2 | 7 |" in text
    assert (plots / "serving.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    missing = text.split("## Not measured yet")[1]
    assert "flops.json" in missing and "triton.json" in missing
    assert "| 128x128x128 | 2,097,152 | 12.8 | 1.28 |" in text  # CPU columns, sorted keys
    assert (plots / "postprocess_time.png").exists() and (plots / "postprocess_memory.png").exists()
    assert "Postprocess time vs voxel count" not in missing
    for img in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
        assert (out.parent / img).exists()
    (res / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="broken.json"):
        build(res, out, plots)


def test_gpu_md_says_what_the_gpu_path_really_does():
    """Issue 23: GPU.md claimed map-back runs on the GPU and batch norm is folded at export."""
    import collections

    import onnx

    root = Path(__file__).resolve().parents[1]
    text = (root / "benchmarks" / "GPU.md").read_text(encoding="utf-8")
    assert "folded into the convolutions at export" not in text
    assert "running map-back and measurement on the GPU" not in text
    onnx_file = root / "model_repository" / "cpu" / "hepascreen_vnet" / "1" / "model.onnx"
    ops = collections.Counter(n.op_type for n in onnx.load(str(onnx_file)).graph.node)
    assert f"{ops['BatchNormalization']} `BatchNormalization` nodes" in text
    assert "map-back" in text and "stays on the CPU" in text


def test_bench_dicom_runs_small_and_finds_every_reader_equal(tmp_path):
    from benchmarks import bench_dicom

    out = tmp_path / "res"
    argv = ["--slices", "10", "--repeats", "1", "--work", str(tmp_path / "w"), "--out", str(out),
            "--layouts", "uncompressed_u12_intercept", "rle"]  # fmt: skip
    assert bench_dicom.main(argv) == 0
    res = json.loads((out / "dicom.json").read_text(encoding="utf-8"))
    for name, s in res["series"].items():
        assert s["files"] == 10 and s["cpu_s"]["read_scan"] > 0, name
        assert all(v for k, v in s["identical"].items() if k != "dtype"), (name, s["identical"])
