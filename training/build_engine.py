"""Build the TensorRT FP16 engine for the GPU model repository.

Runs INSIDE NVIDIA's container (``nvcr.io/nvidia/tritonserver:<ver>-py3`` or
``nvcr.io/nvidia/tensorrt``), on the GPU that will serve the engine: TensorRT
engines are specific to the GPU model and TensorRT version, and TensorRT is not
installable from PyPI on this project's CPU machines. Never run here; only its
argument handling is tested (tests/test_training.py).

``python -m training.build_engine --onnx model.onnx --out model_repository/gpu/hepascreen_vnet/1/model.plan``

What it does, with the TensorRT Python API when ``tensorrt`` imports, else by
calling ``trtexec`` with the same settings:

* parses the ONNX (uint8 ``VOLUME`` [N, 1, z, y, x] -> uint8 ``LABELS``);
* one optimisation profile over batch ``--min-batch``..``--max-batch`` (default
  1..8, optimum ``--opt-batch`` 4), spatial dims fixed from the ONNX;
* FP16 enabled (``--no-fp16`` for an FP32 engine), workspace limit
  ``--workspace-mib``, timing cache read from and written to ``--timing-cache``
  so rebuilds on the same GPU take seconds;
* writes the plan atomically where ``model_repository/gpu`` expects it, and
  checks that the GPU ``config.pbtxt``'s ``max_batch_size`` does not exceed the
  profile's maximum.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "model_repository" / "gpu" / "hepascreen_vnet" / "1" / "model.plan"
DEFAULT_ONNX = ROOT / "model_repository" / "cpu" / "hepascreen_vnet" / "1" / "model.onnx"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m training.build_engine", description=__doc__.splitlines()[0]
    )
    ap.add_argument("--onnx", type=Path, default=DEFAULT_ONNX)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--min-batch", type=int, default=1)
    ap.add_argument("--opt-batch", type=int, default=4)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--workspace-mib", type=int, default=4096)
    ap.add_argument(
        "--timing-cache", type=Path, default=None, help="timing cache file (default: next to --out)"
    )
    ap.add_argument("--no-fp16", action="store_true", help="build an FP32 engine")
    ap.add_argument(
        "--config",
        type=Path,
        default=None,
        help="GPU config.pbtxt to check max_batch_size against (default: beside --out)",
    )
    ap.add_argument(
        "--trtexec", default=None, help="path of trtexec (used when tensorrt does not import)"
    )
    ap.add_argument(
        "--dry-run",
        action="store_true",
        help="validate arguments and print the plan; build nothing",
    )
    return ap


def validate(args) -> dict:
    """Check the arguments and the inputs; return the build plan (raises SystemExit on error)."""
    problems = []
    if not (1 <= args.min_batch <= args.opt_batch <= args.max_batch):
        problems.append(
            f"need 1 <= --min-batch <= --opt-batch <= --max-batch, got {args.min_batch}, {args.opt_batch}, {args.max_batch}"
        )
    if args.workspace_mib < 64:
        problems.append(f"--workspace-mib {args.workspace_mib} is too small (>= 64)")
    if not args.onnx.is_file():
        problems.append(f"--onnx {args.onnx}: file not found")
    if args.out.suffix != ".plan":
        problems.append(f"--out {args.out}: Triton's tensorrt_plan backend expects a .plan file")
    config = args.config or args.out.parent.parent / "config.pbtxt"
    max_batch = None
    if config.is_file():
        m = re.search(r"max_batch_size:\s*(\d+)", config.read_text())
        if m:
            max_batch = int(m.group(1))
            if max_batch > args.max_batch:
                problems.append(
                    f"{config}: max_batch_size {max_batch} exceeds the engine profile's --max-batch {args.max_batch}"
                )
    if problems:
        raise SystemExit("error: " + "; ".join(problems))
    shape = None
    try:
        import onnx

        dims = (
            onnx.load(str(args.onnx), load_external_data=False)
            .graph.input[0]
            .type.tensor_type.shape.dim
        )
        shape = [d.dim_value for d in dims[1:]]
    except Exception:  # noqa: BLE001 - onnx is optional in NVIDIA's container
        pass
    return {
        "onnx": str(args.onnx),
        "out": str(args.out),
        "input_item_shape": shape,
        "profile": [args.min_batch, args.opt_batch, args.max_batch],
        "fp16": not args.no_fp16,
        "workspace_mib": args.workspace_mib,
        "timing_cache": str(args.timing_cache or args.out.with_suffix(".timing.cache")),
        "config_max_batch_size": max_batch,
    }


def _build_python(plan: dict, trt) -> bytes:
    from client.contract import INPUT_NAME

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(plan["onnx"]):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise SystemExit(f"error: TensorRT cannot parse {plan['onnx']}: {errs}")
    cfg = builder.create_builder_config()
    cfg.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan["workspace_mib"] << 20)
    if plan["fp16"]:
        cfg.set_flag(trt.BuilderFlag.FP16)
    cache_path = Path(plan["timing_cache"])
    cache = cfg.create_timing_cache(cache_path.read_bytes() if cache_path.exists() else b"")
    cfg.set_timing_cache(cache, ignore_mismatch=False)
    item = tuple(network.get_input(0).shape)[1:]
    profile = builder.create_optimization_profile()
    lo, opt, hi = plan["profile"]
    profile.set_shape(INPUT_NAME, (lo, *item), (opt, *item), (hi, *item))
    cfg.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, cfg)
    if engine is None:
        raise SystemExit("error: TensorRT engine build failed (see the log above)")
    cache_path.write_bytes(memoryview(cfg.get_timing_cache().serialize()))
    return bytes(engine)


def _build_trtexec(plan: dict, trtexec: str, tmp_out: str) -> None:
    from client.contract import INPUT_NAME

    item = "x".join(str(d) for d in plan["input_item_shape"] or [])
    if not item:
        raise SystemExit("error: install onnx (pip) so the input shape can be read for trtexec")
    lo, opt, hi = plan["profile"]
    cmd = [
        trtexec,
        f"--onnx={plan['onnx']}",
        f"--saveEngine={tmp_out}",
        f"--minShapes={INPUT_NAME}:{lo}x{item}",
        f"--optShapes={INPUT_NAME}:{opt}x{item}",
        f"--maxShapes={INPUT_NAME}:{hi}x{item}",
        f"--memPoolSize=workspace:{plan['workspace_mib']}M",
        f"--timingCacheFile={plan['timing_cache']}",
    ]
    if plan["fp16"]:
        cmd.append("--fp16")
    subprocess.run(cmd, check=True)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    plan = validate(args)
    if args.dry_run:
        import json

        print(json.dumps(plan, indent=2))
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".plan", dir=args.out.parent)
    os.close(fd)
    try:
        try:
            import tensorrt as trt
        except ImportError:
            trt = None
        if trt is not None:
            Path(tmp).write_bytes(_build_python(plan, trt))
        else:
            exe = args.trtexec or shutil.which("trtexec") or "/usr/src/tensorrt/bin/trtexec"
            if not Path(exe).exists() and not shutil.which(exe):
                raise SystemExit(
                    "error: neither the tensorrt Python package nor trtexec is available: run this "
                    "inside NVIDIA's TensorRT or Triton container on the target GPU (docs/deployment.md)"
                )
            _build_trtexec(plan, exe, tmp)
        os.replace(tmp, args.out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
