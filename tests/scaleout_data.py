"""Small archives and reference runs shared by tests/test_scaleout.py and tests/test_ray.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

# Columns that differ between two runs of the same scans by design.
RUN_LEVEL = {"run_id", "finished_at", "attempt"}


def make_archive(base: Path, shared_data: Path, n: int = 5) -> tuple[Path, Path]:
    """``n`` variants of the real 30-slice CT crop (liver shifted by -6 HU per case, so
    every case has its own ratio) in ``base/scans`` and their label maps in ``base/masks``."""
    import SimpleITK as sitk

    d = shared_data / "totalseg_example"
    ct = sitk.ReadImage(str(d / "ct_small.nii.gz"))
    lab = sitk.ReadImage(str(d / "labels_small.nii.gz"))
    arr, labels = sitk.GetArrayFromImage(ct), sitk.GetArrayFromImage(lab)
    scans, masks = base / "scans", base / "masks"
    scans.mkdir(parents=True)
    masks.mkdir(parents=True)
    for i in range(n):
        a = arr.astype(np.int16)
        a[labels == 1] -= 6 * i
        img = sitk.GetImageFromArray(a)
        img.CopyInformation(ct)
        sitk.WriteImage(img, str(scans / f"case{i}.nii.gz"))
        sitk.WriteImage(lab, str(masks / f"case{i}.nii.gz"))
    return scans, masks


def rows(out: Path) -> list[dict]:
    """results.jsonl rows of ``out`` in file order."""
    return [
        json.loads(x)
        for x in (Path(out) / "results.jsonl").read_text(encoding="utf-8").splitlines()
    ]


def comparable(out: Path) -> dict[str, dict]:
    """case_id -> row without run-level columns and timings (equal across equivalent runs)."""
    keep = {}
    for r in rows(out):
        keep[r["case_id"]] = {
            k: v for k, v in r.items() if k not in RUN_LEVEL and not k.startswith("seconds")
        }
    return keep
