"""Quality-control pictures and the HTML report of a batch run.

``qc_png`` draws, for one scan, an axial slice through the liver's centre and a
coronal slice through it, soft-tissue window, liver outlined in red and spleen
in green, at the scan's physical aspect ratio (so a mask shifted or flipped
against its scan is obvious at a glance). ``write_report`` renders
``report.html`` from the result rows: grade counts and one table row per scan
with its QC picture. Neither contains patient identifiers: only case_ids and
measurements.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from ._atomic import atomic_path
from .contract import LABEL_LIVER, LABEL_SPLEEN

WINDOW = (-160.0, 240.0)  # soft-tissue display window (W400 / L40)
COLOURS = {LABEL_LIVER: (230, 60, 50), LABEL_SPLEEN: (40, 200, 80)}


def _outline(mask: np.ndarray) -> np.ndarray:
    if not mask.any():
        return mask
    inner = mask.copy()
    inner[1:, :] &= mask[:-1, :]
    inner[:-1, :] &= mask[1:, :]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return mask & ~inner


def _panel(hu2d: np.ndarray, lab2d: np.ndarray, row_mm: float, col_mm: float, height: int = 320):
    from PIL import Image

    g = np.clip((hu2d.astype(np.float32) - WINDOW[0]) / (WINDOW[1] - WINDOW[0]), 0, 1)
    rgb = np.repeat((g * 255).astype(np.uint8)[..., None], 3, axis=2)
    for lab, colour in COLOURS.items():
        rgb[_outline(lab2d == lab)] = colour
    h_mm, w_mm = hu2d.shape[0] * row_mm, hu2d.shape[1] * col_mm
    width = max(1, int(round(height * w_mm / max(h_mm, 1e-6))))
    return Image.fromarray(rgb).resize((width, height), Image.NEAREST)


def qc_png(
    hu: np.ndarray, labels: np.ndarray, spacing, path: Path, title: str = "", direction=None
) -> Path:
    """Write the QC picture of one scan (atomically) and return its path.

    The volume is first brought to the canonical LPS orientation
    (:func:`client.preprocess.canonical_axes`), so pictures follow the radiological
    convention whatever the storage order: anterior up and the patient's right on
    the picture's left in the axial view, head up in the coronal view.
    """
    from PIL import Image, ImageDraw

    from .preprocess import canonical_axes

    hu = np.asarray(hu)
    labels = np.asarray(labels)
    if direction is not None:
        axes, flips = canonical_axes(direction)
        fl = [a for a in range(3) if flips[a]]
        hu = np.flip(hu.transpose(axes), fl)
        labels = np.flip(labels.transpose(axes), fl)
        spacing = tuple(spacing[a] for a in axes)
    organ = labels == LABEL_LIVER
    if not organ.any():
        organ = labels > 0
    if organ.any():
        zz, yy, _ = np.nonzero(organ)
        cz, cy = int(np.median(zz)), int(np.median(yy))
    else:
        cz, cy = hu.shape[0] // 2, hu.shape[1] // 2
    sz, sy, sx = (float(s) for s in spacing)
    axial = _panel(hu[cz], labels[cz], sy, sx)
    coronal = _panel(hu[::-1, cy, :], labels[::-1, cy, :], sz, sx)
    pad = 24
    canvas = Image.new("RGB", (axial.width + coronal.width + 8, axial.height + pad), (0, 0, 0))
    canvas.paste(axial, (0, pad))
    canvas.paste(coronal, (axial.width + 8, pad))
    ImageDraw.Draw(canvas).text((4, 5), title[:160], fill=(255, 255, 255))
    path = Path(path)
    with atomic_path(path, ".png") as tmp:
        canvas.save(tmp, format="PNG")
    return path


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return ""
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def write_report(rows: list[dict], out_dir: Path, run_info: dict | None = None) -> Path:
    """Render ``report.html`` in ``out_dir`` from result rows (last row per case_id)."""
    out_dir = Path(out_dir)
    counts: dict[str, int] = {}
    for r in rows:
        key = r.get("grade") or r.get("status") or "error"
        if r.get("status") == "error":
            key = "error"
        counts[key] = counts.get(key, 0) + 1
    cols = (
        "case_id",
        "status",
        "grade",
        "ratio",
        "ratio_ci_low",
        "ratio_ci_high",
        "liver_hu",
        "spleen_hu",
        "liver_volume_ml",
        "spleen_volume_ml",
        "flags",
        "error",
    )
    head = "".join(f"<th>{c}</th>" for c in (*cols, "qc"))
    body = []
    for r in rows:
        cells = "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in cols)
        qc = out_dir / "qc" / f"{r['case_id']}.png"
        img = (
            f'<a href="qc/{html.escape(qc.name)}"><img src="qc/{html.escape(qc.name)}" height="90"></a>'
            if qc.exists()
            else ""
        )
        body.append(
            f'<tr class="{html.escape(str(r.get("status", "")))}">{cells}<td>{img}</td></tr>'
        )
    summary = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
    info = ""
    if run_info:
        t = run_info.get("timings", {})
        info = (
            f"<p>Model: {html.escape(str(run_info.get('model', {}).get('name', '')))} "
            f"({html.escape(str(run_info.get('mode', '')))}); "
            f"{t.get('scans_per_minute', '')} scans/min; wall {t.get('wall_s', '')} s</p>"
        )
    doc = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>HepaScreen report</title>
<style>body{{font-family:sans-serif;margin:1em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 6px;font-size:13px}} tr.error{{background:#fdd}}
tr.flagged{{background:#ffd}}</style></head><body>
<h1>HepaScreen liver/spleen attenuation screening</h1>
<p>{len(rows)} scans. {html.escape(summary)}</p>{info}
<p>Grades from the liver/spleen CT ratio of cube means (normal &gt; 1.0, mild 0.7-1.0,
moderate 0.5-0.7, severe &lt; 0.5). Research use only: not a diagnosis; check every
flagged scan and the QC pictures.</p>
<table><tr>{head}</tr>
{chr(10).join(body)}
</table></body></html>
"""
    path = out_dir / "report.html"
    with atomic_path(path) as tmp:
        Path(tmp).write_text(doc)
    return path
