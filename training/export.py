"""Export a trained VNet to the served ONNX model (paddle.jit + paddle2onnx).

``python -m training.export --config CFG.yml --model_path model.pdparams --save_dir DIR``

The served graph takes the preprocessed volume as uint8 ``VOLUME [N, 1, z, y, x]``
and returns a uint8 label map ``LABELS [N, z, y, x]`` (client/core/contract.py): the
cast, the per-volume division by the maximum (``client.reading.preprocess.
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

The served graph has a second output ``CONFIDENCE`` (uint8 ``[N, z, y, x]``, like
``LABELS``): round-half-up(255 x the softmax probability of the predicted class) per
voxel, the model's own confidence for the client's segmentation gate
(client/core/contract.py ``CONFIDENCE_NAME``; :func:`add_confidence_output`). It is graph
surgery on the logits ``ArgMax`` reads, so ``LABELS`` stays byte-identical. New exports
get it unless ``--no-confidence``; ``python -m training.export --add-confidence-only
model.onnx`` adds it to an existing export in place (weights and metadata untouched).

Replacing the served model with your own: export it with this command, copy the
ONNX to ``model_repository/cpu/hepascreen_vnet/1/model.onnx`` and set the spatial
dims in that folder's ``config.pbtxt`` (and the GPU one) to your model's input size
(``VOLUME``, ``LABELS`` and ``CONFIDENCE``; an export made with ``--no-confidence``
needs the ``CONFIDENCE`` output removed from the configs: the server refuses a config
listing an output the file lacks); the client reads the size from the served
configuration.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from client.core.contract import CONFIDENCE_NAME, CONFIDENCE_SCALE, INPUT_NAME, OUTPUT_NAME

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
    confidence: bool = True,
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
    confidence : bool
        Add the ``CONFIDENCE`` output (:func:`add_confidence_output`; uint8 variant
        only: the float variant is a LABELS-only diagnostic, the logits variant has
        no labels).

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
            if confidence:
                add_confidence_file(out_tmp)
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
        The label output (``client.core.contract.OUTPUT_NAME``).

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
    return _rewrite_file(path, cast_labels_via_float)


def _rewrite_file(path: str | Path, rewrite) -> bool:
    """Load an ONNX file, apply ``rewrite(model) -> bool`` and, when it changed the graph,
    check the model and replace the file atomically. Returns what ``rewrite`` returned."""
    import onnx

    path = Path(path)
    model = onnx.load(str(path))
    if not rewrite(model):
        return False
    onnx.checker.check_model(model, full_check=True)
    _save_atomic(model, path)
    return True


def _save_atomic(model, path: Path) -> None:
    """Write ``model`` over ``path`` through a temporary file, keeping the file's mode."""
    import onnx

    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".onnx", dir=path.parent)
    os.close(fd)
    try:
        onnx.save(model, tmp)
        shutil.copymode(path, tmp)  # mkstemp makes 0600; keep the file readable as before
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _labels_argmax(graph, output_name: str = OUTPUT_NAME):
    """The ``ArgMax`` node whose indices become ``output_name`` (through Cast/Identity).

    Raises
    ------
    ValueError
        If no node produces ``output_name`` or the chain back from it reaches
        anything but Cast and Identity nodes before an ArgMax.
    """
    producers = _producers(graph)
    node = producers.get(output_name)
    if node is None:
        raise ValueError(f"expected a node producing output {output_name!r}, found none")
    while node is not None and node.op_type in ("Cast", "Identity"):
        node = producers.get(node.input[0])
    if node is None or node.op_type != "ArgMax":
        found = "a graph input" if node is None else f"{node.op_type} {node.name!r}"
        raise ValueError(
            f"expected output {output_name!r} to come from an ArgMax through Cast/Identity "
            f"nodes, found {found}"
        )
    return node


def _attr(node, name: str, default: int) -> int:
    for a in node.attribute:
        if a.name == name:
            return int(a.i)
    return default


def _confidence_source(model, output_name: str, confidence_name: str):
    """Check a served export can take the ``CONFIDENCE`` branch: opset >= 13, the label
    output fed by an ArgMax, no ``confidence_name[/...]`` taken. Returns (opset, the
    label output, the ArgMax node)."""
    g = model.graph
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < 13:
        raise ValueError(
            f"expected opset >= 13 (Softmax over one axis), got {opset}: re-export the model"
        )
    labels = next((o for o in g.output if o.name == output_name), None)
    if labels is None:
        raise ValueError(
            f"expected a graph output {output_name!r}, got {[o.name for o in g.output]}"
        )
    argmax = _labels_argmax(g, output_name)
    p = f"{confidence_name}/"
    taken = {t.name for t in g.initializer} | {o for n in g.node for o in n.output}
    taken |= {n.name for n in g.node} | {i.name for i in g.input}
    if any(name.startswith(p) for name in taken) or confidence_name in taken:
        raise ValueError(f"expected no tensor or node named {confidence_name!r}[/...] yet")
    return opset, labels, argmax


def add_confidence_output(
    model, output_name: str = OUTPUT_NAME, confidence_name: str = CONFIDENCE_NAME
) -> bool:
    """Add the ``CONFIDENCE`` output: round-half-up(255 x max softmax) as uint8 (in place).

    The new branch reads the tensor the labels' ``ArgMax`` reads (the logits,
    ``[N, classes, z, y, x]`` float) and computes, over the ArgMax's axis::

        Softmax -> ReduceMax -> Mul(255) -> Add(0.5) -> Floor -> Clip(0, 255) -> Cast(UINT8)

    so each voxel gets ``floor(255 p + 0.5)`` for ``p`` the probability of the
    predicted class. Floor makes the value integral before the cast, so no
    runtime's rule for a fractional float -> integer cast (truncate or round) can
    change it; Clip keeps it in [0, 255] even where FP16 rounding lifts ``p`` above
    1. FLOAT -> UINT8 is the cast TensorRT documents for uint8 (this module's
    docstring, as for the labels); every op here is in TensorRT 10's ONNX parser
    (onnx-tensorrt docs/operators.md; ReduceMax's axes an attribute below opset 18,
    an initializer from 18). The output is declared like ``output_name``: uint8 with
    its shape (dynamic batch, spatial dims). Nothing that feeds ``output_name``
    changes, so the labels stay byte-identical. Idempotent.

    Parameters
    ----------
    model : onnx.ModelProto
        A served export (opset >= 13, where Softmax normalises along one axis).
    output_name : str
        The label output (``client.core.contract.OUTPUT_NAME``).
    confidence_name : str
        Name of the new output (``client.core.contract.CONFIDENCE_NAME``).

    Returns
    -------
    bool
        True when the output was added, False when the graph already has it.

    Raises
    ------
    ValueError
        If the labels do not come from an ArgMax (through Cast/Identity), the opset
        is below 13, or a tensor name the branch needs is already taken.
    """
    from onnx import TensorProto, helper, numpy_helper

    g = model.graph
    if any(o.name == confidence_name for o in g.output):
        return False
    opset, labels, argmax = _confidence_source(model, output_name, confidence_name)
    logits = argmax.input[0]
    axis = _attr(argmax, "axis", 0)
    keepdims = _attr(argmax, "keepdims", 1)
    p = f"{confidence_name}/"  # one prefix for every new node, tensor and initializer

    def const(name, value, dtype=np.float32):
        g.initializer.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), p + name))
        return p + name

    scale = const("scale", CONFIDENCE_SCALE)
    half = const("half", 0.5)
    lo, hi = const("min", 0.0), const("max", CONFIDENCE_SCALE)
    if opset >= 18:
        reduce = helper.make_node(
            "ReduceMax",
            [p + "probs", const("axes", [axis], np.int64)],
            [p + "pmax"],
            name=p + "ReduceMax",
            keepdims=keepdims,
        )
    else:
        reduce = helper.make_node(
            "ReduceMax",
            [p + "probs"],
            [p + "pmax"],
            name=p + "ReduceMax",
            axes=[axis],
            keepdims=keepdims,
        )
    g.node.extend(
        [
            helper.make_node("Softmax", [logits], [p + "probs"], name=p + "Softmax", axis=axis),
            reduce,
            helper.make_node("Mul", [p + "pmax", scale], [p + "scaled"], name=p + "Mul"),
            helper.make_node("Add", [p + "scaled", half], [p + "shifted"], name=p + "Add"),
            helper.make_node("Floor", [p + "shifted"], [p + "rounded"], name=p + "Floor"),
            helper.make_node("Clip", [p + "rounded", lo, hi], [p + "clipped"], name=p + "Clip"),
            helper.make_node(
                "Cast", [p + "clipped"], [confidence_name], name=p + "Cast", to=TensorProto.UINT8
            ),
        ]
    )
    out = g.output.add()
    out.CopyFrom(labels)
    out.name = confidence_name
    out.type.tensor_type.elem_type = TensorProto.UINT8
    out.doc_string = "uint8 round(255 x softmax probability of the predicted class), per voxel"
    return True


def add_confidence_file(path: str | Path) -> bool:
    """Apply :func:`add_confidence_output` to an ONNX file in place (atomic replace).

    Weights, metadata_props and every other part of the file stay as they are.
    Returns True when the file was rewritten, False when it already had the output.
    """
    return _rewrite_file(path, add_confidence_output)


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
    _save_atomic(model, path)


def check_export(net, onnx_path, model_shape, variant="uint8", batches=(1, 4), seed=0) -> dict:
    """Compare ONNX Runtime with Paddle on the same random inputs.

    Returns per batch size the label agreement (uint8/float variants) or the
    logits relative L2 error (logits variant), and where the export has a
    ``CONFIDENCE`` output its largest difference from :func:`confidence_reference`
    of Paddle's logits (counts of 1/255; 0 or 1 expected).
    """
    import onnx
    import onnxruntime as ort
    import paddle

    onnx.checker.check_model(onnx.load(str(onnx_path)))
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
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
        got = sess.run(None, {INPUT_NAME: x})
        with paddle.no_grad():
            ref = wrapped(paddle.to_tensor(x)).numpy()
        if variant == "logits":
            out[f"batch{b}_rel_l2"] = float(np.linalg.norm(got[0] - ref) / np.linalg.norm(ref))
        else:
            out[f"batch{b}_label_agreement"] = float((got[0] == ref).mean())
            out[f"batch{b}_dtype"] = str(got[0].dtype)
        if CONFIDENCE_NAME in names:
            conf = got[names.index(CONFIDENCE_NAME)]
            with paddle.no_grad():
                logits = net(paddle.to_tensor(_normalised(x)))[0].numpy()
            diff = np.abs(conf.astype(np.int16) - confidence_reference(logits).astype(np.int16))
            out[f"batch{b}_confidence_max_abs_diff"] = int(diff.max())
    return out


def confidence_reference(logits: np.ndarray, axis: int = 1) -> np.ndarray:
    """NumPy's ``CONFIDENCE``: uint8 round-half-up(255 x max softmax) over ``axis`` (float64)."""
    z = logits.astype(np.float64)
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    p = e.max(axis=axis) / e.sum(axis=axis)
    return np.clip(np.floor(CONFIDENCE_SCALE * p + 0.5), 0, 255).astype(np.uint8)


def _normalised(x: np.ndarray) -> np.ndarray:
    """The served graph's input normalisation (uint8 -> float / per-volume max, >= 1)."""
    xf = x.astype(np.float32)
    m = xf.reshape(len(xf), -1).max(axis=1).reshape(-1, *([1] * (xf.ndim - 1)))
    return xf / np.maximum(m, 1.0)


def _structured_input(rng, b, shape):
    """Smooth random uint8 volumes (pure noise would make argmax ties meaningless)."""
    from scipy import ndimage as ndi

    x = rng.random((b, 1, *shape)).astype(np.float32)
    x = ndi.gaussian_filter(x, sigma=(0, 0, 2, 2, 2))
    x = (x - x.min()) / max(float(x.max() - x.min()), 1e-6) * 255
    return x.astype(np.uint8)


def main(argv=None) -> int:
    from .config import build_model, load_config, model_shape_of, preprocess_spec_of

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
        "(written into the ONNX metadata; default: the config's 'preprocess', else "
        "MedicalSeg's whole-volume resize)",
    )
    ap.add_argument(
        "--no-confidence",
        action="store_true",
        help=f"export LABELS only, without the {CONFIDENCE_NAME} output (uint8 variant)",
    )
    ap.add_argument(
        "--recast-only",
        metavar="ONNX",
        type=Path,
        help="only rewrite an existing export's final cast as ArgMax -> FLOAT -> UINT8 (in place)",
    )
    ap.add_argument(
        "--add-confidence-only",
        metavar="ONNX",
        type=Path,
        help=f"only add the {CONFIDENCE_NAME} output to an existing export (in place; "
        "weights, metadata and LABELS untouched)",
    )
    args = ap.parse_args(argv)
    if args.recast_only is not None and args.add_confidence_only is not None:
        ap.error("give --recast-only or --add-confidence-only, not both")
    if args.recast_only is not None:
        if not args.recast_only.is_file():
            ap.error(f"--recast-only {args.recast_only}: file not found")
        try:
            changed = recast_file(args.recast_only)
        except ValueError as exc:
            ap.error(f"{args.recast_only}: {exc}")
        print(f"{'rewrote' if changed else 'already casts through FLOAT:'} {args.recast_only}")
        return 0
    if args.add_confidence_only is not None:
        path = args.add_confidence_only
        if not path.is_file():
            ap.error(f"--add-confidence-only {path}: file not found")
        try:
            changed = add_confidence_file(path)
        except ValueError as exc:
            ap.error(f"{path}: {exc}")
        verb = "added to" if changed else "already present in"
        print(f"{CONFIDENCE_NAME} {verb} {path}")
        return 0
    missing = [f"--{n}" for n in ("config", "model_path", "save_dir") if not getattr(args, n)]
    if missing:
        ap.error("the following arguments are required: " + ", ".join(missing))

    cfg = load_config(args.config)
    net = build_model(cfg, pretrained=args.model_path)
    shape = args.model_shape or model_shape_of(cfg)
    name = "model.onnx" if args.variant == "uint8" else f"model_{args.variant}.onnx"
    path = export_onnx(
        net,
        shape,
        Path(args.save_dir) / name,
        args.variant,
        args.opset,
        confidence=not args.no_confidence,
    )
    from client.reading.preprocess import PreprocessSpec

    if args.spacing_mm:
        pspec = PreprocessSpec("spacing", tuple(shape), tuple(args.spacing_mm))
    else:  # the config's own preprocessing (training.train trains for it)
        cspec = preprocess_spec_of(cfg)
        pspec = PreprocessSpec(cspec.mode, tuple(shape), cspec.spacing_mm)
    set_preprocess_metadata(path, pspec.parameters())
    print(f"wrote {path} (preprocessing {pspec.parameters()})")
    if not args.no_check:
        report = check_export(net, path, shape, args.variant)
        print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
