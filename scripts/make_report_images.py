"""Make the pictures in docs/images/ that docs/report.md shows.

* ``qc_real_ct.png``: QC picture of the shared real CT with its reference masks.
* ``qc_phantom_rejected.png``: QC picture of a phantom whose liver holds bright
  vessels, so some cubes are rejected (blue).
* ``report_screenshot.png``: headless chromium screenshot of a report of real
  measurements (20 phantoms of every grade, contrast-enhanced ones, an unreadable file)
  plus the real CT.

Usage: ``python scripts/make_report_images.py`` (needs chromium for the screenshot:
``bash scripts/install_chromium.sh``).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from client.core.errors import ScreeningError  # noqa: E402
from client.outputs.qc import qc_png  # noqa: E402
from client.outputs.report import write_report  # noqa: E402
from client.reading.io import read_label_map, read_scan  # noqa: E402
from postprocess import assess  # noqa: E402
from training.phantoms import make_phantom  # noqa: E402

OUT = ROOT / "docs" / "images"


def _row(case_id, scan_like, labels, contrast=None):
    hu, spacing, direction = scan_like
    a = assess(hu, labels, spacing, contrast_hint=contrast, direction=direction)
    row = {"case_id": case_id, "source": f"{case_id}.nii.gz", **a.to_row()}
    flags = [f for f in str(row.get("flags") or "").split(";") if f]
    row["status"] = "ok" if not flags and row["grade"] != "indeterminate" else "flagged"
    row.setdefault("notes", "")
    row["error"] = ""
    return row, a


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    data = ROOT.parent / "shared" / "data" / "totalseg_example"
    ct = read_scan(data / "ct.nii.gz")
    lab = read_label_map(data / "labels.nii.gz", ct)
    row, a = _row("totalseg_example__ct", (ct.array, ct.spacing, ct.direction), lab)
    qc_png(
        ct.array,
        lab,
        ct.spacing,
        OUT / "qc_real_ct.png",
        direction=ct.direction,
        row=row,
        assessment=a,
    )

    # A phantom with bright vessels: cubes over them are rejected.
    best = None
    for seed in range(3, 12):
        p = make_phantom(seed, shape=(64, 128, 128), grade="mild", contrast=True)
        r, a = _row(
            f"phantom_{seed:02d}", (p.hu, p.spacing, p.direction), np.asarray(p.labels), True
        )
        n_rej = int(a.liver.n_rejected + a.spleen.n_rejected)
        if best is None or n_rej > best[0]:
            best = (n_rej, p, r, a)
    _, p, r, a = best
    qc_png(
        p.hu,
        np.asarray(p.labels),
        p.spacing,
        OUT / "qc_phantom_rejected.png",
        direction=p.direction,
        row=r,
        assessment=a,
    )

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        print("chromium not found: no report screenshot (bash scripts/install_chromium.sh)")
        return 0
    with tempfile.TemporaryDirectory() as d:
        out = Path(d)
        rows = []
        r, a = _row("totalseg_example__ct", (ct.array, ct.spacing, ct.direction), lab)
        qc_png(
            ct.array,
            lab,
            ct.spacing,
            out / "qc" / f"{r['case_id']}.png",
            direction=ct.direction,
            row=r,
            assessment=a,
        )
        rows.append(r)
        grades = ("normal", "mild", "moderate", "severe")
        for k in range(20):
            contrast = k % 9 == 4
            p = make_phantom(100 + k, shape=(48, 96, 96), grade=grades[k % 4], contrast=contrast)
            cid = f"site{k % 3}__patient {k:03d}" + ("#2" if k == 7 else "")
            r, a = _row(cid, (p.hu, p.spacing, p.direction), np.asarray(p.labels), contrast or None)
            qc_png(
                p.hu,
                np.asarray(p.labels),
                p.spacing,
                out / "qc" / f"{cid}.png",
                direction=p.direction,
                row=r,
                assessment=a,
            )
            rows.append(r)
        bad = out / "broken.nii.gz"
        bad.write_bytes(b"\x1f\x8b\x08\x00broken")
        try:
            read_scan(bad)
        except ScreeningError as exc:
            rows.append(
                {
                    "case_id": "site1__broken",
                    "source": "broken.nii.gz",
                    "status": "error",
                    "grade": "indeterminate",
                    "error": str(exc).replace(str(out) + "/", ""),
                }
            )
        path = write_report(
            rows,
            out,
            {
                "model": {"name": "hepascreen_vnet"},
                "mode": "cpu",
                "timings": {"wall_s": 12.3, "scans_per_minute": 98.0},
            },
        )
        subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                "--window-size=1280,1500",
                f"--screenshot={OUT / 'report_screenshot.png'}",
                path.as_uri(),
            ],
            check=True,
            capture_output=True,
            cwd=d,
        )
    print(f"pictures in {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
