"""Build the TensorRT FP16 engine for the GPU model repository, cached by what makes it valid.

Runs INSIDE NVIDIA's container (``nvcr.io/nvidia/tritonserver:<ver>-py3``, which
``docker/entrypoint-server.sh`` uses, or ``nvcr.io/nvidia/tensorrt:<ver>-py3``),
on the GPU that will serve the engine: a TensorRT plan is valid only for the
TensorRT version and the GPU model it was built with, and TensorRT is not
installable from PyPI on this project's CPU machines. Never run here; its
argument handling, cache key, GPU grouping and config edits are tested
(tests/test_training.py, tests/test_docker.py).

``python -m training.build_engine --onnx model.onnx --out model_repository/gpu/hepascreen_vnet/1/model.plan``

What it does, with the TensorRT Python API when ``tensorrt`` imports, else by
calling ``trtexec`` with the same settings:

* parses the ONNX (uint8 ``VOLUME`` [N, 1, z, y, x] -> uint8 ``LABELS`` and, where
  the config lists it, uint8 ``CONFIDENCE``); every output the GPU ``config.pbtxt``
  lists must be an output of the ONNX (checked before building, without TensorRT)
  and of the parsed network (checked again before the engine is built), so Triton
  never gets an engine that lacks a tensor its config promises;
* one optimisation profile over batch ``--min-batch``..``--max-batch`` (default
  1..8, optimum ``--opt-batch``, default min(4, max)), spatial dims fixed from the ONNX;
* FP16 enabled (``--no-fp16`` for an FP32 engine), workspace limit
  ``--workspace-mib``, timing cache so rebuilds on the same GPU take seconds;
  ``trtexec --skipInference`` (build only: no timing benchmark after the build);
* writes the plan atomically, and checks that the GPU ``config.pbtxt``'s
  ``max_batch_size`` does not exceed the profile's maximum (``--fit-config``
  lowers it, and the preferred batch sizes above it, instead of failing).

Engine cache (``--cache-dir``, what the server container uses)
---------------------------------------------------------------
A cached plan is reused only when its key matches: the key is the SHA-256 of
the TensorRT version, the SHA-256 of the ONNX file's bytes, the build arguments
(profile, FP16, workspace) and the GPU (name and compute capability). So a
TensorRT/Triton upgrade, a changed ``ENGINE_MAX_BATCH`` or a replaced ONNX (even
one with an older file time) builds a new plan instead of serving a stale one.
The installed plan gets a ``<plan>.build.json`` beside it recording its key; a
plan WITHOUT that record was put there by hand and is never overwritten (pass
``--force`` to replace it).

Several GPUs (``--all-gpus``)
-----------------------------
Triton places one instance of the model on every visible GPU
(``instance_group { kind: KIND_GPU }``). GPUs are grouped by compute
capability; with one group the plan is ``model.plan``; with several, one plan
per capability (``model_sm86.plan``, ...) is built on the first GPU of each
group (``CUDA_VISIBLE_DEVICES=<uuid>``) and the config gets a
``cc_model_filenames`` entry per capability, the mechanism Triton's backends
use to pick a file by the device's compute capability.

A TensorRT plan is built for one device MODEL, not one capability (TensorRT:
"using an engine plan file across different models of devices is not
recommended and is likely to affect performance or even cause errors"), and
Triton's ``cc_model_filenames`` can only tell capabilities apart. So the
single-GPU cache key holds the GPU's name, and where GPUs of different models
share a capability (A10 and A40 are both 8.6), that group's plan is built with
TensorRT's hardware compatibility (``--hardwareCompatibilityLevel=ampere+``:
one plan valid on every Ampere-or-newer device, a few per cent slower) and its
key says so. Below Ampere no such mode exists: mixed models of one capability
(e.g. T4 and RTX 2080, both 7.5) are refused with the fix (one server per model).
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "model_repository" / "gpu" / "hepascreen_vnet" / "1" / "model.plan"
DEFAULT_ONNX = ROOT / "model_repository" / "cpu" / "hepascreen_vnet" / "1" / "model.onnx"
# Bump when the build code changes what an engine contains (invalidates every cache entry).
KEY_SCHEMA = 1
BUILT_BY = "training.build_engine"
HW_COMPAT_AMPERE = "ampere+"
# Where NVIDIA's containers install TensorRT's libraries (Debian packages) and trtexec.
LIB_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/local/tensorrt/lib")
TRTEXEC_DEFAULT = "/usr/src/tensorrt/bin/trtexec"


@dataclass(frozen=True)
class Gpu:
    """One GPU as nvidia-smi reports it."""

    index: int
    name: str
    compute_capability: str | None  # "8.6"; None when the driver cannot report it
    uuid: str | None


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m training.build_engine", description=__doc__.splitlines()[0]
    )
    ap.add_argument("--onnx", type=Path, default=DEFAULT_ONNX)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--min-batch", type=int, default=1)
    ap.add_argument("--opt-batch", type=int, default=None, help="default: min(4, --max-batch)")
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
        "--fit-config",
        action="store_true",
        help="lower the config's max_batch_size (and preferred sizes) to --max-batch instead of failing",
    )
    ap.add_argument(
        "--trtexec", default=None, help="path of trtexec (used when tensorrt does not import)"
    )
    ap.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="keep plans here keyed by TensorRT version, ONNX hash, build arguments and GPU",
    )
    ap.add_argument(
        "--all-gpus",
        action="store_true",
        help="one plan per compute capability of the visible GPUs (needs --cache-dir)",
    )
    ap.add_argument(
        "--hardware-compat",
        choices=("none", HW_COMPAT_AMPERE),
        default="none",
        help="ampere+: one plan valid on every Ampere-or-newer GPU model (set by --all-gpus "
        "where GPU models of one compute capability are mixed)",
    )
    ap.add_argument(
        "--force", action="store_true", help="replace a hand-built plan at --out (no build record)"
    )
    ap.add_argument(
        "--dry-run",
        action="store_true",
        help="validate arguments and print the plan; build nothing",
    )
    return ap


def _config_max_batch(text: str) -> int | None:
    m = re.search(r"^\s*max_batch_size:\s*(\d+)", text, re.MULTILINE)
    return int(m.group(1)) if m else None


def config_output_names(text: str) -> list[str]:
    """Names of the ``output [...]`` entries of a config.pbtxt, in order (no protobuf needed:
    NVIDIA's container may lack tritonclient; comments are dropped first)."""
    text = "\n".join(ln.split("#", 1)[0] for ln in text.splitlines())
    m = re.search(r"^\s*output\s*:?\s*\[(.*?)^\s*\]", text, re.MULTILINE | re.DOTALL)
    return re.findall(r'\bname:\s*"([^"]+)"', m.group(1)) if m else []


def missing_outputs(config_outputs: list[str], engine_outputs: list[str], what: str) -> str | None:
    """A message when the config lists outputs that ``what`` (the ONNX, the network) lacks."""
    missing = [n for n in config_outputs if n not in engine_outputs]
    if not missing:
        return None
    hint = ""
    if "CONFIDENCE" in missing:
        hint = (
            " (add it with `python -m training.export --add-confidence-only <onnx>`, "
            "or remove it from the config)"
        )
    return (
        f"the config lists output {', '.join(missing)}, {what} has "
        f"{', '.join(engine_outputs) or 'none'}{hint}"
    )


def validate(args) -> dict:
    """Check the arguments and the inputs; return the build plan (raises SystemExit on error)."""
    problems = []
    if args.opt_batch is None:
        args.opt_batch = max(args.min_batch, min(4, args.max_batch))
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
    if args.all_gpus and args.cache_dir is None:
        problems.append("--all-gpus needs --cache-dir")
    config = args.config or args.out.parent.parent / "config.pbtxt"
    max_batch = None
    outputs: list[str] = []
    if config.is_file():
        text = config.read_text(encoding="utf-8")
        max_batch = _config_max_batch(text)
        outputs = config_output_names(text)
        if max_batch is not None and max_batch > args.max_batch and not args.fit_config:
            problems.append(
                f"{config}: max_batch_size {max_batch} exceeds the engine profile's --max-batch "
                f"{args.max_batch} (lower it in the config, or pass --fit-config)"
            )
    shape = onnx_outputs = None
    if args.onnx.is_file():
        try:
            import onnx

            graph = onnx.load(str(args.onnx), load_external_data=False).graph
            shape = [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim[1:]]
            onnx_outputs = [o.name for o in graph.output]
        except Exception:  # noqa: BLE001 - onnx is optional in NVIDIA's container; the
            pass  # network check in _build_python still runs, and TensorRT reports a bad file
    if onnx_outputs is not None:
        msg = missing_outputs(outputs, onnx_outputs, f"--onnx {args.onnx}")
        if msg:
            problems.append(f"{config}: {msg}")
    if problems:
        raise SystemExit("error: " + "; ".join(problems))
    return {
        "onnx": str(args.onnx),
        "out": str(args.out),
        "config": str(config),
        "input_item_shape": shape,
        "profile": [args.min_batch, args.opt_batch, args.max_batch],
        "fp16": not args.no_fp16,
        "workspace_mib": args.workspace_mib,
        "timing_cache": str(args.timing_cache or args.out.with_suffix(".timing.cache")),
        "config_max_batch_size": max_batch,
        "outputs": outputs,
        "hardware_compat": None if args.hardware_compat == "none" else args.hardware_compat,
    }


# --- what makes a plan valid ----------------------------------------------------------------
def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _norm_version(v: str) -> str:
    parts = re.findall(r"\d+", v)[:3]
    return ".".join(parts + ["0"] * (3 - len(parts)))


def tensorrt_version(trtexec: str | None = None, lib_dirs=LIB_DIRS) -> str:
    """The TensorRT version (``major.minor.patch``) the server will load plans with.

    Looks, in order, at the ``libnvinfer.so.X.Y.Z`` that NVIDIA's containers install
    (the library Triton's TensorRT backend loads), the ``tensorrt`` Python package,
    and the ``[TensorRT vXXYY00]`` banner trtexec prints.

    Raises
    ------
    SystemExit
        When no source names a version: a cache key without it could reuse a plan
        built by another TensorRT, which the server refuses to load.
    """
    dirs = list(lib_dirs) + [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") if d]
    found = []
    for d in dirs:
        for p in glob.glob(os.path.join(d, "libnvinfer.so.*")):
            m = re.search(r"libnvinfer\.so\.(\d+\.\d+\.\d+)", os.path.basename(p))
            if m:
                found.append(m.group(1))
    if found:
        return max(found, key=lambda v: tuple(int(x) for x in v.split(".")))
    try:
        import tensorrt as trt

        return _norm_version(trt.__version__)
    except ImportError:
        pass
    exe = trtexec or shutil.which("trtexec") or TRTEXEC_DEFAULT
    if exe and (Path(exe).exists() or shutil.which(exe)):
        r = subprocess.run([exe, "--help"], capture_output=True, encoding="utf-8")
        m = re.search(r"TensorRT v(\d+)", r.stdout + r.stderr)
        if m:
            n = int(m.group(1))  # e.g. 100300 = 10.3.0
            return f"{n // 10000}.{n // 100 % 100}.{n % 100}"
    raise SystemExit(
        "error: cannot tell the TensorRT version (no libnvinfer.so.X.Y.Z in "
        f"{', '.join(dirs)}, no tensorrt Python package, no trtexec banner): run this inside "
        "NVIDIA's Triton or TensorRT container (docs/deployment.md)"
    )


def parse_gpus(csv_text: str) -> list[Gpu]:
    """Parse ``nvidia-smi --query-gpu=index,name,compute_cap,uuid --format=csv,noheader``."""
    gpus = []
    for line in csv_text.strip().splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) < 2 or not cells[0].isdigit():
            continue
        cc = cells[2] if len(cells) > 2 and re.fullmatch(r"\d+\.\d+", cells[2]) else None
        uuid = cells[3] if len(cells) > 3 and cells[3].startswith(("GPU-", "MIG-")) else None
        gpus.append(Gpu(int(cells[0]), cells[1], cc, uuid))
    return gpus


def list_gpus(run=subprocess.run) -> list[Gpu]:
    """The GPUs this container sees (nvidia-smi; drivers older than R510 lack ``compute_cap``)."""
    base = ["nvidia-smi", "--format=csv,noheader"]
    for fields in ("index,name,compute_cap,uuid", "index,name,uuid"):
        try:
            r = run(base + [f"--query-gpu={fields}"], capture_output=True, encoding="utf-8")
        except FileNotFoundError:
            break
        if r.returncode == 0:
            out = r.stdout
            if fields == "index,name,uuid":  # realign to index,name,cc,uuid
                out = "\n".join(
                    ",".join([*c.split(",")[:2], "", *c.split(",")[2:]])
                    for c in out.strip().splitlines()
                )
            gpus = parse_gpus(out)
            if gpus:
                return gpus
    raise SystemExit("error: nvidia-smi lists no GPU: start the container with a GPU (--gpus)")


def group_by_capability(gpus: list[Gpu]) -> dict[str, list[Gpu]]:
    """GPUs grouped by compute capability (by name where the driver gives none), in index order."""
    groups: dict[str, list[Gpu]] = {}
    for g in sorted(gpus, key=lambda g: g.index):
        groups.setdefault(g.compute_capability or f"name:{g.name}", []).append(g)
    return groups


def cache_key(plan: dict, trt_version: str, onnx_sha256: str, gpu: Gpu | None) -> tuple[str, dict]:
    """(key, record): the key is the SHA-256 of everything a plan's validity depends on."""
    record = {
        "schema": KEY_SCHEMA,
        "tensorrt": trt_version,
        "onnx_sha256": onnx_sha256,
        "profile": list(plan["profile"]),
        "input_item_shape": plan["input_item_shape"],
        "fp16": bool(plan["fp16"]),
        "workspace_mib": int(plan["workspace_mib"]),
        "gpu": None if gpu is None else {"name": gpu.name, "cc": gpu.compute_capability},
    }
    if plan.get("hardware_compat"):  # absent otherwise: keys of existing caches stay valid
        record["hardware_compat"] = plan["hardware_compat"]
    blob = json.dumps(record, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:24], record


def record_path(out: Path) -> Path:
    """The build record written beside an installed plan (``model.plan.build.json``)."""
    return out.with_name(out.name + ".build.json")


def is_hand_built(out: Path) -> bool:
    """True when ``out`` exists but was not installed by this script (no build record)."""
    if not out.exists():
        return False
    try:
        return json.loads(record_path(out).read_text(encoding="utf-8")).get("built_by") != BUILT_BY
    except (OSError, ValueError):
        return True


# --- config.pbtxt edits -------------------------------------------------------------------
def fit_config_text(text: str, max_batch: int) -> str:
    """Lower ``max_batch_size`` to ``max_batch`` and drop preferred batch sizes above it."""
    current = _config_max_batch(text)
    if current is None or current <= max_batch:
        return text
    text = re.sub(
        r"^(\s*max_batch_size:\s*)\d+", rf"\g<1>{max_batch}", text, count=1, flags=re.MULTILINE
    )

    def _pref(m):
        sizes = [int(s) for s in re.findall(r"\d+", m.group(2)) if int(s) <= max_batch]
        return f"{m.group(1)}[ {', '.join(map(str, sizes or [max_batch]))} ]"

    return re.sub(r"(preferred_batch_size:\s*)\[([^\]]*)\]", _pref, text)


CC_BEGIN = "# --- cc_model_filenames: written by training.build_engine --all-gpus ---"
CC_END = "# --- end cc_model_filenames ---"


def set_cc_model_filenames(text: str, mapping: dict[str, str]) -> str:
    """Replace the generated ``cc_model_filenames`` block (remove it for an empty mapping)."""
    text = re.sub(
        re.escape(CC_BEGIN) + r".*?" + re.escape(CC_END) + r"\n?", "", text, flags=re.DOTALL
    )
    if not mapping:
        return text
    lines = [CC_BEGIN]
    lines += [
        f'cc_model_filenames {{ key: "{k}" value: "{v}" }}' for k, v in sorted(mapping.items())
    ]
    lines.append(CC_END)
    return text.rstrip("\n") + "\n" + "\n".join(lines) + "\n"


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# --- building -------------------------------------------------------------------------------
def _build_python(plan: dict, trt) -> bytes:
    from client.core.contract import INPUT_NAME

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
    names = [network.get_output(i).name for i in range(network.num_outputs)]
    msg = missing_outputs(plan.get("outputs") or [], names, "the parsed network")
    if msg:
        raise SystemExit(f"error: {plan['config']}: {msg}")
    cfg = builder.create_builder_config()
    cfg.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan["workspace_mib"] << 20)
    if plan["fp16"]:
        cfg.set_flag(trt.BuilderFlag.FP16)
    if plan.get("hardware_compat") == HW_COMPAT_AMPERE:
        cfg.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
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
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    cache_path.write_bytes(memoryview(cfg.get_timing_cache().serialize()))
    return bytes(engine)


def trtexec_command(plan: dict, trtexec: str, tmp_out: str) -> list[str]:
    """The trtexec command line for ``plan`` (build only: ``--skipInference``)."""
    from client.core.contract import INPUT_NAME

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
        # Build only: trtexec otherwise runs seconds of timed inference after building.
        "--skipInference",
    ]
    if plan["fp16"]:
        cmd.append("--fp16")
    if plan.get("hardware_compat") == HW_COMPAT_AMPERE:
        cmd.append("--hardwareCompatibilityLevel=ampere+")
    return cmd


def _find_trtexec(explicit: str | None) -> str | None:
    exe = explicit or shutil.which("trtexec") or TRTEXEC_DEFAULT
    return exe if (Path(exe).exists() or shutil.which(exe)) else None


def build_plan_file(plan: dict, out: Path, trtexec: str | None) -> None:
    """Build the engine described by ``plan`` and write it atomically to ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".plan", dir=out.parent)
    os.close(fd)
    try:
        try:
            import tensorrt as trt
        except ImportError:
            trt = None
        if trt is not None:
            Path(tmp).write_bytes(_build_python(plan, trt))
        else:
            exe = _find_trtexec(trtexec)
            if exe is None:
                raise SystemExit(
                    "error: neither the tensorrt Python package nor trtexec is available: run this "
                    "inside NVIDIA's TensorRT or Triton container on the target GPU; if this Triton "
                    "image has neither, build into the same --cache-dir with "
                    "nvcr.io/nvidia/tensorrt:<same release>-py3 (docs/gpu-first-run.md)"
                )
            subprocess.run(trtexec_command(plan, exe, tmp), check=True)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def build_cached(plan: dict, out: Path, cache_dir: Path, trtexec: str | None, gpu) -> str:
    """Install the plan for ``plan`` at ``out`` from the keyed cache, building it on a miss.

    Returns "kept" (``out`` is already this plan), "cached" or "built".
    """
    trt_version = tensorrt_version(trtexec)
    key, record = cache_key(plan, trt_version, sha256_file(plan["onnx"]), gpu)
    try:
        if (
            json.loads(record_path(out).read_text(encoding="utf-8")).get("key") == key
            and out.is_file()
        ):
            return "kept"
    except (OSError, ValueError):
        pass
    cache_dir.mkdir(parents=True, exist_ok=True)
    cached = cache_dir / f"hepascreen_{key}.plan"
    status = "cached"
    if not cached.is_file() or cached.stat().st_size == 0:
        # Timing caches are per device model too (and per compatibility mode).
        cc = (gpu.compute_capability or "unknown") if gpu else "unknown"
        model = re.sub(r"[^A-Za-z0-9]+", "_", gpu.name).strip("_") if gpu else "unknown"
        mode = "_ampere_plus" if plan.get("hardware_compat") else ""
        name = f"timing_trt{trt_version}_cc{cc}_{model}{mode}.cache"
        plan = dict(plan, timing_cache=str(cache_dir / name))
        print(
            f"building TensorRT engine {cached.name} ({json.dumps(record, sort_keys=True)})",
            file=sys.stderr,
        )
        build_plan_file(plan, cached, trtexec)
        _write_atomic(
            cached.with_suffix(".json"), json.dumps(record, indent=2, sort_keys=True).encode()
        )
        status = "built"
    _write_atomic(out, cached.read_bytes())
    rec = dict(record, key=key, built_by=BUILT_BY, cache_file=cached.name)
    _write_atomic(record_path(out), json.dumps(rec, indent=2, sort_keys=True).encode())
    return status


def _single_gpu() -> Gpu | None:
    try:
        gpus = list_gpus()
    except SystemExit:
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    for g in gpus:
        if visible and visible.split(",")[0] in (g.uuid, str(g.index)):
            return g
    return gpus[0]


def _child_argv(args, out: Path) -> list[str]:
    argv = [
        sys.executable,
        "-m",
        "training.build_engine",
        "--onnx",
        str(args.onnx),
        "--out",
        str(out),
        "--config",
        str(args.config or args.out.parent.parent / "config.pbtxt"),
        "--cache-dir",
        str(args.cache_dir),
        "--min-batch",
        str(args.min_batch),
        "--opt-batch",
        str(args.opt_batch),
        "--max-batch",
        str(args.max_batch),
        "--workspace-mib",
        str(args.workspace_mib),
        "--force",  # the parent already decided the folder holds no hand-built plan
    ]
    if args.no_fp16:
        argv.append("--no-fp16")
    if args.trtexec:
        argv += ["--trtexec", args.trtexec]
    if args.fit_config:
        argv.append("--fit-config")
    if args.hardware_compat != "none":
        argv += ["--hardware-compat", args.hardware_compat]
    return argv


def plan_files_for(groups: dict[str, list[Gpu]], out: Path) -> dict[str, Path]:
    """Output file per GPU group: ``out`` for one group, ``model_sm86.plan``-style for several."""
    if len(groups) == 1:
        return {next(iter(groups)): out}
    if any(k.startswith("name:") for k in groups):
        raise SystemExit(
            "error: GPUs of different models and the driver reports no compute capability "
            "(nvidia-smi --query-gpu=compute_cap): upgrade the driver or expose one GPU model "
            "to the container (NVIDIA_VISIBLE_DEVICES)"
        )
    return {cc: out.with_name(f"{out.stem}_sm{cc.replace('.', '')}.plan") for cc in groups}


def mixed_model_compat(cc: str, gpus: list[Gpu]) -> str | None:
    """The hardware-compatibility mode one plan needs to serve ``gpus`` of capability ``cc``.

    None for one GPU model; ``ampere+`` for several models of capability 8.0 or newer.

    Raises
    ------
    SystemExit
        Several models below Ampere (no TensorRT mode makes one plan valid on both).
    """
    names = sorted({g.name for g in gpus})
    if len(names) < 2:
        return None
    try:
        major = int(cc.split(".")[0])
    except ValueError:
        major = 0
    if major >= 8:
        return HW_COMPAT_AMPERE
    raise SystemExit(
        f"error: {', '.join(names)} share compute capability {cc} but a TensorRT plan is built "
        "for one GPU model, and hardware-compatible plans need Ampere (8.0) or newer: run one "
        "server per GPU model (NVIDIA_VISIBLE_DEVICES / the compose service's device_ids)"
    )


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    plan = validate(args)
    if args.dry_run:
        print(json.dumps(plan, indent=2))
        return 0
    config = Path(plan["config"])
    version_dir = args.out.parent
    # A plan without a build record was put there by hand: the cached modes (what the
    # server container runs at every start) never replace it. A plain build is an
    # explicit request and writes --out.
    hand_built = []
    if args.cache_dir is not None and not args.force:
        if args.all_gpus:
            hand_built = [p for p in sorted(version_dir.glob("*.plan")) if is_hand_built(p)]
        elif is_hand_built(args.out):
            hand_built = [args.out]
    if hand_built:
        names = ", ".join(str(p) for p in hand_built)
        print(
            f"keeping hand-built engine {names} (no build record beside it); "
            "delete it or pass --force to build one",
            file=sys.stderr,
        )
        return 0
    if args.fit_config and config.is_file():
        text = config.read_text(encoding="utf-8")
        fitted = fit_config_text(text, args.max_batch)
        if fitted != text:
            _write_atomic(config, fitted.encode())
            print(f"{config}: max_batch_size lowered to {args.max_batch}", file=sys.stderr)
    if args.all_gpus:
        groups = group_by_capability(list_gpus())
        files = plan_files_for(groups, args.out)
        compat = {key: mixed_model_compat(key, gpus) for key, gpus in groups.items()}
        for key, gpus in groups.items():
            first = gpus[0]
            env = dict(os.environ, CUDA_VISIBLE_DEVICES=first.uuid or str(first.index))
            env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"  # nvidia-smi's index order
            argv = _child_argv(args, files[key])
            if compat[key]:
                print(
                    f"note: {', '.join(sorted({g.name for g in gpus}))} share compute capability "
                    f"{key}: their plan is built with --hardwareCompatibilityLevel={compat[key]} "
                    "(valid on every one of them)",
                    file=sys.stderr,
                )
                argv += ["--hardware-compat", compat[key]]
            subprocess.run(argv, check=True, env=env, cwd=str(ROOT))
        mapping = {} if len(files) == 1 else {cc: p.name for cc, p in files.items()}
        if config.is_file():
            text = config.read_text(encoding="utf-8")
            new = set_cc_model_filenames(text, mapping)
            if new != text:
                _write_atomic(config, new.encode())
        for stale in version_dir.glob("*.plan"):
            if stale not in files.values() and not is_hand_built(stale):
                stale.unlink()
                record_path(stale).unlink(missing_ok=True)
        return 0
    if args.cache_dir is not None:
        status = build_cached(plan, args.out, args.cache_dir, args.trtexec, _single_gpu())
        print(f"{status}: {args.out}", file=sys.stderr)
        return 0
    build_plan_file(plan, args.out, args.trtexec)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
