"""FP16 safety check on CPU: an FP16-emulated copy of the served ONNX model.

TensorRT's FP16 engine stores weights and activations in half precision
(accumulating convolutions in FP32). We cannot run TensorRT here, so we emulate
that numerically in ONNX Runtime on the CPU:

* every float initializer (weights, BN statistics, PReLU slopes) is rounded to
  FP16 and back;
* every float tensor produced by a node is passed through a Cast pair
  (FLOAT -> FLOAT16 -> FLOAT), so each activation carries FP16 precision and
  range (overflow becomes inf, as it would in the engine).

``python -m training.fp16 --onnx model_repository/cpu/hepascreen_vnet/1/model.onnx``
compares the FP32 model with its emulated copy on phantoms and on the real CT:
the fraction of voxels whose label changes, and the Dice change per organ
against the reference labels; and, for a model with the ``CONFIDENCE`` output
(the segmentation gate compares its organ means with the config's floors), the
fraction of voxels whose confidence changes, the largest change (in 1/255), the
change of each organ's mean confidence and the FP32 margin above the floor
(``hepascreen_min_confidence`` of the config beside the ONNX). The recorded run
of the shipped model is ``docs/model_fp16.json``. The numbers are evidence for the FP16 engine,
not a substitute for measuring the real engine on a GPU (docs/deployment.md).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

FLOAT = 1  # onnx.TensorProto.FLOAT
FLOAT16 = 10


def emulate_fp16(model):
    """Return a copy of an ONNX ModelProto with FP16 rounding of weights and activations."""
    import onnx
    from onnx import helper, numpy_helper, shape_inference

    m = onnx.ModelProto()
    m.CopyFrom(model)
    for init in m.graph.initializer:
        if init.data_type == FLOAT:
            a = numpy_helper.to_array(init).astype(np.float16).astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(a, init.name))
    inferred = shape_inference.infer_shapes(m)
    float_values = {
        vi.name
        for vi in list(inferred.graph.value_info) + list(inferred.graph.output)
        if vi.type.tensor_type.elem_type == FLOAT
    }
    new_nodes = []
    n_casts = 0
    for node in m.graph.node:
        renamed = []
        for k, out in enumerate(node.output):
            if out in float_values and node.op_type not in ("Cast", "Constant", "Shape"):
                tmp = f"{out}__fp32raw"
                renamed.append((k, out, tmp))
        for k, _out, tmp in renamed:
            node.output[k] = tmp
        new_nodes.append(node)
        for _k, out, tmp in renamed:
            half = f"{out}__fp16"
            new_nodes.append(
                helper.make_node("Cast", [tmp], [half], to=FLOAT16, name=f"{half}_cast")
            )
            new_nodes.append(
                helper.make_node("Cast", [half], [out], to=FLOAT, name=f"{out}_cast32")
            )
            n_casts += 2
    del m.graph.node[:]
    m.graph.node.extend(new_nodes)
    m.doc_string = f"FP16-emulated copy ({n_casts} casts) of: {model.doc_string}"
    return m


def compare(onnx_path: Path, cases, batch: int = 1, floors: dict | None = None) -> dict:
    """Label agreement and Dice change between FP32 and FP16-emulated models.

    ``cases`` yields ``(name, uint8 input [n, 1, z, y, x], reference labels [n, z, y, x] or None)``
    (``n`` windows of one scan; Dice over all of them).
    """
    import onnx
    import onnxruntime as ort

    from client.core.contract import CONFIDENCE_NAME, INPUT_NAME, OUTPUT_NAME

    model = onnx.load(str(onnx_path))
    s32 = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    s16 = ort.InferenceSession(
        emulate_fp16(model).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    outputs = [OUTPUT_NAME]
    if CONFIDENCE_NAME in [o.name for o in s32.get_outputs()]:
        outputs.append(CONFIDENCE_NAME)
    floors = dict(floors or {})
    per_case = []
    changed = total = conf_changed = conf_max = 0
    for name, x, ref in cases:
        out32 = s32.run(outputs, {INPUT_NAME: x})
        out16 = s16.run(outputs, {INPUT_NAME: x})
        a, b = out32[0], out16[0]
        diff = int((a != b).sum())
        changed += diff
        total += a.size
        rec = {"case": name, "label_changed_fraction": diff / a.size}
        if ref is not None:
            for organ, lab in (("liver", 1), ("spleen", 2)):
                d32 = _dice(a == lab, ref == lab)
                d16 = _dice(b == lab, ref == lab)
                rec[f"dice_{organ}_fp32"] = d32
                rec[f"dice_{organ}_fp16"] = d16
        if len(outputs) == 2:
            rec.update(confidence_change(a, out32[1], b, out16[1], floors))
            conf_changed += rec["confidence_changed_voxels"]
            conf_max = max(conf_max, rec["confidence_max_abs_change_255"])
        per_case.append(rec)
    res = {"label_changed_fraction": changed / max(total, 1)}
    if len(outputs) == 2:
        mean_changes = [abs(c[k]) for c in per_case for k in c if k.endswith("_mean_change")]
        margins = [c[k] for c in per_case for k in c if k.endswith("_fp32_margin_above_floor")]
        res.update({
            "confidence_changed_fraction": conf_changed / max(total, 1),
            "confidence_max_abs_change_255": conf_max,
            "organ_mean_confidence_max_abs_change": max(mean_changes, default=None),
            "smallest_fp32_margin_above_floor": min(margins, default=None),
            "floors": floors,
        })  # fmt: skip
    res["cases"] = per_case
    return res


def confidence_change(labels32, conf32, labels16, conf16, floors: dict) -> dict:
    """How FP16 moves the CONFIDENCE output (uint8, 255 x probability) of one case.

    Per organ: the mean confidence over the voxels each model labels as that organ (what
    the gate compares with its floor, here on the model grid), its FP16 change and the
    FP32 margin above the floor where one is declared.
    """
    d = np.abs(conf32.astype(np.int16) - conf16.astype(np.int16))
    rec = {
        "confidence_changed_voxels": int((d > 0).sum()),
        "confidence_changed_fraction": float((d > 0).mean()),
        "confidence_max_abs_change_255": int(d.max()) if d.size else 0,
    }
    for organ, lab in (("liver", 1), ("spleen", 2)):
        m32, m16 = labels32 == lab, labels16 == lab
        if not m32.any() or not m16.any():
            continue
        mean32 = float(conf32[m32].mean()) / 255.0
        mean16 = float(conf16[m16].mean()) / 255.0
        rec[f"{organ}_mean_confidence_fp32"] = mean32
        rec[f"{organ}_mean_confidence_fp16"] = mean16
        rec[f"{organ}_mean_change"] = mean16 - mean32
        if organ in floors:
            rec[f"{organ}_fp32_margin_above_floor"] = mean32 - floors[organ]
    return rec


def config_floors(onnx_path: Path) -> dict:
    """``hepascreen_min_confidence`` of the config.pbtxt beside a repository's ONNX ({} if none)."""
    import re

    config = Path(onnx_path).resolve().parent.parent / "config.pbtxt"
    if not config.is_file():
        return {}
    m = re.search(r'key:\s*"hepascreen_min_confidence"\s*value:\s*\{\s*string_value:\s*"([^"]*)"',
                  config.read_text(encoding="utf-8"))  # fmt: skip
    if not m:
        return {}
    out = {}
    for part in m.group(1).split(","):
        k, _, v = part.partition("=")
        if v.strip():
            out[k.strip()] = float(v)
    return out


def _dice(a, b):
    from .metrics import dice_per_class

    return dice_per_class(a.astype(np.uint8), b.astype(np.uint8), classes=(1,))[0]


def default_cases(spec, n_phantoms: int, real_ct: Path | None, real_labels: Path | None):
    """Cases as the model sees them: ``(name, uint8 [n_windows, 1, *model], labels [n_windows, *model])``.

    ``spec``: the model's :class:`client.reading.preprocess.PreprocessSpec` (or a model shape:
    ``resize``); a fixed-spacing model gets every window of the scan as one batch.
    """
    from client.reading.preprocess import labels_to_grid, preprocess_grid, window_batch
    from training.phantoms import make_phantom

    def windows(hu, labels, spacing, direction):
        grid, rec = preprocess_grid(hu, spacing, direction, spec)
        return window_batch(grid, rec), window_batch(labels_to_grid(labels, rec), rec)[:, 0]

    for seed in range(n_phantoms):
        p = make_phantom(500_000 + seed, shape=(80, 160, 160))
        yield (f"phantom_{500_000 + seed}", *windows(p.hu, p.labels, p.spacing, p.direction))
    if real_ct is not None and real_ct.exists():
        from client.reading.io import read_label_map, read_scan

        ct = read_scan(real_ct)
        lab = read_label_map(real_labels, ct)
        yield ("real_ct", *windows(ct.array, np.asarray(lab), ct.spacing, ct.direction))


def main(argv=None) -> int:
    root = Path(__file__).resolve().parents[1]
    data = root.parent / "shared" / "data" / "totalseg_example"
    ap = argparse.ArgumentParser(description="Compare an ONNX model with its FP16-emulated copy")
    ap.add_argument(
        "--onnx", type=Path, default=root / "model_repository/cpu/hepascreen_vnet/1/model.onnx"
    )
    ap.add_argument("--phantoms", type=int, default=8)
    ap.add_argument("--real_ct", type=Path, default=data / "ct.nii.gz")
    ap.add_argument("--real_labels", type=Path, default=data / "labels.nii.gz")
    ap.add_argument("--out", type=Path, default=None, help="write the JSON result here")
    args = ap.parse_args(argv)
    import onnxruntime as ort

    from .evaluate import onnx_spec

    spec = onnx_spec(ort.InferenceSession(str(args.onnx), providers=["CPUExecutionProvider"]))
    import hashlib

    floors = config_floors(args.onnx)
    res = compare(args.onnx, default_cases(spec, args.phantoms, args.real_ct, args.real_labels),
                  floors=floors)  # fmt: skip
    res["preprocess"] = spec.parameters()
    res["onnx"] = (
        str(args.onnx.resolve().relative_to(root))
        if args.onnx.resolve().is_relative_to(root)
        else str(args.onnx)
    )
    res["onnx_sha256"] = hashlib.sha256(args.onnx.read_bytes()).hexdigest()
    res["onnxruntime"] = ort.__version__
    text = json.dumps(res, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
