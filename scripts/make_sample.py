"""Build a sample archive folder to screen: the real CT from ../shared/data plus phantoms.

``python scripts/make_sample.py OUT_DIR [--n-phantoms 4] [--shape 120 256 256] [--broken]
[--no-phase-study]``

Writes ``OUT_DIR/real/totalseg_ct.nii.gz`` (a copy of the real CT), phantoms at
several grades as NIfTI (``phantoms/grade_<grade>_<seed>.nii.gz``) and every
second one as a DICOM series without file extensions
(``dicom/grade_<grade>_<seed>/``), and ``truth.json`` with each phantom's true
ratio and grade (and, with ``--masks``, its true label map under ``truth_masks/``).
``--broken`` adds a truncated NIfTI and a non-image file with an image extension,
to show error rows.

Unless ``--no-phase-study``, it also writes ``OUT_DIR/multiphase_study/``: the real CT as
ONE DICOM study (one StudyInstanceUID) with four series folders, ``01_unenhanced`` (the
real CT), ``02_arterial``, ``03_portal_venous``, ``04_delayed`` (painted from published
phase attenuation by :mod:`training.phase_paint`), WITHOUT contrast tags and with neutral
series descriptions (the harder case: the phase must come from the image), and
``OUT_DIR_phase_truth.json`` with each series' true phase. (``build()`` writes it only
with ``phase_study=True``.)
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GRADES = ("normal", "mild", "moderate", "severe")


def build(
    out: Path,
    n_phantoms: int,
    shape,
    broken: bool,
    masks: bool,
    real: Path | None,
    seed0: int = 11,
    phase_study: bool = False,
):
    import SimpleITK as sitk

    from client.reading.dicom import write_series
    from training.phantoms import make_phantom

    out.mkdir(parents=True, exist_ok=True)
    truth = {}
    if real is not None and real.exists():
        (out / "real").mkdir(exist_ok=True)
        shutil.copyfile(real, out / "real" / "totalseg_ct.nii.gz")
    for i in range(n_phantoms):
        grade = GRADES[i % len(GRADES)]
        seed = seed0 + i
        p = make_phantom(seed, shape=tuple(shape), grade=grade)
        scan = p.to_scan()
        name = f"grade_{grade}_{seed}"
        if i % 2 == 0:
            case_id = f"phantoms__{name}"
            path = out / "phantoms" / f"{name}.nii.gz"
            path.parent.mkdir(exist_ok=True)
            sitk.WriteImage(scan.to_sitk(), str(path), useCompression=True)
        else:
            case_id = f"dicom__{name}"
            write_series(scan, out / "dicom" / name, shuffle_seed=seed)
        truth[case_id] = {"ratio": float(p.truth["ratio"]), "grade": p.truth["grade"], "seed": seed}
        if masks:
            mpath = out.parent / f"{out.name}_truth_masks" / f"{case_id}.nii.gz"
            mpath.parent.mkdir(exist_ok=True)
            sitk.WriteImage(
                scan.to_sitk(p.labels.astype(np.uint8)), str(mpath), useCompression=True
            )
    if broken:
        (out / "broken").mkdir(exist_ok=True)
        src = (out / "phantoms").glob("*.nii.gz")
        first = next(iter(sorted(src)), None)
        if first is not None:
            data = first.read_bytes()
            (out / "broken" / "truncated.nii.gz").write_bytes(data[: len(data) // 2])
        (out / "broken" / "not_an_image.nii.gz").write_bytes(b"this is a text file, not a scan\n")
    (out.parent / f"{out.name}_truth.json").write_text(json.dumps(truth, indent=2))
    if phase_study and real is not None and real.exists():
        write_multiphase(out, real.parent)
    return truth


def write_multiphase(out: Path, data_dir: Path) -> dict:
    """The untagged multi-phase sample study under ``out/multiphase_study`` (DICOM only)."""
    from training.phase_paint import write_phase_study

    study = write_phase_study(
        out / "multiphase_study", tags=False, nifti=False, dicom_subdir="", data_dir=data_dir
    )
    phases = {
        f"multiphase_study__{folder.name}": {
            "phase": phase,
            "study_uid": study.study_uid,
            "series_uid": study.series_uids[phase],
            "contrast_tags": False,
        }
        for phase, folder in study.dicom_dirs.items()
    }
    (out.parent / f"{out.name}_phase_truth.json").write_text(json.dumps(phases, indent=2))
    return phases


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--n-phantoms", type=int, default=4)
    ap.add_argument("--shape", type=int, nargs=3, default=(100, 256, 256), metavar=("Z", "Y", "X"))
    ap.add_argument("--broken", action="store_true")
    ap.add_argument("--masks", action="store_true", help="also write the phantoms' true label maps")
    ap.add_argument(
        "--phase-study",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="add the untagged multi-phase DICOM study of the real CT (default: yes)",
    )
    ap.add_argument(
        "--real",
        type=Path,
        default=ROOT.parent / "shared" / "data" / "totalseg_example" / "ct.nii.gz",
    )
    args = ap.parse_args(argv)
    truth = build(
        args.out,
        args.n_phantoms,
        args.shape,
        args.broken,
        args.masks,
        args.real,
        phase_study=args.phase_study,
    )
    extra = " + 4-series multi-phase study" if args.phase_study and args.real.exists() else ""
    print(f"sample archive in {args.out} ({len(truth)} phantoms + real CT{extra})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
