"""Evaluate segmentation models on held-out phantoms and on the real CT, on the original grid.

``python -m training.evaluate [--onnx a.onnx [b.onnx ...]] [--phantoms 20] [--out docs/model_eval.json]``

For each scan: preprocess (``client.reading.preprocess``) -> model -> ``to_scan_grid`` ->
Dice per organ against the reference labels on the scan's own grid, and the
full measurement (``postprocess.assess``) on the predicted masks vs the truth
(phantoms: the true ratio and grade; real CT: the ratio measured with the reference
masks). Several models given to ``--onnx`` are evaluated on the same cases in the
same run.

Cases
-----
- Held-out phantoms: seeds 2,000,000+ (training pools use seeds below 1,000,000
  and validation 900,000+ / 5,000,000+), random sizes, spacings, orientations, grades.
- The shared real CT (``../shared/data/totalseg_example``), in variants
  (:func:`real_ct_cases`): ``native`` (3 mm isotropic), ``resampled_0.8x0.8x5``
  (slice profile of 5 mm, then resampled to 0.8 x 0.8 mm pixels and 5 mm slices:
  a thick-slice clinical reconstruction; Dice on that grid), and ``arterial``,
  ``portal``, ``delayed``: the real image with contrast enhancement painted per
  structure through its 61-structure map (``labels_all``; the real texture and
  anatomy are kept, only enhancement is added). Whether that scan is held out
  depends on the model: the synthetic-only run never saw its intensities but its
  anatomy (``labels_all``) is one of the synthesis sources; the shipped demo model
  was trained on augmented copies of it.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

import numpy as np

from .metrics import dice_per_class

GRADES = ("normal", "mild", "moderate", "severe")
DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "totalseg_example"

# Enhancement added to the (unenhanced) real CT per tissue class and phase (HU):
# midpoints of training.synth.HU_RANGES minus the unenhanced midpoint, liver by hand.
_ENHANCE = {
    "arterial": {
        "liver": 20,
        "spleen": 75,
        "kidney_cortex": 170,
        "kidney_medulla": 45,
        "pancreas": 75,
        "artery": 230,
        "vein": 50,
        "portal_vein": 80,
        "muscle": 8,
        "soft": 30,
    },
    "portal": {
        "liver": 60,
        "spleen": 80,
        "kidney_cortex": 150,
        "kidney_medulla": 130,
        "pancreas": 60,
        "artery": 130,
        "vein": 110,
        "portal_vein": 130,
        "muscle": 12,
        "soft": 40,
    },
    "delayed": {
        "liver": 45,
        "spleen": 55,
        "kidney_cortex": 100,
        "kidney_medulla": 115,
        "pancreas": 35,
        "artery": 75,
        "vein": 75,
        "portal_vein": 75,
        "muscle": 10,
        "soft": 30,
    },
}


def _dice(a, b):
    return dice_per_class(a.astype(np.uint8), b.astype(np.uint8), classes=(1,))[0]


def onnx_spec(sess):
    """The preprocessing an exported model declares in its ONNX metadata (``training.export``
    writes the model config's ``hepascreen_preprocess`` keys there); none = ``resize``."""
    from client.reading.preprocess import PreprocessSpec

    meta = sess.get_modelmeta().custom_metadata_map
    return PreprocessSpec.from_parameters(dict(meta), tuple(sess.get_inputs()[0].shape[2:]))


def onnx_predictor(path):
    """``predict(x uint8 [N, 1, z, y, x]) -> labels [N, z, y, x]`` with ONNX Runtime (CPU).

    ``predict.spec`` is the model's :class:`client.reading.preprocess.PreprocessSpec`.
    """
    import onnxruntime as ort

    from client.core.contract import INPUT_NAME

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def predict(x):
        return sess.run(None, {INPUT_NAME: x})[0]

    predict.model_shape = tuple(sess.get_inputs()[0].shape[2:])
    predict.spec = onnx_spec(sess)
    return predict


def segment_volume(predict, hu, spacing, direction, spec, chunk: int = 4):
    """Labels on the scan's own grid: serving's preprocessing, ``predict`` per chunk of
    windows, stitching and mapping back (``client.reading.preprocess``)."""
    from client.reading.preprocess import preprocess_windows, to_scan_grid

    x, record = preprocess_windows(hu, spacing, direction, spec)
    small = np.concatenate([np.asarray(predict(x[i : i + chunk])) for i in range(0, len(x), chunk)])
    return to_scan_grid(small, record), record


def evaluate_case(predict, hu, labels, spacing, direction, spec, assess_ratio=True, classes=None):
    """Dice (and liver/spleen ratio) of one scan on its own grid.

    ``classes``: ``{value: name}`` of a multi-class model (:mod:`training.classes`):
    adds ``dice_<name>`` for every value > 0 (NaN where absent from both masks).

    ``predict`` maps a uint8 batch ``[N, 1, *model_shape]`` to labels ``[N, *model_shape]``
    (an ONNX Runtime session's ``run`` wrapped by :func:`onnx_predictor`, or a torch model);
    ``spec`` is a :class:`client.reading.preprocess.PreprocessSpec` or a model shape (``resize``).
    """
    pred, record = segment_volume(predict, hu, spacing, direction, spec)
    out = {
        "dice_liver": _dice(pred == 1, labels == 1),
        "dice_spleen": _dice(pred == 2, labels == 2),
        "windows": len(record.windows),
    }
    if classes:
        vals = [int(v) for v in classes if int(v) > 0]
        for v, d in zip(vals, dice_per_class(pred, labels, vals)):
            out[f"dice_{classes[v]}"] = d
    if assess_ratio:
        from postprocess import assess

        a_pred = assess(hu, pred, spacing)
        a_ref = assess(hu, labels, spacing)
        out.update(
            ratio_pred_masks=a_pred.ratio,
            ratio_ref_masks=a_ref.ratio,
            grade_pred_masks=a_pred.grade,
            grade_ref_masks=a_ref.grade,
        )
    return out


def paint_phase(hu, tissue, phase, seed=0):
    """The real CT with contrast enhancement of ``phase`` added per tissue class.

    Deterministic: the arterial spleen gets a heterogeneous ("zebra") enhancement from
    a fixed smooth field; the enhancement map is smoothed by 0.7 voxel (partial volume).
    """
    from scipy import ndimage as ndi

    from .tissues import TISSUES

    delta = np.zeros(hu.shape, np.float32)
    for name, d in _ENHANCE[phase].items():
        delta[tissue == TISSUES[name]] = d
    if phase == "arterial":
        rng = np.random.default_rng(seed)
        f = ndi.gaussian_filter(rng.standard_normal(hu.shape).astype(np.float32), 2.0)
        f /= max(float(f.std()), 1e-6)
        sp = tissue == TISSUES["spleen"]
        delta[sp] += 30.0 * np.clip(f[sp], -1.5, 1.5)
    delta = ndi.gaussian_filter(delta, 0.7)
    return np.clip(np.rint(hu + delta), -1024, 3071).astype(np.int16)


def resample_thick(hu, labels, spacing, direction, new_spacing=(5.0, 0.8, 0.8)):
    """Resample a scan to ``new_spacing`` (z, y, x) with a slice profile of the new slice size.

    The image is blurred along z so that its slice profile (Gaussian FWHM) becomes the
    new slice spacing, then linearly resampled (array axes, same direction); the labels
    by nearest neighbour.
    """
    from scipy import ndimage as ndi

    sz = float(spacing[0])
    extra = max(new_spacing[0] ** 2 - sz**2, 0.0) ** 0.5
    img = hu.astype(np.float32)
    if extra > 0:
        img = ndi.gaussian_filter1d(img, extra / 2.3548 / sz, axis=0)
    shape = [max(2, int(round(n * s / t))) for n, s, t in zip(hu.shape, spacing, new_spacing)]
    coords = [(np.arange(m) + 0.5) * t / s - 0.5 for m, s, t in zip(shape, spacing, new_spacing)]
    grid = np.meshgrid(*coords, indexing="ij")
    img2 = ndi.map_coordinates(img, grid, order=1, mode="nearest")
    lab2 = ndi.map_coordinates(labels, grid, order=0, mode="nearest")
    return np.rint(img2).astype(np.int16), lab2.astype(np.uint8), tuple(new_spacing), direction


REAL_CT_VARIANTS = (
    "native",
    "resampled_0.8x0.8x5",
    "arterial",
    "portal",
    "delayed",
    "slab_42mm",
    "organs_only",
    "upper_half",
)


def crop_slices(hu, labels, name):
    """Partial-coverage crops of a scan along its slice axis (array axis 0).

    ``slab_42mm``: 14 slices (42 mm at 3 mm) centred on the slice with the largest
    spleen section (both organs cut by the scan's ends, as a thin slab);
    ``organs_only``: from the first to the last slice holding liver or spleen (no chest,
    no pelvis); ``upper_half``: the upper half of that range (spleen and the upper liver).
    """
    z_sp = np.flatnonzero((labels == 2).any(axis=(1, 2)))
    z_or = np.flatnonzero((labels > 0).any(axis=(1, 2)))
    if name == "slab_42mm":
        c = int(np.argmax((labels == 2).sum(axis=(1, 2)))) if z_sp.size else hu.shape[0] // 2
        lo = min(max(0, c - 7), max(0, hu.shape[0] - 14))
        sl = slice(lo, lo + 14)
    elif name == "organs_only":
        sl = slice(int(z_or[0]), int(z_or[-1]) + 1)
    elif name == "upper_half":
        mid = (int(z_or[0]) + int(z_or[-1])) // 2
        sl = slice(mid, int(z_or[-1]) + 1)
    else:
        raise ValueError(f"unknown crop {name!r}")
    return np.ascontiguousarray(hu[sl]), np.ascontiguousarray(labels[sl])


def real_ct_cases(data_dir=DATA_DIR, variants=REAL_CT_VARIANTS, multiclass=False):
    """Variants of the shared real CT as ``(name, hu, labels, spacing, direction)``.

    ``multiclass``: the labels are the class table's (:mod:`training.classes`), mapped
    by structure name from its 61-structure map ``labels_all`` (a TotalSegmentator
    model's output, not an expert's: say so where its Dice is used); otherwise 1 liver,
    2 spleen from ``labels.nii.gz``.

    The crops (``slab_42mm``, ``organs_only``, ``upper_half``, :func:`crop_slices`)
    assume the slice axis is array axis 0 running along the body axis (true for the
    shared CT: direction diag(-1, -1, 1)).
    """
    import SimpleITK as sitk

    from client.reading.io import read_label_map, read_scan

    from .synth import totalseg_tissue_map

    data_dir = Path(data_dir)
    ct = read_scan(data_dir / "ct.nii.gz")
    lab = read_label_map(data_dir / "labels.nii.gz", ct)
    if multiclass:
        from .classes import totalseg_lut

        la = sitk.GetArrayFromImage(sitk.ReadImage(str(data_dir / "labels_all.nii.gz")))
        names = json.loads((data_dir / "labels_all_names.json").read_text(encoding="utf-8"))
        if la.shape != np.asarray(lab).shape:
            raise ValueError(f"labels_all {la.shape} is not on the CT's grid {np.shape(lab)}")
        lab = totalseg_lut(names)[la]
    hu = np.asarray(ct.array)
    out = []
    tissue = None
    for v in variants:
        if v == "native":
            out.append((v, hu, lab, ct.spacing, ct.direction))
        elif v.startswith("resampled"):
            out.append((v, *resample_thick(hu, lab, ct.spacing, ct.direction)))
        elif v in _ENHANCE:
            if tissue is None:
                la = sitk.GetArrayFromImage(sitk.ReadImage(str(data_dir / "labels_all.nii.gz")))
                names = json.loads((data_dir / "labels_all_names.json").read_text(encoding="utf-8"))
                tissue = totalseg_tissue_map(la, names, hu)
            out.append((v, paint_phase(hu, tissue, v), lab, ct.spacing, ct.direction))
        elif v in ("slab_42mm", "organs_only", "upper_half"):
            out.append((v, *crop_slices(hu, np.asarray(lab), v), ct.spacing, ct.direction))
        else:
            raise ValueError(f"unknown real-CT variant {v!r}")
    return out


@functools.lru_cache(maxsize=32)
def heldout_phantom(i):
    """Held-out phantom ``i`` (seed 2,000,000 + i): random size, spacing, orientation, grade.

    Cached: several models evaluated in one run see the same phantoms, built once.
    """
    from .phantoms import make_phantom

    seed = 2_000_000 + i
    rng = np.random.default_rng(seed)
    nxy = int(rng.integers(160, 320))
    fov = float(rng.uniform(320, 420))
    sz = float(rng.choice([1.0, 2.5, 5.0]))
    nz = int(np.clip(round(rng.uniform(280, 420) / sz), 40, 300))
    return make_phantom(
        seed,
        shape=(nz, nxy, nxy),
        spacing=(sz, fov / nxy, fov / nxy),
        grade=GRADES[i % 4],
        random_orientation=bool(i % 3 == 0),
    )


def evaluate_model(predict, spec, n_phantoms=20, real_cases=None):
    """Phantom and real-CT evaluation of one predictor; returns a summary dict."""
    rows = []
    t0 = time.time()
    for i in range(n_phantoms):
        p = heldout_phantom(i)
        r = evaluate_case(predict, p.hu, p.labels, p.spacing, p.direction, spec)
        r.update(
            case=f"phantom_{2_000_000 + i}",
            shape=list(p.hu.shape),
            spacing=[round(s, 3) for s in p.spacing],
            true_ratio=float(p.truth["ratio"]),
            true_grade=p.truth["grade"],
        )
        rows.append(r)
    real = {}
    for name, hu, lab, sp, d in real_cases or []:
        real[name] = evaluate_case(predict, hu, lab, sp, d, spec)
        real[name]["shape"] = list(hu.shape)
    ph = rows
    from client.reading.preprocess import as_spec

    spec = as_spec(spec)
    summary = {
        "model_shape": list(spec.model_shape),
        "preprocess": spec.parameters(),
        "n_phantoms": len(ph),
    }
    if ph:
        summary.update(
            phantom_dice_liver_mean=round(float(np.nanmean([r["dice_liver"] for r in ph])), 4),
            phantom_dice_spleen_mean=round(float(np.nanmean([r["dice_spleen"] for r in ph])), 4),
            phantom_dice_liver_min=round(float(np.nanmin([r["dice_liver"] for r in ph])), 4),
            phantom_dice_spleen_min=round(float(np.nanmin([r["dice_spleen"] for r in ph])), 4),
            phantom_ratio_mean_abs_err_pred_masks=round(
                float(np.nanmean([abs(r["ratio_pred_masks"] - r["true_ratio"]) for r in ph])), 4
            ),
            phantom_grade_correct_pred_masks=(
                f"{sum(r['grade_pred_masks'] == r['true_grade'] for r in ph)}/{len(ph)}"
            ),
        )
    summary["real_ct"] = real
    summary["seconds"] = round(time.time() - t0, 1)
    summary["cases"] = rows
    return summary


def main(argv=None) -> int:
    root = Path(__file__).resolve().parents[1]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--onnx",
        type=Path,
        nargs="+",
        default=[root / "model_repository/cpu/hepascreen_vnet/1/model.onnx"],
    )
    ap.add_argument("--phantoms", type=int, default=20)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    real_cases = real_ct_cases() if (DATA_DIR / "ct.nii.gz").exists() else []
    results = {}
    for path in args.onnx:
        predict = onnx_predictor(path)
        s = evaluate_model(predict, predict.spec, args.phantoms, real_cases)
        results[str(path)] = {"model": str(path), **s}
    out = results[str(args.onnx[0])] if len(args.onnx) == 1 else {"models": results}
    text = json.dumps(out, indent=2, default=float)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
