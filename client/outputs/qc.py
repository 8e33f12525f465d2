"""The quality-control picture of one scan: does the picture justify the number?

Three panels at the scan's physical aspect ratio, soft-tissue window (W400/L40):

* axial slice through the liver's largest cross-section,
* axial slice through the spleen's largest cross-section,
* coronal slice through both organs (the row where both show the most of themselves),

with the liver outlined in red and the spleen in green, the measuring cubes drawn where
they cut the slice (kept cubes yellow, cubes rejected by the SD/outlier rules blue),
orientation letters (radiological convention: the patient's right on the picture's left,
anterior up in axial views, head up in the coronal view), a legend, and a caption with
liver HU, spleen HU, the ratio with its 95 % interval, grade, flags and notes. The caption
font is Roboto from the ``font-roboto`` package (Apache-2.0), so pictures look the same
on every machine. No patient identifiers: only the case_id and measurements.
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np

from client.core import contract
from client.core.atomic import atomic_path
from client.core.contract import LABEL_LIVER, LABEL_SPLEEN
from client.reading.labels_sidecar import LABEL_COLOURS

WINDOW = (-160.0, 240.0)  # soft-tissue display window (W400 / L40)
COLOURS = {LABEL_LIVER: LABEL_COLOURS[LABEL_LIVER], LABEL_SPLEEN: LABEL_COLOURS[LABEL_SPLEEN]}
CUBE_KEPT = (255, 215, 0)
CUBE_REJECTED = (70, 150, 255)
GRADE_COLOURS = dict(contract.GRADE_RGB)  # the same colours as report.html
PANEL_HEIGHT = 360
CORONAL_MAX_HEIGHT = 540
BACKGROUND = (0, 0, 0)
TEXT = (235, 235, 235)

__all__ = ["COLOURS", "WINDOW", "caption_lines", "qc_png"]


@lru_cache(maxsize=8)
def _font(size: int, bold: bool = False):
    from PIL import ImageFont

    try:
        import font_roboto

        name = "Roboto-Bold.ttf" if bold else "Roboto-Regular.ttf"
        return ImageFont.truetype(str(Path(font_roboto.__file__).parent / "files" / name), size)
    except (ImportError, OSError):  # the package is a declared dependency; keep working anyway
        return ImageFont.load_default(size=size)


def _outline(mask: np.ndarray) -> np.ndarray:
    if not mask.any():
        return mask
    inner = mask.copy()
    inner[1:, :] &= mask[:-1, :]
    inner[:-1, :] &= mask[1:, :]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return mask & ~inner


def _num(v, nd: int) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return "n/a"
    return f"{f:.{nd}f}" if math.isfinite(f) else "n/a"


def caption_lines(row: dict | None, title: str = "") -> list[tuple[str, tuple]]:
    """Caption lines ``(text, colour)`` for a result row (the title alone without a row)."""
    if not row:
        return [(title, TEXT)] if title else []
    grade = str(row.get("grade") or "indeterminate")
    ratio = _num(row.get("ratio"), 2)
    lo, hi = _num(row.get("ratio_ci_low"), 2), _num(row.get("ratio_ci_high"), 2)
    ci = f" (95% CI {lo}-{hi})" if lo != "n/a" and hi != "n/a" else ""
    phase = row.get("phase")
    criterion = row.get("criterion")
    if criterion == "portal_venous_liver_hu":  # liver HU alone; the ratio is no grade here
        lo, hi = _num(row.get("liver_hu_ci_low"), 0), _num(row.get("liver_hu_ci_high"), 0)
        ci = f" (95% CI {lo}-{hi})" if lo != "n/a" and hi != "n/a" else ""
        verdict = (
            f"portal-venous: liver {_num(row.get('liver_hu'), 0)} HU{ci} -> "
            f"{row.get('pv_assessment') or 'n/a'} (Pickhardt 2024)"
        )
    elif criterion == "liver_spleen_ratio" or not phase:
        pdff = _num(row.get("pdff_estimate_pct"), 0)
        verdict = f"L/S ratio {ratio}{ci}   grade: {grade.upper()}" + (
            f"   PDFF~{pdff}%" if pdff != "n/a" else ""
        )
    else:
        verdict = f"{phase} phase: no steatosis criterion   grade: {grade.upper()}"
    lines = [
        (
            str(row.get("case_id", title))[:70]
            + (f"   phase: {phase} ({row.get('phase_source')})" if phase else ""),
            TEXT,
        ),
        (verdict, GRADE_COLOURS.get(grade, TEXT)),
        (
            f"liver {_num(row.get('liver_hu'), 0)} HU   spleen {_num(row.get('spleen_hu'), 0)} HU   "
            f"L-S {_num(row.get('liver_minus_spleen_hu'), 0)} HU   "
            f"volumes {_num(row.get('liver_volume_ml'), 0)} / "
            f"{_num(row.get('spleen_volume_ml'), 0)} mL",
            TEXT,
        ),
    ]
    flags = row.get("flags") or ""
    if isinstance(flags, (list, tuple)):
        flags = ";".join(flags)
    if flags:
        lines += _wrapped(f"flags: {flags.replace(';', ', ')}", (255, 200, 80))
    notes = row.get("notes") or ""
    if isinstance(notes, (list, tuple)):
        notes = ";".join(notes)
    if notes:
        lines += _wrapped(f"notes: {str(notes).replace(';', ', ')}", (200, 200, 200))
    if row.get("status") == "error" and row.get("error"):
        lines += _wrapped(f"error: {row['error']}", (255, 120, 120))
    return lines


def _wrapped(text: str, colour: tuple, width: int = 110, max_lines: int = 4) -> list:
    """Caption text wrapped (not cut) to the picture; the full text is in the row."""
    import textwrap

    parts = textwrap.wrap(text, width, subsequent_indent="  ", break_long_words=True)
    if len(parts) > max_lines:
        parts = parts[: max_lines - 1] + [parts[max_lines - 1][: width - 5] + " ..."]
    return [(p, colour) for p in parts]


def _cube_boxes(assessment, axes, flips, shape) -> list[tuple[np.ndarray, np.ndarray, bool]]:
    """Cubes as (low, high) index boxes in the canonical array, with kept/rejected."""
    if assessment is None:
        return []
    boxes = []
    for organ in (getattr(assessment, "liver", None), getattr(assessment, "spleen", None)):
        if organ is None:
            continue
        corners = np.asarray(getattr(organ, "corners", np.zeros((0, 3))), np.int64).reshape(-1, 3)
        size = np.asarray(getattr(organ, "cube_voxels", (0, 0, 0)), np.int64)
        if corners.size == 0 or size.size != 3 or not size.all():
            continue
        kept = getattr(organ, "kept", None)  # all sampled cubes + kept mask (when available)
        kept = np.ones(len(corners), bool) if kept is None else np.asarray(kept, bool)
        if kept.shape != (len(corners),):
            kept = np.ones(len(corners), bool)
        lo = corners[:, list(axes)]
        hi = lo + size[list(axes)]
        for a in range(3):
            if flips[a]:
                lo[:, a], hi[:, a] = shape[a] - hi[:, a], shape[a] - lo[:, a]
        boxes.append((lo, hi, kept))
    return boxes


def _panel(hu2d, lab2d, row_mm, col_mm, rects, height=PANEL_HEIGHT, width=None):
    """One panel: windowed grey, outlines, cube rectangles (in slice index coordinates).

    ``width`` defaults to the physical aspect ratio at ``height``.
    """
    from PIL import Image, ImageDraw

    h_mm, w_mm = hu2d.shape[0] * row_mm, hu2d.shape[1] * col_mm
    if width is None:
        width = max(1, int(round(height * w_mm / max(h_mm, 1e-6))))
    g = np.clip((hu2d.astype(np.float32) - WINDOW[0]) * (255.0 / (WINDOW[1] - WINDOW[0])), 0, 255)
    img = Image.fromarray(g.astype(np.uint8)).resize((width, height), Image.BILINEAR)
    # Outlines on the nearest-neighbour upscaled label map: crisp 1-pixel lines.
    ry = (np.arange(height) * hu2d.shape[0] // height).astype(np.intp)
    rx = (np.arange(width) * hu2d.shape[1] // width).astype(np.intp)
    big = lab2d[ry][:, rx]
    rgb = np.repeat(np.asarray(img)[..., None], 3, axis=2)
    for lab, colour in COLOURS.items():
        rgb[_outline(big == lab)] = colour
    out = Image.fromarray(rgb)
    sy, sx = height / hu2d.shape[0], width / hu2d.shape[1]
    draw = ImageDraw.Draw(out)
    for (r0, c0, r1, c1), kept in rects:
        draw.rectangle(
            (c0 * sx, r0 * sy, c1 * sx - 1, r1 * sy - 1),
            outline=CUBE_KEPT if kept else CUBE_REJECTED,
            width=1,
        )
    return out


def _rects(boxes, axis: int, index: int, rows_axis: int, cols_axis: int, flip_rows: int = 0):
    """Rectangles of the cubes that cut plane ``axis == index``, as (r0, c0, r1, c1)."""
    out = []
    for lo, hi, kept in boxes:
        hit = (lo[:, axis] <= index) & (index < hi[:, axis])
        for i in np.nonzero(hit)[0]:
            r0, r1 = lo[i, rows_axis], hi[i, rows_axis]
            if flip_rows:
                r0, r1 = flip_rows - r1, flip_rows - r0
            out.append(((r0, lo[i, cols_axis], r1, hi[i, cols_axis]), bool(kept[i])))
    # Rejected cubes last, so they stay visible over kept ones.
    return sorted(out, key=lambda t: t[1], reverse=True)


def _letters(draw, box, top, bottom, left="R", right="L"):
    x0, y0, x1, y1 = box
    f = _font(15, True)
    c = (255, 255, 255)
    k = {"stroke_width": 2, "stroke_fill": (0, 0, 0)}
    draw.text(((x0 + x1) / 2, y0 + 3), top, fill=c, font=f, anchor="mt", **k)
    draw.text(((x0 + x1) / 2, y1 - 3), bottom, fill=c, font=f, anchor="mb", **k)
    draw.text((x0 + 4, (y0 + y1) / 2), left, fill=c, font=f, anchor="lm", **k)
    draw.text((x1 - 4, (y0 + y1) / 2), right, fill=c, font=f, anchor="rm", **k)


def qc_png(
    hu: np.ndarray,
    labels: np.ndarray,
    spacing,
    path: Path,
    title: str = "",
    direction=None,
    *,
    row: dict | None = None,
    assessment=None,
) -> Path:
    """Write the QC picture of one scan (atomically) and return its path.

    Parameters
    ----------
    hu : numpy.ndarray
        HU volume ``[z, y, x]`` as stored.
    labels : numpy.ndarray
        Label map on the same grid (1 liver, 2 spleen).
    spacing : sequence of 3 floats
        Voxel size ``(z, y, x)`` in mm.
    path : Path
        The PNG to write.
    title : str
        Caption used when no ``row`` is given (kept for older callers).
    direction : array_like, optional
        ITK direction matrix; the volume is brought to the canonical LPS orientation
        (:func:`client.reading.preprocess.canonical_axes`) so that pictures follow the
        radiological convention whatever the storage order.
    row : dict, optional
        The scan's result row: liver/spleen HU, ratio and interval, grade, flags, notes
        go into the caption.
    assessment : postprocess.assess.Assessment, optional
        Its ``liver``/``spleen`` measurements give the cubes (``corners`` and
        ``cube_voxels`` in stored index order; ``kept``, when present, marks which
        sampled cubes were kept, else every cube drawn is a kept one).

    Returns
    -------
    Path
        ``path``.
    """
    stored = np.asarray(labels)
    hu, labels, spacing, axes, flips = _canonical(hu, labels, spacing, direction)
    boxes = _cube_boxes(assessment, axes, flips, labels.shape)
    panels = _panels(hu, labels, spacing, boxes, *_slices(stored, axes, flips))
    if row is not None and not row.get("case_id"):
        row = {**row, "case_id": Path(path).stem}  # the picture is named <case_id>.png
    canvas = _compose(panels, caption_lines(row, title))
    path = Path(path)
    with atomic_path(path, ".png") as tmp:
        canvas.save(tmp, format="PNG", compress_level=3)
    return path


def _canonical(hu, labels, spacing, direction):
    """``hu``, ``labels`` and ``spacing`` in the canonical LPS orientation, with the
    ``axes`` and ``flips`` that took them there (identity without a direction)."""
    from client.reading.preprocess import canonical_axes

    hu = np.asarray(hu)
    labels = np.asarray(labels)
    axes, flips = (0, 1, 2), (False, False, False)
    if direction is not None:
        axes, flips = canonical_axes(direction)
        fl = [a for a in range(3) if flips[a]]
        hu = np.flip(hu.transpose(axes), fl)
        labels = np.flip(labels.transpose(axes), fl)
        spacing = tuple(spacing[a] for a in axes)
    return hu, labels, spacing, axes, flips


def _slices(labels, axes=(0, 1, 2), flips=(False, False, False)) -> tuple[int, int, int]:
    """(axial slice of the liver's largest section, the spleen's, coronal row where both
    show the most of themselves), as indices of the canonical volume.

    ``labels`` as stored; ``axes``/``flips`` take it to the canonical orientation (see
    :func:`_canonical`). Per-organ voxel counts along the canonical z and y are counted
    in the stored array (contiguous: one fast pass for the box of all labels, zero
    outside it) and flipped where the canonical axis runs the other way."""
    from postprocess.components import bounding_box

    lbox = bounding_box(labels)
    inbox = labels[lbox] if lbox is not None else None
    nz, ny = labels.shape[axes[0]], labels.shape[axes[1]]

    def along(m, axis: int, n: int, flip: bool):
        c = np.zeros(n, np.int64)
        c[lbox[axis]] = np.count_nonzero(m, axis=tuple(a for a in range(3) if a != axis))
        return c[::-1] if flip else c

    def counts(lab):
        if inbox is None:
            return np.zeros(nz, np.int64), np.zeros(ny, np.int64)
        m = inbox == lab
        return along(m, axes[0], nz, flips[0]), along(m, axes[1], ny, flips[1])

    lz, ly = counts(LABEL_LIVER)
    spz, spy = counts(LABEL_SPLEEN)
    z_liver = int(np.argmax(lz)) if lz.any() else nz // 2
    z_spleen = int(np.argmax(spz)) if spz.any() else z_liver
    if ly.any() and spy.any():
        both = (ly > 0) & (spy > 0)
        score = np.minimum(ly / ly.max(), spy / spy.max())  # both well shown
        y_cor = int(np.argmax(np.where(both, score, -1.0))) if both.any() else int(np.argmax(score))
    elif ly.any() or spy.any():
        y_cor = int(np.argmax(ly + spy))
    else:
        y_cor = ny // 2
    return z_liver, z_spleen, y_cor


def _panels(hu, labels, spacing, boxes, z_liver: int, z_spleen: int, y_cor: int) -> list:
    """The three panels ``(image, kind, what)``: two axial slices and the coronal one."""
    sz, sy, sx = (float(s) for s in spacing)
    nz, ny, _ = labels.shape
    axial = [
        _panel(hu[z], labels[z], sy, sx, _rects(boxes, 0, z, 1, 2)) for z in (z_liver, z_spleen)
    ]
    # The coronal view at the axial views' scale (mm per pixel), so a thin slab stays a
    # thin strip and a long scan a tall one; capped at CORONAL_MAX_HEIGHT.
    w_ax = axial[0].width
    h_cor = max(1.0, nz * sz * PANEL_HEIGHT / (ny * sy))
    w_cor = float(w_ax)
    if h_cor > CORONAL_MAX_HEIGHT:
        w_cor, h_cor = w_cor * CORONAL_MAX_HEIGHT / h_cor, CORONAL_MAX_HEIGHT
    coronal = _panel(
        hu[::-1, y_cor, :],
        labels[::-1, y_cor, :],
        sz,
        sx,
        _rects(boxes, 1, y_cor, 0, 2, flip_rows=nz),
        height=max(1, int(round(h_cor))),
        width=max(1, int(round(w_cor))),
    )
    return [
        (axial[0], "axial", "liver max"),
        (axial[1], "axial", "spleen max"),
        (coronal, "coronal", "liver + spleen"),
    ]


def _compose(panels: list, lines: list):
    """The picture: panels side by side with their titles and orientation letters, the
    legend, the caption ``lines``."""
    from PIL import Image, ImageDraw

    gap, head = 6, 22
    panels_h = max(p.height for p, _, _ in panels)
    cap_h = 10 + 21 * max(len(lines), 1) + 8
    legend_h = 26
    width = sum(p.width for p, _, _ in panels) + gap * (len(panels) - 1)
    width = max(width, 760)
    canvas = Image.new("RGB", (width, head + panels_h + legend_h + cap_h), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    x = 0
    small = _font(14)
    for p, kind, what in panels:
        canvas.paste(p, (x, head))
        draw.text((x + 4, 3), f"{kind} ({what})", fill=(200, 200, 200), font=small)
        box = (x, head, x + p.width, head + p.height)
        if kind == "axial":
            _letters(draw, box, "A", "P")
        else:
            _letters(draw, box, "S", "I")
        x += p.width + gap
    _legend(draw, head + panels_h + 6, small)
    # Caption.
    y = head + panels_h + legend_h + 6
    for i, (text, colour) in enumerate(lines):
        draw.text((6, y), text, fill=colour, font=_font(17, bold=i == 1))
        y += 21
    return canvas


def _legend(draw, y: int, font) -> None:
    x = 6
    for label, colour, filled in (
        ("liver", COLOURS[LABEL_LIVER], False),
        ("spleen", COLOURS[LABEL_SPLEEN], False),
        ("cube kept", CUBE_KEPT, False),
        ("cube rejected", CUBE_REJECTED, False),
    ):
        draw.rectangle(
            (x, y + 2, x + 14, y + 14), outline=colour, width=2, fill=None if not filled else colour
        )
        draw.text((x + 20, y), label, fill=TEXT, font=font)
        x += 32 + int(draw.textlength(label, font=font))
