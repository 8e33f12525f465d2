"""Regenerate ``benchmarks/RESULTS.md`` and its PNG plots from ``benchmarks/results/*.json``.

``python benchmarks/make_results.py [--results benchmarks/results] [--out benchmarks/RESULTS.md]
[--plots benchmarks/plots]``

Only what was measured is shown: every section reads one JSON result written by a
benchmark script (machine info included) and says which script and command made it.
Plots whose data is missing are listed under "Not measured yet" instead of drawn.
Nothing is measured here; run the benchmark scripts first (``benchmarks/README.md``).

Keys read beyond what today's scripts write, so that extended benchmarks show up
without changing this file:

* ``postprocess.json`` (or ``postprocess_scaling.json``) ``"scaling"``: a list of
  ``{"grid": [z, y, x] or "voxels": n, "<name>_s": seconds, ..., "<name>_peak_mb": MB, ...}``
  (every ``*_s`` key is drawn on the time plot, every ``*mb``/``peak``/``rss`` key on the
  memory plot);
* ``batch.json`` ``"runs"`` entries: ``overlap_efficiency``, ``peak_rss_mb``,
  ``wire_bytes_per_scan``, ``cpu_s_per_scan``, ``n_scans`` (runs at N = 20 and 100).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# (result file, script that writes it)
KNOWN = {
    "postprocess.json": "benchmarks/bench_postprocess.py",
    "serving.json": "benchmarks/bench_serving.py",
    "triton.json": "benchmarks/bench_triton.py",
    "batch.json": "benchmarks/bench_batch.py",
    "decompress.json": "benchmarks/bench_decompress.py",
    "flops.json": "python -m benchmarks.flops",
    "training_step.json": "benchmarks/bench_training_step.py",
    "postprocess_scaling.json": "benchmarks/bench_postprocess_scaling.py",
    "dicom.json": "benchmarks/bench_dicom.py",
}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, plots: Path, name: str, out_md: Path) -> str:
    plots.mkdir(parents=True, exist_ok=True)
    path = plots / name
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})
    _plt().close(fig)
    try:
        rel = path.resolve().relative_to(out_md.resolve().parent)
    except ValueError:
        rel = path.resolve()
    return f"![{name}]({rel.as_posix()})"


def _fmt(v, nd=3) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:.{nd}g}" if abs(v) < 1e3 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows]
    return out


def _machine_line(res: dict) -> str:
    m = res.get("machine", {})
    if not m:
        return "_machine info: not recorded in this file_"
    parts = [f"{m.get('platform', '?')}", f"{m.get('cpu_count', '?')} cores"]
    if m.get("processor"):
        parts.append(m["processor"])
    parts += [f"{k} {v}" for k, v in m.items() if k not in ("platform", "cpu_count", "processor")]
    return "_Machine: " + ", ".join(str(p) for p in parts) + "._"


# --- sections -----------------------------------------------------------------------
def section_postprocess(res, plots, out_md, missing) -> list[str]:
    lines = ["## Postprocess: `assess` vs the original method", "", _machine_line(res), ""]
    if "speed_s" in res:
        grid = "x".join(map(str, res.get("grid", [])))
        s = res["speed_s"]
        lines += [
            f"One volume, grid {grid} (z x y x x), liver {_fmt(res.get('liver_voxels'))} voxels:",
            "",
        ]
        lines += _table(
            ["method", "seconds", "vs ours"],
            [[k, v, round(v / s["ours_assess_200_cubes"], 1)] for k, v in s.items()],
        )
        lines.append("")
    volumes = res.get("volumes")
    if isinstance(volumes, list) and volumes and isinstance(volumes[0], dict):
        lines += [
            "Every volume, same run"
            + (f" ({res['volumes_what']})" if res.get("volumes_what") else "")
            + ":",
            "",
        ]
        lines += _table(
            ["volume", "grid", "dtype", "liver ml", "spleen ml", "ours s", "before s",
             "original 5 cubes s", "original 200 cubes s", "vs original 5", "vs original 200",
             "vs before", "identical to before"],
            [
                [v["volume"], "x".join(map(str, v["grid"])), v.get("dtype"), v.get("liver_ml"),
                 v.get("spleen_ml"), v["cpu_s"]["ours"], v["cpu_s"]["before"],
                 v["cpu_s"]["original_5_cubes"], v["cpu_s"]["original_200_cubes"],
                 f"{v['speedup_vs_original_5_cubes']}x", f"{v['speedup_vs_original_200_cubes']}x",
                 f"{v['speedup_vs_before']}x", "yes" if v.get("identical_to_before") else "NO"]
                for v in volumes
            ],
        )  # fmt: skip
        eq = res.get("equality")
        if isinstance(eq, dict):
            lines += [
                "",
                f"Results identical to the code before issue 23 (every row column, flags, notes, "
                f"evidence, cube corners and means): {eq.get('identical')}/{eq.get('cases')} "
                f"cases (accuracy phantoms and real-CT seeds)"
                + (f"; differing: {', '.join(eq['differing'])}" if eq.get("differing") else "")
                + ".",
            ]
        lines.append("")
    scaling = res.get("scaling") or res.get("sizes")
    if isinstance(scaling, list) and scaling and isinstance(scaling[0], dict):
        xs = [e.get("voxels") or _prod(e.get("grid") or e.get("shape")) for e in scaling]
        # CPU seconds when recorded (steadier on a shared machine), else wall seconds.
        cpu_keys = {k for e in scaling for k in e if k.endswith(("_cpu", "_cpu_s"))}
        times = sorted(
            {
                k
                for e in scaling
                for k, v in e.items()
                if (k in cpu_keys if cpu_keys else k.endswith("_s")) and isinstance(v, (int, float))
            }
        )
        mems = sorted(
            {
                k
                for e in scaling
                for k, v in e.items()
                if ("mb" in k.lower() or "rss" in k.lower() or "peak" in k.lower())
                and isinstance(v, (int, float))
            }
        )
        speed = sorted(
            {k for e in scaling for k, v in e.items() if k.startswith("speedup") and v is not None}
        )
        grids = ["x".join(map(str, e.get("grid") or e.get("shape") or [])) or "-" for e in scaling]
        lines += [
            "Time and peak memory vs voxel count"
            + (f" ({res['scaling_what']})" if res.get("scaling_what") else "")
            + ":",
            "",
        ]
        lines += _table(
            ["grid", "voxels", *times, *mems, *speed],
            [
                [g, x, *[e.get(k) for k in times + mems + speed]]
                for g, x, e in zip(grids, xs, scaling)
            ],
        )
        errors = [
            (g, k, v) for g, e in zip(grids, scaling) for k, v in e.items() if k.endswith("_error")
        ]
        for g, k, v in errors:
            lines.append(f"- {g}: {k[: -len('_error')]} failed: {v}")
        lines.append("")
        plt = _plt()
        if times:
            fig, ax = plt.subplots(figsize=(6, 4))
            for k in times:
                pts = [(x, e[k]) for x, e in zip(xs, scaling) if e.get(k) is not None]
                ax.loglog(*zip(*pts), "o-", label=k)
            ax.set_xlabel("voxels")
            ax.set_ylabel("CPU seconds" if cpu_keys else "seconds")
            ax.set_title("postprocess time vs voxel count (one thread)")
            ax.legend(fontsize=8)
            lines += [_save(fig, plots, "postprocess_time.png", out_md), ""]
        else:
            missing.append("Postprocess time vs voxel count (no time columns in the scaling data)")
        if mems:
            fig, ax = plt.subplots(figsize=(6, 4))
            for k in mems:
                pts = [(x, e[k]) for x, e in zip(xs, scaling) if e.get(k) is not None]
                ax.loglog(*zip(*pts), "o-", label=k)
            ax.set_xlabel("voxels")
            ax.set_ylabel("peak memory (as recorded)")
            ax.set_title("postprocess peak memory vs voxel count")
            ax.legend(fontsize=8)
            lines += [_save(fig, plots, "postprocess_memory.png", out_md), ""]
        else:
            missing.append("Postprocess peak memory vs voxel count")
    else:
        missing.append(
            "Postprocess time vs voxel count, 128^3 to 512 x 512 x 600 (only one size measured)"
        )
        missing.append("Postprocess peak memory vs voxel count")
    if "accuracy_phantoms" in res:
        a, r = res["accuracy_phantoms"], res.get("accuracy_real_ct", {})
        lines += ["Accuracy (true masks given to both methods):", ""]
        lines += _table(
            ["data", "ours mean abs ratio error", "original (5 cubes)"],
            [
                [
                    f"{a.get('seeds')} phantoms",
                    a.get("ours_mean_abs_err"),
                    a.get("original_5_cubes_mean_abs_err"),
                ],
                [
                    "real CT (vs eroded-mask ratio)",
                    r.get("ours_mean_abs_err"),
                    r.get("original_5_cubes_mean_abs_err"),
                ],
            ],
        )
        lines.append("")
    return lines


def _prod(shape):
    if not shape:
        return None
    n = 1
    for d in shape:
        n *= int(d)
    return n


def section_serving(res, plots, out_md, missing) -> list[str]:
    rows = res.get("results", {})
    lines = [
        "## Serving: in-process ONNX Runtime vs Triton gRPC",
        "",
        _machine_line(res),
        "",
        f"Model input {'x'.join(map(str, res.get('model_shape', [])))}; inputs: {', '.join(res.get('inputs', []))}; "
        f"{res.get('requests_per_cell')} volumes per cell, {res.get('repeats')} repeats. "
        + (res.get("statistic") or "Ratio: volumes/s over ONNX Runtime batch 1 in the same run.")
        + ". CPU s/vol: CPU seconds per volume of the client process and of the server's "
        "process group (steadier than volumes/s on a shared machine).",
        "",
    ]
    table = []
    for r in rows.values():
        lat = r.get("latency", {})
        table.append(
            [
                r.get("path"),
                r.get("dynamic_batching", "-"),
                r.get("batch"),
                r.get("concurrency"),
                r.get("volumes_per_s"),
                r.get("ratio"),
                lat.get("p50_s"),
                lat.get("p95_s"),
                lat.get("p99_s"),
                r.get("mean_server_batch", "-"),
                r.get("client_cpu_s_per_volume"),
                r.get("server_cpu_s_per_volume"),
            ]
        )
    lines += _table(
        [
            "path",
            "dyn. batching",
            "batch",
            "concurrency",
            "volumes/s",
            "ratio",
            "p50 s",
            "p95 s",
            "p99 s",
            "mean server batch",
            "client CPU s/vol",
            "server CPU s/vol",
        ],
        table,
    )
    lines.append("")
    mbs = {v.get("max_batch_size") for v in res.get("servers", {}).values()} - {None}
    if mbs:
        lines += [
            f"Triton requests carry at most the served model's max_batch_size ({', '.join(map(str, sorted(mbs)))}) "
            "volumes; larger batches ran in-process only.",
            "",
        ]
    wire = next(iter(res.get("servers", {}).values()), {}).get("bytes_per_request")
    if wire:
        lines += [
            f"Bytes per request of one volume: tensors {_fmt(wire['payload_total'])} "
            f"(in {_fmt(wire['payload_in'])} + out {_fmt(wire['payload_out'])}), serialized gRPC "
            f"messages {_fmt(wire['grpc_message_total'])} (protocol overhead {_fmt(wire['protocol_overhead'])} bytes "
            "before HTTP/2 framing).",
            "",
        ]
    plt = _plt()
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(15, 4.2))
    triton = [r for r in rows.values() if r.get("path") == "triton_grpc"]
    # Plot the paired ratio when every row has one (robust to a shared machine's drift).
    metric = (
        "ratio"
        if rows and all(r.get("ratio") is not None for r in rows.values())
        else "volumes_per_s"
    )
    series = sorted({(r.get("dynamic_batching"), r.get("batch")) for r in triton})
    for n, (mode, batch) in enumerate(series):
        pts = sorted(
            (
                (r["concurrency"], r)
                for r in triton
                if (r.get("dynamic_batching"), r.get("batch")) == (mode, batch)
            ),
            key=lambda p: p[0],
        )
        cs = [c for c, _ in pts]
        style = "o-" if mode == "on" else "s--"
        label = f"Triton, batching {mode}, {batch} vol/request"
        a1.plot(cs, [r[metric] for _, r in pts], style, color=f"C{n}", label=label)
        cpu = [(c, r.get("server_cpu_s_per_volume")) for c, r in pts]
        cpu = [(c, v) for c, v in cpu if v is not None]
        if cpu:
            a3.plot(*zip(*cpu), style, color=f"C{n}", label=label)
        if batch == 1:
            for q, alpha in (("p50_s", 1.0), ("p95_s", 0.55), ("p99_s", 0.3)):
                a2.plot(
                    cs,
                    [r["latency"][q] for _, r in pts],
                    style,
                    color=f"C{n}",
                    alpha=alpha,
                    label=f"batching {mode} {q[:3]}",
                )
    ort = sorted(
        (r["batch"], r) for r in rows.values() if r.get("path") == "onnxruntime_in_process"
    )
    for k, (b, r) in enumerate(ort):
        a1.axhline(
            r[metric],
            lw=1,
            ls=":",
            color=f"C{len(series) + k}",
            label=f"ONNX Runtime in-process, batch {b}",
        )
        if r.get("client_cpu_s_per_volume") is not None:
            a3.axhline(
                r["client_cpu_s_per_volume"],
                lw=1,
                ls=":",
                color=f"C{len(series) + k}",
                label=f"ONNX Runtime in-process, batch {b}",
            )
    if triton:
        for ax in (a1, a2, a3):
            ax.set_xscale("log", base=2)
            levels = sorted({r["concurrency"] for r in triton})
            ax.set_xticks(levels, [str(c) for c in levels])
            ax.minorticks_off()
            ax.set_ylim(bottom=0)
            ax.set_xlabel("requests in flight")
        a1.set_ylabel("volumes/s over ONNX Runtime batch 1" if metric == "ratio" else "volumes / s")
        a1.set_title(
            "throughput" + (" (ratio to the paired baseline)" if metric == "ratio" else "")
        )
        a1.legend(fontsize=7)
        a2.set_ylabel("seconds per request (1 volume)")
        a2.set_title("latency p50 / p95 / p99")
        a2.legend(fontsize=7, ncol=2)
        a3.set_ylabel("CPU seconds per volume")
        if a3.get_legend_handles_labels()[0]:
            a3.set_title("CPU cost (server process group / in-process)")
            a3.legend(fontsize=7)
        else:
            a3.set_title("CPU cost: not recorded in this file")
        lines += [_save(fig, plots, "serving.png", out_md), ""]
    else:
        plt.close(fig)
        missing.append("Serving throughput/latency vs concurrency plot (no Triton rows)")
    return lines


def section_triton_legacy(res, plots, out_md, missing) -> list[str]:
    lines = ["### Earlier serving run (`bench_triton.py`)", "", _machine_line(res), ""]
    lines += _table(
        ["path", "volumes/s", "ratio", "inferences", "executions"],
        [
            [
                k,
                r.get("volumes_per_s"),
                r.get("ratio"),
                r.get("inference_count"),
                r.get("execution_count"),
            ]
            for k, r in res.get("results", {}).items()
        ],
    )
    return lines + [""]


def section_batch(res, plots, out_md, missing) -> list[str]:
    shape = "x".join(map(str, res.get("shape", [])))
    lines = [
        "## End to end: `python -m client.batch`",
        "",
        _machine_line(res),
        "",
        f"{res.get('n_scans')} phantoms of {shape} (.nii.gz), bundled server included:",
        "",
    ]
    runs = res.get("runs", {})
    extra_keys = ["overlap_efficiency", "peak_rss_mb", "wire_bytes_per_scan", "cpu_s_per_scan"]
    present = [k for k in extra_keys if any(k in r for r in runs.values())]
    lines += _table(
        ["run", "scans/min", "wall s", "grades", *present],
        [
            [
                k,
                r.get("scans_per_minute"),
                r.get("wall_s_including_server_start"),
                r.get("grades_correct"),
                *[r.get(x) for x in present],
            ]
            for k, r in runs.items()
        ],
    )
    lines.append("")
    for k in extra_keys:
        if k not in present:
            missing.append(f"End to end: {k.replace('_', ' ')}")
    ns = sorted({r.get("n_scans", res.get("n_scans")) for r in runs.values()} - {None})
    if not (20 in ns and 100 in ns):
        missing.append("End to end at N = 100 scans (client peak RSS against N)")
    stages = {k: r["stage_seconds"] for k, r in runs.items() if "stage_seconds" in r}
    if stages:
        plt = _plt()
        fig, ax = plt.subplots(figsize=(7, 3.2))
        names = list(next(iter(stages.values())).keys())
        for i, st in enumerate(stages.values()):
            total = sum(st.values()) or 1.0
            left = 0.0
            for j, name in enumerate(names):
                frac = st.get(name, 0) / total
                ax.barh(i, frac, left=left, color=f"C{j}", label=name if i == 0 else None)
                left += frac
        ax.set_yticks(range(len(stages)), list(stages))
        ax.set_xlabel("fraction of worker time")
        ax.set_title("where the time goes, per stage")
        ax.legend(fontsize=7, ncol=len(names), loc="upper center", bbox_to_anchor=(0.5, -0.3))
        lines += [_save(fig, plots, "batch_stages.png", out_md), ""]
    return lines


def section_decompress(res, plots, out_md, missing) -> list[str]:
    f = res.get("file", {})
    rows = res.get("results", {})
    lines = [
        "## Reading: decompressing a .nii.gz",
        "",
        _machine_line(res),
        "",
        f"{'x'.join(map(str, f.get('shape_zyx', [])))} {f.get('dtype')} phantom, "
        f"{_fmt(f.get('compressed_bytes'))} bytes compressed, {_fmt(f.get('uncompressed_bytes'))} raw "
        f"({f.get('writer')}); median of {res.get('repeats')} interleaved repeats; ratios to `gzip -dc` in the same run.",
        "",
    ]
    lines += _table(
        ["reader", "wall s (median)", "CPU s (median)", "CPU vs gzip -dc", "wall min-max s"],
        [
            [
                k,
                r.get("median_s"),
                r.get("cpu_median_s"),
                r.get("cpu_ratio_to_gzip_dc"),
                f"{r.get('min_s')}-{r.get('max_s')}",
            ]
            for k, r in rows.items()
        ],
    )
    lines.append("")
    mw = res.get("mask_write", {})
    if mw.get("results"):
        lines += [f"Writing the label map: {mw.get('what')}; read back equal.", ""]
        lines += _table(
            ["zlib level", "CPU s (median)", "CPU vs default", "bytes"],
            [
                [k, r.get("cpu_median_s"), r.get("cpu_ratio_to_default"), r.get("bytes")]
                for k, r in mw["results"].items()
            ],
        )
        lines.append("")
    else:
        missing.append("Mask writing at lower zlib levels (rerun bench_decompress.py)")
    for k, v in res.get("notes", {}).items():
        lines.append(f"- {k}: {v}")
    if res.get("checks"):
        lines.append(f"- checks: {res['checks']}")
    lines.append("")
    if rows:
        plt = _plt()
        fig, ax = plt.subplots(figsize=(7, 3.6))
        names = list(rows)
        ax.barh(range(len(names)), [rows[n].get("cpu_median_s", 0) for n in names], color="C0")
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("CPU seconds (median)")
        ax.set_title("decompress / read a 512x512x300 .nii.gz")
        lines += [_save(fig, plots, "decompress.png", out_md), ""]
    return lines


def section_flops(res, plots, out_md, missing) -> list[str]:
    lines = ["## Model arithmetic (computed, not measured)", "", res.get("convention", ""), ""]
    rows = []
    for name, c in res.get("configs", {}).items():
        s = c.get("settings", {})
        rows.append(
            [
                name,
                "x".join(map(str, s.get("model_shape", []))),
                s.get("width"),
                c.get("total_gmacs"),
                c.get("total_gflops"),
                c.get("parameters_conv"),
            ]
        )
    lines += _table(
        ["config", "input", "width", "GMACs / volume", "GFLOPs / volume", "conv parameters"], rows
    )
    x = res.get("onnx_cross_check")
    if x:
        lines += [
            "",
            f"Cross-check on `{x.get('file')}`: ONNX graph {_fmt(x.get('conv_macs_total'))} MACs, analytic {_fmt(x.get('analytic_total'))} (equal: {x.get('equal')}); element-wise ops {x.get('elementwise_share_of_macs')} of the MACs.",
        ]
    return lines + ["", "GPU projection: [GPU.md](GPU.md).", ""]


def section_training(res, plots, out_md, missing) -> list[str]:
    lines = ["## Training step", "", _machine_line(res), ""]
    sp = res.get("speedup_vs_paddle_eager", {})
    lines += _table(
        ["framework", "s / step", "vs Paddle eager"],
        [[k, v, sp.get(k)] for k, v in res.get("seconds_per_step", {}).items()],
    )
    return lines + [""]


def section_load(name, res, plots, out_md, missing) -> list[str]:
    m = res.get("model", {})
    lines = [
        f"## Load generator run: `{name}`",
        "",
        _machine_line(res),
        "",
        f"Endpoint: {' '.join(str(v) for v in res.get('endpoint', {}).get('server', {}).values())}, model input {m.get('input_shape')}, "
        f"dynamic batching {'on' if m.get('dynamic_batching') not in (None, 'off') else 'off'}, batch {res.get('config', {}).get('batch')}.",
        "",
    ]
    lines += _table(
        [
            "concurrency",
            "volumes/s",
            "p50 s",
            "p95 s",
            "p99 s",
            "failed",
            "mean server batch",
            "client CPU s/vol",
            "server CPU s/vol",
        ],
        [
            [
                lv["concurrency"],
                lv["volumes_per_s"],
                lv["latency"]["p50_s"],
                lv["latency"]["p95_s"],
                lv["latency"]["p99_s"],
                lv["requests_failed"],
                lv.get("mean_server_batch"),
                lv.get("client_cpu_s_per_volume"),
                lv.get("server_cpu_s_per_volume"),
            ]
            for lv in res.get("levels", [])
        ],
    )
    wire = res.get("bytes_per_request")
    if wire:
        lines += [
            "",
            f"Bytes per request: tensors {_fmt(wire['payload_total'])}, gRPC messages "
            f"{_fmt(wire['grpc_message_total'])} (overhead {_fmt(wire['protocol_overhead'])}).",
        ]
    lines.append("")
    lines.append(f"_Source: `results/{name}`, written by `python -m benchmarks.load --out ...`._")
    return lines + [""]


def _flatten(obj, prefix="", depth=0, out=None):
    """Scalar leaves of nested dicts as (dotted key, value); long lists summarised."""
    out = [] if out is None else out
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == "machine":
                continue
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), depth + 1, out)
    elif isinstance(obj, list):
        if all(isinstance(v, (int, float, str, bool)) or v is None for v in obj) and len(obj) <= 8:
            out.append((prefix, ", ".join(_fmt(v) for v in obj)))
        elif depth < 3 and len(obj) <= 12:
            for i, v in enumerate(obj):
                _flatten(v, f"{prefix}[{i}]", depth + 1, out)
        else:
            out.append((prefix, f"(list of {len(obj)})"))
    else:
        out.append((prefix, obj))
    return out


def section_other(name, res, limit=40) -> list[str]:
    """A result file this script has no section for: its scalar values, as recorded."""
    flat = _flatten(res)
    lines = [f"## Other result: `{name}`", "", _machine_line(res), ""]
    lines += _table(["key", "value"], [[k, v] for k, v in flat[:limit]])
    if len(flat) > limit:
        lines.append(f"\n({len(flat) - limit} more values in `results/{name}`)")
    return lines + [""]


def section_dicom(res, plots, out_md, missing) -> list[str]:
    lines = [
        "## DICOM series read: `read_scan` vs plain series readers",
        "",
        _machine_line(res),
        "",
    ]
    if res.get("what"):
        lines += [res["what"] + ".", ""]
    rows = []
    for name, s in (res.get("series") or {}).items():
        c, r = s["cpu_s"], s["ratio_cpu"]
        same = all(v for k, v in s.get("identical", {}).items() if k != "dtype")
        rows.append([name, s.get("files"), c["read_bytes"], c["sitk_series"], c["pydicom_loop"],
                     c["read_scan"], c["read_scan_before"],
                     f"{r['read_scan_vs_faster_plain_reader']}x",
                     f"{r['read_scan_before_vs_faster_plain_reader']}x",
                     "yes" if same else "NO"])  # fmt: skip
    lines += _table(
        ["series", "files", "bytes read s", "SimpleITK series s", "pydicom loop s", "read_scan s",
         "read_scan before s", "ours vs faster plain", "before vs faster plain", "arrays equal"],
        rows,
    )  # fmt: skip
    return lines + [""]


SECTIONS = [
    ("decompress.json", section_decompress),
    ("dicom.json", section_dicom),
    ("batch.json", section_batch),
    ("postprocess.json", section_postprocess),
    ("serving.json", section_serving),
    ("triton.json", section_triton_legacy),
    ("flops.json", section_flops),
    ("training_step.json", section_training),
]


def build(results_dir: Path, out_md: Path, plots: Path) -> str:
    """Render the Markdown report (and write its plots) from the JSON files in ``results_dir``.

    Raises
    ------
    ValueError
        If a result file is not valid JSON (the message names the file).
    """
    results = {}
    for p in sorted(Path(results_dir).glob("*.json")):
        try:
            results[p.name] = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{p}: not valid JSON ({exc})") from exc
    if "postprocess_scaling.json" in results:
        scaling = results.pop("postprocess_scaling.json")
        merged = dict(results.get("postprocess.json", {}))
        merged["scaling"] = scaling.get("scaling")
        merged["scaling_what"] = scaling.get("what")
        merged.setdefault("machine", scaling.get("machine", {}))
        results["postprocess.json"] = merged
    missing: list[str] = []
    body: list[str] = []
    for name, fn in SECTIONS:
        if name in results:
            body += fn(results[name], plots, out_md, missing)
            source = f"_Source: `{Path(results_dir).name}/{name}`, written by `{KNOWN[name]}`"
            if name == "postprocess.json" and results[name].get("scaling_what"):
                source += (
                    f"; scaling: `{Path(results_dir).name}/postprocess_scaling.json`, "
                    f"written by `{KNOWN['postprocess_scaling.json']}`"
                )
            body.append(source + "._")
            body.append("")
        else:
            missing.append(f"{name} (`{KNOWN[name]}`): no result file")
    if "serving.json" not in results:
        missing.append(
            "Serving: batch 1-8, concurrency 1-16, dynamic batching on/off (run bench_serving.py)"
        )
    for name, res in results.items():
        if name in KNOWN:
            continue
        if "levels" in res and "endpoint" in res:
            body += section_load(name, res, plots, out_md, missing)
        else:
            body += section_other(name, res)
    head = [
        "# Benchmark results",
        "",
        "Generated by `python benchmarks/make_results.py` from `benchmarks/results/*.json`; do not edit",
        "by hand (rerun the benchmark, then this script). Every number below was measured by the script",
        "named under its section, on the machine its section names, except the model arithmetic",
        "(computed from the model definition) and anything marked otherwise.",
        "",
        "**The machine was shared** while these ran (2 cores; a model training job at low priority and",
        "other engineers' tests ran at the same time), so absolute seconds are noisy: each benchmark",
        "measures its baseline in the same run and reports ratios, and timings are medians of",
        "repeated runs where the section says so.",
        "",
    ]
    tail = ["## Not measured yet", ""]
    tail += [f"- {m}" for m in dict.fromkeys(missing)] or ["- (nothing listed)"]
    return "\n".join(head + body + tail) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    ap.add_argument("--plots", type=Path, default=ROOT / "benchmarks" / "plots")
    args = ap.parse_args(argv)
    if not args.results.is_dir():
        print(f"make_results: {args.results}: no such folder of JSON results", file=sys.stderr)
        return 2
    try:
        text = build(args.results, args.out, args.plots)
    except ValueError as exc:
        print(f"make_results: {exc}", file=sys.stderr)
        return 2
    args.out.write_text(text)
    print(f"wrote {args.out} ({len(text.splitlines())} lines), plots in {args.plots}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
