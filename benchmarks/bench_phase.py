"""Contrast phase and criterion per phase (issue 20): confusion tables and cost.

Cases: the shared real CT (unenhanced) and its arterial, portal-venous and delayed
versions painted from published phase attenuations (training/phase_paint.py), as
NIfTI (no tags) and as one DICOM study with and without contrast tags; unenhanced
fatty livers at 60..0 HU with blood-attenuation intrahepatic vessels. Each measured
through the library (``client.screen_scan``) with three kinds of masks:

* ``reference_all``: TotalSegmentator's 61-structure map (aorta, portal vein, IVC,
  kidneys: phase from the vessels) with ``--label-map totalsegmentator``;
* ``reference_ls``: the same map reduced to liver and spleen (phase from the organs);
* ``model``: the shipped model's own masks (ONNX Runtime, CPU; liver and spleen only).

Cost: CPU seconds of ``postprocess.assess`` with and without the phase structures on
the real CT and on a clinical-grid copy (0.75 x 0.75 x 1 mm), round-robin repeats.

    .venv/bin/python -m benchmarks.bench_phase [--out benchmarks/results/phase.json]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._common import machine_info, save_result

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "totalseg_example"
PHASES = ("unenhanced", "arterial", "portal_venous", "delayed")
STEATOSIS_HU = (60, 38, 27, 15, 5, 0)


class _ModelSegmenter:
    """The shipped model through ONNX Runtime (as benchmarks.bench_gate)."""

    kind = "triton"
    repository = None

    def __init__(self):
        from benchmarks.bench_gate import model_segmenter

        self.seg = model_segmenter()

    def segment(self, scan, source, timer):
        with timer("infer"):
            return self.seg(scan.array, scan.spacing, scan.direction)

    def describe(self):
        return {
            "model_name": "shipped model (ONNX Runtime)",
            "model_version": None,
            "model_sha256": None,
        }


def _cases(tmp: Path) -> list[tuple[str, str, Path]]:
    """``[(case, truth, path)]``: the phase study (NIfTI, DICOM without and with tags) and
    the steatosis cases (NIfTI)."""
    from training import phase_paint as pp

    out = []
    untagged = pp.write_phase_study(tmp / "untagged", tags=False, data_dir=DATA)
    tagged = pp.write_phase_study(tmp / "tagged", tags=True, nifti=False, data_dir=DATA)
    for ph in PHASES:
        out.append((f"nifti/{ph}", ph, untagged.nifti_paths[ph]))
        out.append((f"dicom_untagged/{ph}", ph, untagged.dicom_dirs[ph]))
        out.append((f"dicom_tagged/{ph}", ph, tagged.dicom_dirs[ph]))
    for h, p in pp.write_steatosis_cases(tmp / "steatosis", STEATOSIS_HU, data_dir=DATA).items():
        out.append((f"steatosis/{h:02d}HU", "unenhanced", p))
    return out


def _masks(tmp: Path, cases, kind: str) -> tuple[Path, str]:
    """A --masks folder for ``cases`` (the same map for every case: one patient)."""
    from client.pipeline.screen import _as_source
    from training import phase_paint as pp

    folder = tmp / f"masks_{kind}"
    folder.mkdir(exist_ok=True)
    if kind == "reference_all":
        for _, _, p in cases:
            shutil.copy(DATA / "labels_all.nii.gz", folder / f"{_as_source(p).case_id}.nii.gz")
        return folder, "totalsegmentator"
    pp.write_reference_masks(folder, [_as_source(p).case_id for _, _, p in cases], data_dir=DATA)
    return folder, "default"


def confusion(results: list[dict]) -> dict:
    """``{truth: {predicted: n}}`` over the phase cases."""
    table: dict = {}
    for r in results:
        row = table.setdefault(r["truth"], {})
        row[r["phase"]] = row.get(r["phase"], 0) + 1
    return table


def run_cases(tmp: Path) -> dict:
    from client.pipeline.screen import ScreenConfig, screen_scan
    from client.pipeline.segmenters import MaskFolderSegmenter

    cases = _cases(tmp)
    out: dict = {}
    for kind in ("reference_all", "reference_ls", "model"):
        if kind == "model":
            seg = _ModelSegmenter()
            if seg.seg is None:
                continue
        else:
            folder, label_map = _masks(tmp, cases, kind)
            seg = MaskFolderSegmenter(folder, label_map)
        rows = []
        for case, truth, path in cases:
            r = screen_scan(path, seg, ScreenConfig()).row
            rows.append({
                "case": case, "truth": truth, "phase": r.get("phase"),
                "source": r.get("phase_source"), "basis": r.get("phase_basis"),
                "criterion": r.get("criterion"), "grade": r["grade"], "ratio": r.get("ratio"),
                "liver_hu": r.get("liver_hu"), "pv_assessment": r.get("pv_assessment"),
                "pdff_estimate_pct": r.get("pdff_estimate_pct"), "flags": r.get("flags"),
                "error": r.get("error"),
                **{k: r.get(k) for k in ("aorta_hu", "portal_vein_hu", "ivc_hu",
                                         "kidney_cortex_hu", "kidney_medulla_hu")},
            })  # fmt: skip
        phase_rows = [x for x in rows if not x["case"].startswith("steatosis")]
        steat = [x for x in rows if x["case"].startswith("steatosis")]
        out[kind] = {
            "rows": rows,
            "confusion": {
                src: confusion([x for x in phase_rows if x["case"].startswith(src)])
                for src in ("nifti", "dicom_untagged", "dicom_tagged")
            },
            "phase_right": sum(x["phase"] == x["truth"] for x in phase_rows),
            "n_phase_cases": len(phase_rows),
            "ratio_graded_while_enhanced": sum(
                x["truth"] != "unenhanced"
                and x["criterion"] == "liver_spleen_ratio"
                and x["grade"] != "indeterminate"
                for x in phase_rows
            ),  # fmt: skip
            "steatosis_graded": sum(x["grade"] != "indeterminate" for x in steat),
            "n_steatosis": len(steat),
        }
    return out


def cost(repeats: int = 5) -> dict:
    """CPU seconds of assess with and without the phase structures (same run)."""
    from scipy import ndimage as ndi

    from client.core import contract
    from client.reading.io import read_label_map, read_scan
    from postprocess import assess

    ct = read_scan(DATA / "ct.nii.gz")
    lab = read_label_map(DATA / "labels_all.nii.gz", ct, "totalsegmentator")
    classes = dict(contract.STRUCTURE_LABELS)
    zoom = (3.0, 4.0, 4.0)  # 3 mm -> 1 x 0.75 x 0.75 mm
    big = ndi.zoom(ct.array.astype(np.int16), zoom, order=1)
    big_lab = ndi.zoom(lab, zoom, order=0)
    sp_big = tuple(s / z for s, z in zip(ct.spacing, zoom))
    volumes = {
        "real_ct_3mm": (ct.array, lab, ct.spacing),
        "clinical_grid_0.75x0.75x1mm": (big, big_lab, sp_big),
    }
    res = {}
    for name, (hu, labels, sp) in volumes.items():
        t = {"without": [], "with": []}
        for _ in range(repeats):  # round robin: the same load on both
            for mode in ("without", "with"):
                t0 = time.process_time()
                assess(hu, labels, sp, direction=ct.direction,
                       classes=classes if mode == "with" else None)  # fmt: skip
                t[mode].append(time.process_time() - t0)
        med = {k: float(np.median(v)) for k, v in t.items()}
        res[name] = {
            "shape": list(hu.shape),
            "assess_cpu_s_without_phase": round(med["without"], 4),
            "assess_cpu_s_with_phase": round(med["with"], 4),
            "phase_share_of_measure": round((med["with"] - med["without"]) / med["with"], 4),
        }
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "phase.json"))
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    import onnxruntime
    import scipy

    with tempfile.TemporaryDirectory() as tmp:
        cases = run_cases(Path(tmp))
    res = {
        "machine": machine_info(
            numpy=np.__version__, scipy=scipy.__version__, onnxruntime=onnxruntime.__version__
        ),  # fmt: skip
        "cases": cases,
        "cost": cost(args.repeats),
    }
    out = Path(args.out)
    save_result(res, out.parent, out.name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
