"""Multiply-accumulates (MACs) and FLOPs per volume of the VNet, from the model definition.

``python -m benchmarks.flops [--out benchmarks/results]``

Counts every Conv3D and Conv3DTranspose of MedicalSeg's VNet (the layers of
``training/vnet.py`` and its PyTorch twin ``training/torch_vnet.py``) for a config
file: the original project's (``training/configs/lits_vnet_original.yml``, 128^3,
full width) and the shipped CPU model's (``training/configs/demo_vnet_cpu.yml``,
64^3, width 0.25). Convention: one MAC per (output element, input channel, kernel
tap), zero-padded taps included (the hardware executes them); FLOPs = 2 x MACs.
Batch norm (folded into the convolutions at export), PReLU, the residual adds and
the argmax are counted separately as element-wise operations from the ONNX graph.

Three independent counts agree (``tests/test_benchmarks.py``):

* :func:`vnet_layers`: an analytic walk of the architecture (shapes from the
  convolution arithmetic, channel counts from the width);
* :func:`onnx_macs`: the exported graph's ``Conv`` / ``ConvTranspose`` nodes with
  ONNX shape inference (for the shipped ``model.onnx``);
* :func:`brute_force_conv`: a NumPy executor that performs every multiplication of
  a convolution and counts them, checked against a reference convolution
  (PyTorch hooks on a tiny VNet, or SciPy for single layers).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CONFIGS = {
    "original (lits_vnet_original.yml)": ROOT / "training" / "configs" / "lits_vnet_original.yml",
    "shipped CPU (demo_vnet_cpu.yml)": ROOT / "training" / "configs" / "demo_vnet_cpu.yml",
}


@dataclass(frozen=True)
class ConvLayer:
    """One convolution of the network with its shapes and MAC count."""

    name: str
    kind: str  # "conv" or "convtranspose"
    c_in: int
    c_out: int
    kernel: tuple[int, int, int]
    stride: tuple[int, int, int]
    in_shape: tuple[int, int, int]
    out_shape: tuple[int, int, int]
    macs: int


def conv_out_shape(in_shape, kernel, stride, padding) -> tuple[int, int, int]:
    """Spatial output of a convolution (no dilation): ``(n + 2p - k) // s + 1`` per axis."""
    return tuple((n + 2 * p - k) // s + 1 for n, k, s, p in zip(in_shape, kernel, stride, padding))


def convtranspose_out_shape(in_shape, kernel, stride) -> tuple[int, int, int]:
    """Spatial output of a transposed convolution without padding: ``(n - 1) s + k``."""
    return tuple((n - 1) * s + k for n, k, s in zip(in_shape, kernel, stride))


def conv_macs(c_in, c_out, kernel, out_shape) -> int:
    """MACs of a convolution: every output element sums ``c_in * prod(kernel)`` products."""
    return int(c_out) * int(np.prod(out_shape)) * int(c_in) * int(np.prod(kernel))


def convtranspose_macs(c_in, c_out, kernel, in_shape) -> int:
    """MACs of a transposed convolution: every input element scatters ``c_out * prod(kernel)``."""
    return int(c_in) * int(np.prod(in_shape)) * int(c_out) * int(np.prod(kernel))


def vnet_layers(
    model_shape=(128, 128, 128),
    width: float = 1.0,
    kernel_size=None,
    stride_size=None,
    in_channels: int = 1,
    num_classes: int = 3,
) -> list[ConvLayer]:
    """Every convolution of MedicalSeg's VNet for one input volume, in forward order.

    Parameters mirror :class:`training.vnet.VNet` (``width`` scales the 16-32-64-128-256
    channels; ``kernel_size``/``stride_size`` are the four down/up stages' values).

    Raises
    ------
    ValueError
        If an up-sampling stage does not return to its skip connection's size (the
        network could not run on ``model_shape``).
    """
    k = [tuple(x) for x in (kernel_size or [[2, 2, 2]] * 4)]
    s = [tuple(x) for x in (stride_size or [[2, 2, 2]] * 4)]
    base = int(round(16 * width))
    c = [base * 2**i for i in range(5)]
    layers: list[ConvLayer] = []
    five, one, pad2, pad0, unit = (5, 5, 5), (1, 1, 1), (2, 2, 2), (0, 0, 0), (1, 1, 1)

    def conv(name, cin, cout, shape, kern=five, stride=unit, pad=pad2):
        out = conv_out_shape(shape, kern, stride, pad)
        if min(out) < 1:
            raise ValueError(f"{name}: input {shape} too small for kernel {kern} stride {stride}")
        layers.append(
            ConvLayer(
                name,
                "conv",
                cin,
                cout,
                kern,
                stride,
                tuple(shape),
                out,
                conv_macs(cin, cout, kern, out),
            )
        )
        return out

    def up(name, cin, cout, shape, kern, stride):
        out = convtranspose_out_shape(shape, kern, stride)
        layers.append(
            ConvLayer(
                name,
                "convtranspose",
                cin,
                cout,
                kern,
                stride,
                tuple(shape),
                out,
                convtranspose_macs(cin, cout, kern, shape),
            )
        )
        return out

    shape = tuple(int(n) for n in model_shape)
    skips = []
    shape = conv("in_tr.conv1", in_channels, c[0], shape)
    skips.append((shape, c[0]))
    n_convs_down = (1, 2, 3, 2)
    names_down = ("down_tr32", "down_tr64", "down_tr128", "down_tr256")
    for i, (name, n) in enumerate(zip(names_down, n_convs_down)):
        shape = conv(f"{name}.down_conv", c[i], c[i + 1], shape, k[i], s[i], pad0)
        for j in range(n):
            shape = conv(f"{name}.ops.{j}.conv1", c[i + 1], c[i + 1], shape)
        if i < 3:
            skips.append((shape, c[i + 1]))
    # (name, in channels, out channels, convs, stage index for kernel/stride)
    ups = (("up_tr256", c[4], c[4], 2, 3), ("up_tr128", c[4], c[3], 2, 2),
           ("up_tr64", c[3], c[2], 1, 1), ("up_tr32", c[2], c[1], 1, 0))  # fmt: skip
    for name, cin, cout, n, st in ups:
        shape = up(f"{name}.up_conv", cin, cout // 2, shape, k[st], s[st])
        skip_shape, skip_c = skips.pop()
        if shape != skip_shape or cout // 2 + skip_c != cout:
            raise ValueError(
                f"{name}: up-sampled to {shape} x {cout // 2} channels but the skip is "
                f"{skip_shape} x {skip_c}: model_shape {tuple(model_shape)} does not fit this VNet"
            )
        for j in range(n):
            shape = conv(f"{name}.ops.{j}.conv1", cout, cout, shape)
    shape = conv("out_tr.conv1", c[1], num_classes, shape)
    conv("out_tr.conv2", num_classes, num_classes, shape, one, unit, pad0)
    return layers


def config_layers(path: Path) -> tuple[dict, list[ConvLayer]]:
    """(model settings, layers) for a MedicalSeg YAML config (``model_shape`` default 128^3)."""
    from training.config import load_config, model_shape_of

    cfg = load_config(path)
    m = cfg.get("model", {})
    settings = {
        "model_shape": list(model_shape_of(cfg)),
        "width": float(m.get("width", 1.0)),
        "kernel_size": m.get("kernel_size"),
        "stride_size": m.get("stride_size"),
        "in_channels": int(m.get("in_channels", 1)),
        "num_classes": int(m.get("num_classes", 3)),
    }
    return settings, vnet_layers(**settings)


def onnx_macs(path: Path) -> dict:
    """Conv/ConvTranspose MACs and element-wise output counts of an ONNX graph (batch 1).

    Shapes come from ONNX shape inference with the batch dimension set to 1.

    Returns
    -------
    dict
        ``conv_macs`` (list, graph order), ``total_macs``, ``elementwise_outputs``
        (output elements of every other node: an upper bound on its operations' count
        in MAC units for the cheap ops), ``input_shape``.
    """
    import onnx
    from onnx import numpy_helper, shape_inference

    model = onnx.load(str(path))
    g = model.graph
    inp = g.input[0]
    for d in inp.type.tensor_type.shape.dim:
        if not d.HasField("dim_value"):
            d.dim_value = 1
            break
    model = shape_inference.infer_shapes(model)
    g = model.graph
    shapes = {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        dims = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        if dims and dims[0] <= 0:  # the batch stays symbolic through Shape/Expand: batch 1
            dims[0] = 1
        shapes[vi.name] = dims
    inits = {t.name: numpy_helper.to_array(t).shape for t in g.initializer}
    # paddle2onnx routes weights through Identity nodes: follow them to the initializer.
    alias = {n.output[0]: n.input[0] for n in g.node if n.op_type == "Identity"}

    def weight_shape(name):
        seen = 0
        while name not in inits and name in alias and seen < 100:
            name, seen = alias[name], seen + 1
        return inits.get(name) or (tuple(shapes[name]) if shapes.get(name) else None)

    macs, other = [], 0
    for node in g.node:
        if node.op_type == "Identity":
            continue
        if node.op_type in ("Conv", "ConvTranspose"):
            w = weight_shape(node.input[1])
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            groups = int(attrs.get("group", 1))
            if w is None:
                raise ValueError(
                    f"{path}: {node.name}: weight {node.input[1]} is not an initializer"
                )
            if node.op_type == "Conv":
                out = shapes[node.output[0]]
                c_out, cin_g, *kern = w
                macs.append(int(np.prod(out)) * cin_g * int(np.prod(kern)))
            else:
                x = shapes[node.input[0]]
                c_in, cout_g, *kern = w
                macs.append(int(np.prod(x)) * cout_g * int(np.prod(kern)))
            _ = groups  # the products above use the weight's channels per group already
        else:
            for o in node.output:
                if o in shapes and shapes[o] and all(d > 0 for d in shapes[o]):
                    other += int(np.prod(shapes[o]))
    return {
        "input_shape": shapes.get(inp.name),
        "conv_macs": macs,
        "total_macs": int(sum(macs)),
        "elementwise_outputs": int(other),
    }


def brute_force_conv(x, w, stride=(1, 1, 1), padding=(0, 0, 0), transpose=False):
    """Perform a 3D (transposed) convolution one kernel tap at a time, counting products.

    Every multiplication is executed as an element of a NumPy product array whose size
    is added to the count, so the count is what was computed, not a formula.

    Parameters
    ----------
    x : ndarray ``[c_in, d, h, w]``
    w : ndarray
        ``[c_out, c_in, kd, kh, kw]`` for a convolution (cross-correlation, as deep
        learning frameworks define it), ``[c_in, c_out, kd, kh, kw]`` for a transposed one.
    stride, padding : 3 ints
        Padding is for the convolution only (the VNet's transposed ones have none).

    Returns
    -------
    out : ndarray (float64), multiplies : int
    """
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    kd, kh, kw = w.shape[2:]
    count = 0
    if not transpose:
        xp = np.pad(x, [(0, 0)] + [(p, p) for p in padding])
        out_shape = conv_out_shape(x.shape[1:], (kd, kh, kw), stride, padding)
        out = np.zeros((w.shape[0], *out_shape))
        sd, sh, sw = stride
        for a in range(kd):
            for b in range(kh):
                for c in range(kw):
                    slab = xp[
                        :,
                        a : a + sd * (out_shape[0] - 1) + 1 : sd,
                        b : b + sh * (out_shape[1] - 1) + 1 : sh,
                        c : c + sw * (out_shape[2] - 1) + 1 : sw,
                    ]
                    prod = w[:, :, a, b, c][:, :, None, None, None] * slab[None]
                    count += prod.size
                    out += prod.sum(axis=1)
        return out, count
    out_shape = convtranspose_out_shape(x.shape[1:], (kd, kh, kw), stride)
    out = np.zeros((w.shape[1], *out_shape))
    sd, sh, sw = stride
    n0, n1, n2 = x.shape[1:]
    for a in range(kd):
        for b in range(kh):
            for c in range(kw):
                prod = x[:, None] * w[:, :, a, b, c][:, :, None, None, None]
                count += prod.size
                out[
                    :,
                    a : a + sd * (n0 - 1) + 1 : sd,
                    b : b + sh * (n1 - 1) + 1 : sh,
                    c : c + sw * (n2 - 1) + 1 : sw,
                ] += prod.sum(axis=0)
    return out, count


def summarise(layers: list[ConvLayer]) -> dict:
    macs = sum(layer.macs for layer in layers)
    by_kind = {}
    for layer in layers:
        by_kind[layer.kind] = by_kind.get(layer.kind, 0) + layer.macs
    return {
        "total_macs": int(macs),
        "total_gmacs": round(macs / 1e9, 3),
        "total_gflops": round(2 * macs / 1e9, 3),
        "macs_by_kind": by_kind,
        "n_layers": len(layers),
        "largest_layers": [
            {"name": x.name, "gmacs": round(x.macs / 1e9, 3), "share": round(x.macs / macs, 3)}
            for x in sorted(layers, key=lambda x: -x.macs)[:5]
        ],
        "activation_elements_per_volume": int(
            sum(int(np.prod(x.out_shape)) * x.c_out for x in layers)
        ),
        "parameters_conv": int(
            sum(x.c_in * x.c_out * int(np.prod(x.kernel)) + x.c_out for x in layers)
        ),
    }


def main(argv=None) -> int:
    from benchmarks._common import machine_info, save_result
    from client.core.paths import SHIPPED_ONNX

    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.flops", description=__doc__.splitlines()[0]
    )
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--onnx", type=Path, default=SHIPPED_ONNX)
    args = ap.parse_args(argv)
    res = {
        "machine": machine_info(numpy=np.__version__),
        "convention": "1 MAC per (output element, input channel, kernel tap), padded taps included; FLOPs = 2 MACs",
        "configs": {},
    }
    for label, path in CONFIGS.items():
        settings, layers = config_layers(path)
        res["configs"][label] = {
            "config": str(path.relative_to(ROOT)),
            "settings": settings,
            **summarise(layers),
            "layers": [asdict(x) for x in layers],
        }
    if args.onnx.exists():
        o = onnx_macs(args.onnx)
        shipped = res["configs"]["shipped CPU (demo_vnet_cpu.yml)"]
        res["onnx_cross_check"] = {
            "file": str(args.onnx.relative_to(ROOT))
            if args.onnx.is_relative_to(ROOT)
            else str(args.onnx),
            "input_shape": o["input_shape"],
            "conv_macs_total": o["total_macs"],
            "analytic_total": shipped["total_macs"],
            "equal": o["total_macs"] == shipped["total_macs"],
            "elementwise_outputs": o["elementwise_outputs"],
            "elementwise_share_of_macs": round(o["elementwise_outputs"] / o["total_macs"], 4),
        }
    save_result(res, args.out, "flops.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
