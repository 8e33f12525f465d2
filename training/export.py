"""Export a trained VNet to the served ONNX model (paddle.jit + paddle2onnx).

``python -m training.export --config CFG.yml --model_path model.pdparams --save_dir DIR``

The served graph takes the preprocessed volume as uint8 ``VOLUME [N, 1, z, y, x]``
and returns a uint8 label map ``LABELS [N, z, y, x]`` (client/contract.py): the
cast, the per-volume division by the maximum (``client.preprocess.
normalise_network_input``; an all-zero volume stays zero) and the argmax live
inside the graph, so 1 byte per voxel crosses the wire each way. ``--variant
logits`` gives the unwrapped network (float in, logits out) for parity checks.
``--variant float`` (float32 in, int32 labels out) exists only to diagnose a
TensorRT version that refuses uint8 network I/O (DESIGN.md 3): the client, the
model configs and the server entrypoint serve the uint8 variant only.
After export: ``onnx.checker`` and ONNX Runtime vs Paddle on the same inputs at
batch 1 and 4.

The final cast goes ``ArgMax (INT64) -> Cast FLOAT -> Cast UINT8``, never straight
from INT64 to UINT8 (:func:`cast_labels_via_float`). TensorRT's documentation
contradicts itself on the direct cast: the Cast operator page says "all
conversions between supported data types are allowed" (uint8 and int64 listed,
docs.nvidia.com/deeplearning/tensorrt/operators/docs/Cast.html), while the
``DataType.UINT8`` reference says "uint8 conversions are only supported for
{float32, float16}" (docs.nvidia.com/deeplearning/tensorrt/api/python_api/infer/
FoundationalTypes/DataType.html). Going through FLOAT satisfies both. The class
indices (0, 1, 2) are exact in float32, so the labels are byte-identical
(tests/test_export_graph.py checks it with ONNX Runtime on phantoms and the real
CT). ``python -m training.export --recast-only model.onnx`` applies the same
rewrite to an existing export (weights untouched).

Replacing the served model with your own: export it with this command, copy the
ONNX to ``model_repository/cpu/hepascreen_vnet/1/model.onnx`` and set the spatial
dims in that folder's ``config.pbtxt`` (and the GPU one) to your model's input size;
the client reads the size from the served configuration.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from client.contract import INPUT_NAME, OUTPUT_NAME

VARIANTS = ("uint8", "float", "logits")


def _wrapper(net, variant: str):
    import paddle

    class Served(paddle.nn.Layer):
        """uint8 volume -> normalised float -> VNet -> argmax -> uint8 labels."""

        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            if variant == "logits":
                return self.net(x)[0]
            xf = paddle.cast(x, "float32")
            m = paddle.max(xf, axis=[1, 2, 3, 4], keepdim=True)
            xf = xf / paddle.maximum(m, paddle.full_like(m, 1.0))
            logits = self.net(xf)[0]
            lab = paddle.argmax(logits, axis=1)
            if variant == "float":
                return paddle.cast(lab, "int32")
            # Through float32, as the ONNX graph does (cast_labels_via_float).
            return paddle.cast(paddle.cast(lab, "float32"), "uint8")

    return Served(net)


def export_onnx(
    net,
    model_shape,
    save_file: str | Path,
    variant: str = "uint8",
    opset: int = 17,
) -> Path:
    """Export a Paddle VNet (eval mode) to ONNX with a dynamic batch dimension.

    Parameters
    ----------
    net : training.vnet.VNet
    model_shape : 3 ints
        Spatial input size ``[z, y, x]``.
    save_file : path of the ONNX file to write (parent created).
    variant : {"uint8", "float", "logits"}
    opset : int, >= 17

    Returns
    -------
    Path of the written ONNX file.
    """
    import paddle
    import paddle2onnx

    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if opset < 17:
        raise ValueError(f"expected opset >= 17, got {opset}")
    # paddle2onnx would pip-install optimiser deps at run time; they are declared instead.
    os.environ.setdefault("POLYGRAPHY_AUTOINSTALL_DEPS", "0")
    net.eval()
    model = _wrapper(net, variant)
    model.eval()
    dtype = "uint8" if variant == "uint8" else "float32"
    spec = paddle.static.InputSpec([None, 1, *[int(n) for n in model_shape]], dtype, INPUT_NAME)
    save_file = Path(save_file)
    save_file.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        prefix = os.path.join(tmp, "model")
        static = paddle.jit.to_static(model, input_spec=[spec], full_graph=True)
        paddle.jit.save(static, prefix)
        model_file = prefix + ".json" if os.path.exists(prefix + ".json") else prefix + ".pdmodel"
        out_tmp = os.path.join(tmp, "model.onnx")
        paddle2onnx.export(
            model_file, prefix + ".pdiparams", save_file=out_tmp, opset_version=opset
        )
        _rename_io(out_tmp, variant)
        if variant == "uint8":
            recast_file(out_tmp)
        shutil.move(out_tmp, save_file)
    return save_file


def _rename_io(path: str, variant: str) -> None:
    """Give the graph the contract's tensor names and a symbolic batch dimension."""
    import onnx

    m = onnx.load(path)
    g = m.graph
    old_in, old_out = g.input[0].name, g.output[0].name
    new_in, new_out = INPUT_NAME, OUTPUT_NAME if variant != "logits" else "LOGITS"
    for node in g.node:
        node.input[:] = [new_in if n == old_in else n for n in node.input]
        node.output[:] = [new_out if n == old_out else n for n in node.output]
    g.input[0].name = new_in
    g.output[0].name = new_out
    for vi in (g.input[0], g.output[0]):
        d0 = vi.type.tensor_type.shape.dim[0]
        d0.ClearField("dim_value")
        d0.dim_param = "batch"
    onnx.checker.check_model(m)
    onnx.save(m, path)


def _producers(graph) -> dict:
    return {out: node for node in graph.node for out in node.output}


def _cast_to(node) -> int | None:
    for a in node.attribute:
        if a.name == "to":
            return int(a.i)
    return None


def _skip_identity(producers: dict, name: str):
    node = producers.get(name)
    while node is not None and node.op_type == "Identity":
        node = producers.get(node.input[0])
    return node


def cast_labels_via_float(model, output_name: str = OUTPUT_NAME) -> bool:
    """Make the label output ``ArgMax -> Cast(FLOAT) -> Cast(UINT8)`` (in place).

    Rewrites a final ``Cast(to=UINT8)`` fed (possibly through ``Identity`` nodes)
    by ``ArgMax`` into a cast to FLOAT followed by a new cast to UINT8. Weights,
    every other node and the output's name and type stay as they are. Idempotent.

    Parameters
    ----------
    model : onnx.ModelProto
        A served export (uint8 variant).
    output_name : str
        The label output (``client.contract.OUTPUT_NAME``).

    Returns
    -------
    bool
        True when the graph was changed, False when it already cast through FLOAT.

    Raises
    ------
    ValueError
        If the output is not produced by a UINT8 ``Cast`` of an ``ArgMax``.
    """
    from onnx import TensorProto, helper

    g = model.graph
    producers = _producers(g)
    last = producers.get(output_name)
    if last is None or last.op_type != "Cast" or _cast_to(last) != TensorProto.UINT8:
        found = "nothing" if last is None else f"{last.op_type} {last.name!r}"
        raise ValueError(
            f"expected output {output_name!r} to come from a Cast to UINT8, found {found}"
        )
    src = _skip_identity(producers, last.input[0])
    if src is not None and src.op_type == "Cast" and _cast_to(src) == TensorProto.FLOAT:
        if (
            _skip_identity(producers, src.input[0]) is not None
            and _skip_identity(producers, src.input[0]).op_type == "ArgMax"
        ):
            return False
    if src is None or src.op_type != "ArgMax":
        found = "a graph input" if src is None else f"{src.op_type} {src.name!r}"
        raise ValueError(
            f"expected the final Cast {last.name!r} to read an ArgMax (through Identity), "
            f"found {found}"
        )
    mid = f"{output_name}_as_float"
    for a in last.attribute:
        if a.name == "to":
            a.i = TensorProto.FLOAT
    last.output[0] = mid
    new = helper.make_node(
        "Cast", [mid], [output_name], name=f"{last.name}_to_uint8", to=TensorProto.UINT8
    )
    index = list(g.node).index(last)
    g.node.insert(index + 1, new)
    return True


def recast_file(path: str | Path) -> bool:
    """Apply :func:`cast_labels_via_float` to an ONNX file in place (atomic replace).

    Returns True when the file was rewritten, False when it already cast through FLOAT.
    """
    import onnx

    path = Path(path)
    model = onnx.load(str(path))
    if not cast_labels_via_float(model):
        return False
    onnx.checker.check_model(model, full_check=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".onnx", dir=path.parent)
    os.close(fd)
    try:
        onnx.save(model, tmp)
        shutil.copymode(path, tmp)  # mkstemp makes 0600; keep the file readable as before
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return True


def set_preprocess_metadata(path: str | Path, parameters: dict[str, str]) -> None:
    """Write the model's preprocessing (``PreprocessSpec.parameters()``) into the ONNX
    file's metadata_props (in place, atomic), so the file says how its input is made;
    the model config's parameters must say the same (tests/test_model_repository.py)."""
    import onnx

    path = Path(path)
    model = onnx.load(str(path))
    keep = [p for p in model.metadata_props if p.key not in parameters]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for k, v in parameters.items():
        model.metadata_props.add(key=k, value=str(v))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".onnx", dir=path.parent)
    os.close(fd)
    try:
        onnx.save(model, tmp)
        shutil.copymode(path, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def check_export(net, onnx_path, model_shape, variant="uint8", batches=(1, 4), seed=0) -> dict:
    """Compare ONNX Runtime with Paddle on the same random inputs.

    Returns per batch size the label agreement (uint8/float variants) or the
    logits relative L2 error (logits variant).
    """
    import onnx
    import onnxruntime as ort
    import paddle

    onnx.checker.check_model(onnx.load(str(onnx_path)))
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    wrapped = _wrapper(net, variant)
    wrapped.eval()
    rng = np.random.default_rng(seed)
    out = {}
    for b in batches:
        if variant == "logits":
            x = rng.random((b, 1, *model_shape), dtype=np.float32)
        else:
            x = _structured_input(rng, b, model_shape)
            if variant == "float":
                x = x.astype(np.float32)
        got = sess.run(None, {INPUT_NAME: x})[0]
        with paddle.no_grad():
            ref = wrapped(paddle.to_tensor(x)).numpy()
        if variant == "logits":
            out[f"batch{b}_rel_l2"] = float(np.linalg.norm(got - ref) / np.linalg.norm(ref))
        else:
            out[f"batch{b}_label_agreement"] = float((got == ref).mean())
            out[f"batch{b}_dtype"] = str(got.dtype)
    return out


def _structured_input(rng, b, shape):
    """Smooth random uint8 volumes (pure noise would make argmax ties meaningless)."""
    from scipy import ndimage as ndi

    x = rng.random((b, 1, *shape)).astype(np.float32)
    x = ndi.gaussian_filter(x, sigma=(0, 0, 2, 2, 2))
    x = (x - x.min()) / max(float(x.max() - x.min()), 1e-6) * 255
    return x.astype(np.uint8)


def main(argv=None) -> int:
    from .config import build_model, load_config, model_shape_of

    ap = argparse.ArgumentParser(description="Export a VNet checkpoint to the served ONNX model")
    ap.add_argument("--config", help="MedicalSeg-format YAML")
    ap.add_argument("--model_path", help="model.pdparams (MedicalSeg names)")
    ap.add_argument(
        "--save_dir",
        help="folder for model.onnx (e.g. model_repository/cpu/hepascreen_vnet/1)",
    )
    ap.add_argument("--variant", choices=VARIANTS, default="uint8")
    ap.add_argument("--opset", type=int, default=17)
    ap.add_argument("--model_shape", type=int, nargs=3, default=None, help="override [z y x]")
    ap.add_argument("--no_check", action="store_true")
    ap.add_argument(
        "--spacing_mm",
        type=float,
        nargs=3,
        default=None,
        help="the model was trained with fixed-spacing preprocessing at z y x mm "
        "(written into the ONNX metadata; default: MedicalSeg's whole-volume resize)",
    )
    ap.add_argument(
        "--recast-only",
        metavar="ONNX",
        type=Path,
        help="only rewrite an existing export's final cast as ArgMax -> FLOAT -> UINT8 (in place)",
    )
    args = ap.parse_args(argv)
    if args.recast_only is not None:
        if not args.recast_only.is_file():
            ap.error(f"--recast-only {args.recast_only}: file not found")
        try:
            changed = recast_file(args.recast_only)
        except ValueError as exc:
            ap.error(f"{args.recast_only}: {exc}")
        print(f"{'rewrote' if changed else 'already casts through FLOAT:'} {args.recast_only}")
        return 0
    missing = [f"--{n}" for n in ("config", "model_path", "save_dir") if not getattr(args, n)]
    if missing:
        ap.error("the following arguments are required: " + ", ".join(missing))

    cfg = load_config(args.config)
    net = build_model(cfg, pretrained=args.model_path)
    shape = args.model_shape or model_shape_of(cfg)
    name = "model.onnx" if args.variant == "uint8" else f"model_{args.variant}.onnx"
    path = export_onnx(net, shape, Path(args.save_dir) / name, args.variant, args.opset)
    from client.preprocess import PreprocessSpec

    pspec = (
        PreprocessSpec("spacing", tuple(shape), tuple(args.spacing_mm))
        if args.spacing_mm
        else PreprocessSpec("resize", tuple(shape))
    )
    set_preprocess_metadata(path, pspec.parameters())
    print(f"wrote {path} (preprocessing {pspec.parameters()})")
    if not args.no_check:
        report = check_export(net, path, shape, args.variant)
        print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
