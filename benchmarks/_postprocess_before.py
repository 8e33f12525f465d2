"""The measurement core as it was before issue 23, for same-run comparisons.

``with before(): assess(...)`` runs ``postprocess.assess`` with the implementations that
issue 23 replaced (SciPy labelling instead of cc3d, minimum filters for the valid cube
corners, the plain ``any`` for bounding boxes, the three-index cube gather, the
``isnan(hu).any()`` check): the baseline against which ``bench_postprocess.py``
measures the speed-up over today's code and checks that every result is identical.
Everything else (the gate, contrast and phase evidence, the ratio) is the current code.
Copied from commit 685e02f~1 (postprocess/cubes.py, components.py, assess.py).
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import numpy as np


def _valid_corner_map(mask, size, box, margin):
    from postprocess._xp import get_xp
    from postprocess.components import bounding_box

    xp, ndi = get_xp(mask)
    box = bounding_box(mask) if box is None else box
    if box is None:
        return None, None
    margin = tuple(int(m) for m in margin)
    size = tuple(int(s) + 2 * m for s, m in zip(size, margin))
    if any(b.stop - b.start < s for b, s in zip(box, size)):
        return None, None
    sub = mask[box].astype(xp.uint8)
    for ax, s in enumerate(size):
        if s > 1:
            sub = ndi.minimum_filter1d(sub, s, axis=ax, origin=-(s // 2), mode="constant", cval=0)
    sl = tuple(slice(0, sub.shape[a] - size[a] + 1) for a in range(3))
    return sub[sl] > 0, tuple(b.start + m for b, m in zip(box, margin))


def _label_26(mask):
    from postprocess._xp import get_xp

    xp, ndi = get_xp(mask)
    lab, n = ndi.label(mask, structure=xp.asarray(np.ones((3, 3, 3), dtype=bool)))
    return lab, int(n)


def _any_last_axis(mask):
    from postprocess._xp import get_xp

    xp, _ = get_xp(mask)
    return xp.any(mask, axis=2)


def _cube_stats(hu, corners, size):
    from postprocess._xp import get_xp

    xp, _ = get_xp(hu)
    if corners.shape[0] == 0:
        return xp.zeros(0), xp.zeros(0)
    grids = xp.meshgrid(*[xp.arange(int(s)) for s in size], indexing="ij")
    offs = xp.stack([g.ravel() for g in grids], axis=1)
    idx = corners[:, None, :] + offs[None, :, :]
    vals = hu[idx[..., 0], idx[..., 1], idx[..., 2]].astype(xp.float64)
    return vals.mean(axis=1), vals.std(axis=1)


def _validate(hu, labels, spacing):
    from client.core.errors import MeasurementError
    from postprocess._xp import get_xp

    if getattr(hu, "ndim", None) != 3 or getattr(labels, "ndim", None) != 3:
        raise MeasurementError(
            f"expected 3D hu and labels [z, y, x], got {getattr(hu, 'shape', None)} and "
            f"{getattr(labels, 'shape', None)}"
        )
    if tuple(hu.shape) != tuple(labels.shape):
        raise MeasurementError(
            f"hu and labels must have the same shape, got {tuple(hu.shape)} and {tuple(labels.shape)}"
        )
    try:
        sp = tuple(float(s) for s in spacing)
    except (TypeError, ValueError) as exc:
        raise MeasurementError(f"expected spacing (z, y, x) in mm, got {spacing!r}") from exc
    if len(sp) != 3 or not all(math.isfinite(s) and s > 0 for s in sp):
        raise MeasurementError(f"expected three positive finite spacings (z, y, x) mm, got {sp}")
    xp, _ = get_xp(hu)
    if xp.issubdtype(hu.dtype, xp.floating) and bool(xp.isnan(hu).any()):
        raise MeasurementError("hu contains NaN values")
    if labels.dtype.kind not in "iub":
        raise MeasurementError(f"expected an integer label map, got dtype {labels.dtype}")
    return sp


@contextmanager
def before():
    """Patch the replaced implementations in; restore today's on exit."""
    import importlib

    # Modules by name: ``postprocess.assess`` the attribute is the function.
    A = importlib.import_module("postprocess.assess")
    C = importlib.import_module("postprocess.components")
    Q = importlib.import_module("postprocess.cubes")

    saved = [
        (Q, "_valid_corner_map", _valid_corner_map),
        (Q, "cube_stats", _cube_stats),
        (A, "cube_stats", _cube_stats),
        (A, "_validate", _validate),
        (C, "label_26", _label_26),
        (C, "_any_last_axis", _any_last_axis),
        (C, "_word_aligned", lambda within, mask: within),
    ]
    old = [(m, n, getattr(m, n)) for m, n, _ in saved]
    try:
        for m, n, f in saved:
            setattr(m, n, f)
        yield
    finally:
        for m, n, f in old:
            setattr(m, n, f)
