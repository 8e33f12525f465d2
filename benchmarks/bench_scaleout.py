"""Benchmark: scans/minute with 1 and 2 Ray workers against 1 and 2 Triton servers.

``python benchmarks/bench_scaleout.py [--n 12] [--shape 200 512 512] [--work /tmp/hs_bench_scaleout]``

Writes ``--n`` phantoms (NIfTI, all grades) and screens them

* without Ray: the batch's thread pool (``--concurrency 2``), one bundled server,
  timing the client process's CPU (``getrusage``) and the server's process group
  CPU (``/proc``): **CPU-seconds per scan** on each side, the numbers the scaling
  model needs;
* with a local Ray instance (:class:`client.scaleout.ray_runner.RayScreen`): 1 and 2
  actors x 1 and 2 bundled servers (:class:`client.serving.endpoints.EndpointPool`),
  timing Ray's start-up (instance + actors opening their segmenter) apart from
  the screening itself.

Every configuration checks that its rows equal the no-Ray run's (ratio, grade).
Results: ``benchmarks/results/scaleout.json`` with machine info, and the scaling
model on paper (``model``) computed from the measured CPU-seconds per scan.

What a 2-core machine allows to conclude: the overhead Ray adds per scan and at
start-up, that rows do not change, and the CPU cost per scan on each side. It
cannot show scaling: two actors and two servers share the same two cores, so
more of either can only redistribute the same CPU. Throughput for N machines
follows from the model (docs/scale-out.md).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import machine_info, save_result  # noqa: E402


def group_cpu_s(pgid: int) -> float:
    """User + system CPU seconds of the live processes in process group ``pgid``
    (children that already exited are not counted: the server's stay up)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text(encoding="utf-8").rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # field 5 (pgrp), after state and ppid
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


def self_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def make_scans(folder: Path, n: int, shape) -> list[Path]:
    import SimpleITK as sitk

    from training.phantoms import make_phantom

    folder.mkdir(parents=True, exist_ok=True)
    grades = ("normal", "mild", "moderate", "severe")
    paths = []
    for i in range(n):
        path = folder / f"p{i:03d}.nii.gz"
        if not path.exists():
            p = make_phantom(9100 + i, shape=tuple(shape), grade=grades[i % 4])
            sitk.WriteImage(p.to_scan().to_sitk(), str(path), useCompression=True)
        paths.append(path)
    return paths


def no_ray(paths, server, config, workers: int) -> dict:
    from client.pipeline.screen import screen_scan
    from client.pipeline.segmenters import TritonSegmenter

    with TritonSegmenter.connect([server.grpc_url], max_in_flight=workers) as seg:
        screen_scan(paths[0], seg, config)  # warm: imports, first request
        c0, s0, t0 = self_cpu_s(), group_cpu_s(server.pid), time.perf_counter()
        with ThreadPoolExecutor(workers) as pool:
            results = list(pool.map(lambda p: screen_scan(p, seg, config), paths))
        wall = time.perf_counter() - t0
        client_cpu, server_cpu = self_cpu_s() - c0, group_cpu_s(server.pid) - s0
    n = len(paths)
    return {
        "workers": workers,
        "servers": 1,
        "scans_per_minute": round(60 * n / wall, 2),
        "wall_s": round(wall, 2),
        "client_cpu_s_per_scan": round(client_cpu / n, 3),
        "server_cpu_s_per_scan": round(server_cpu / n, 3),
        "rows": {r.case_id: (r.row.get("ratio"), r.row.get("grade")) for r in results},
    }


def with_ray(paths, servers, config, workers: int) -> dict:
    import ray

    from client.reading.discover import source_for_path
    from client.scaleout.ray_runner import RayScreen, init_ray

    urls = [s.grpc_url for s in servers]
    spec = {"kind": "triton", "urls": urls, "max_in_flight": 2, "client_kwargs": {}}
    got = {}
    t0 = time.perf_counter()
    init_ray("local")
    try:
        t_init = time.perf_counter() - t0
        with RayScreen(spec, config, workers=workers, in_flight=2 * workers) as screen:
            t_ready = time.perf_counter() - t0
            warm = [source_for_path(p) for p in paths[: 2 * workers]]
            screen.run(warm, lambda r: None)  # each actor's imports and first requests
            t1 = time.perf_counter()
            screen.run(
                [source_for_path(p) for p in paths],
                lambda r: got.__setitem__(r["case_id"], (r.get("ratio"), r.get("grade"))),
            )
            wall = time.perf_counter() - t1
    finally:
        ray.shutdown()
    n = len(paths)
    return {
        "workers": workers,
        "servers": len(servers),
        "scans_per_minute": round(60 * n / wall, 2),
        "wall_s": round(wall, 2),
        "ray_init_s": round(t_init, 2),
        "ray_init_and_actors_ready_s": round(t_ready, 2),
        "rows": got,
    }


def scaling_model(client_cpu_s: float, server_cpu_s: float, cores_per_client: int = 32) -> dict:
    """Throughput for N client machines feeding G servers, from CPU-seconds per scan."""
    per_machine = 60.0 * cores_per_client / client_cpu_s
    table = []
    for n_clients in (1, 2, 4, 8, 16, 32):
        table.append({"client_machines": n_clients,
                      "scans_per_minute_client_bound": round(n_clients * per_machine)})  # fmt: skip
    return {
        "rule": "scans/min = min(N_client_cores * 60 / client_cpu_s_per_scan, "
        "sum over servers of volumes/s * 60); each of them also <= storage and network rate",
        "client_cpu_s_per_scan": client_cpu_s,
        "server_cpu_s_per_scan_cpu_onnx": server_cpu_s,
        "cores_per_client_machine_assumed": cores_per_client,
        "client_bound_table": table,
        "client_cores_per_gpu_server": {
            f"{v} volumes/s": round(v * client_cpu_s) for v in (23, 46, 73, 147)
        },
        "gpu_rates_source": "benchmarks/GPU.md section 3 (A100/H100 at 25-50 % utilisation)",
    }


def main(argv=None) -> int:
    from client.pipeline.screen import ScreenConfig
    from client.serving.server import EmbeddedServer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=12)
    ap.add_argument("--shape", type=int, nargs=3, default=(200, 512, 512))
    ap.add_argument("--work", type=Path, default=Path("/tmp/hs_bench_scaleout"))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)
    paths = make_scans(args.work / "scans", args.n, args.shape)
    config = ScreenConfig(out_dir=args.work / "out")
    import ray

    res = {
        "machine": machine_info(ray=ray.__version__),
        "n_scans": args.n,
        "shape": list(args.shape),
        "note": "2 cores: actors and servers share the same CPU; see the module docstring",
        "load_average_1_5_15_at_start": [round(x, 2) for x in os.getloadavg()],
        "runs": {},
    }
    with EmbeddedServer() as a, EmbeddedServer() as b:
        base = no_ray(paths, a, config, workers=2)
        res["runs"]["no_ray_threads2_server1"] = base
        for workers in (1, 2):
            for servers in ([a], [a, b]):
                r = with_ray(paths, servers, config, workers)
                r["rows_equal_no_ray"] = r["rows"] == base["rows"]
                res["runs"][f"ray_workers{workers}_servers{len(servers)}"] = r
    for r in res["runs"].values():
        r.pop("rows")
    res["model"] = scaling_model(base["client_cpu_s_per_scan"], base["server_cpu_s_per_scan"])
    res["load_average_1_5_15_at_end"] = [round(x, 2) for x in os.getloadavg()]
    save_result(res, args.out, "scaleout.json")
    return 0 if all(r.get("rows_equal_no_ray", True) for r in res["runs"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
