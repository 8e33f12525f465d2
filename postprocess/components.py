"""Connected components, organ volume and bounding boxes (NumPy or CuPy)."""

from __future__ import annotations

import numpy as np

from ._xp import get_xp

_STRUCT_26 = np.ones((3, 3, 3), dtype=bool)


def bounding_box(mask):
    """Tight bounding box of a 3D mask as a tuple of slices ``(z, y, x)``; None if empty.

    One pass over the volume (a [z, y] projection), then only the box's rows for x.
    """
    xp, _ = get_xp(mask)
    zy = xp.any(mask, axis=2)
    zs = xp.flatnonzero(xp.any(zy, axis=1))
    if zs.size == 0:
        return None
    ys = xp.flatnonzero(xp.any(zy, axis=0))
    z0, z1, y0, y1 = int(zs[0]), int(zs[-1]) + 1, int(ys[0]), int(ys[-1]) + 1
    xs = xp.flatnonzero(xp.any(mask[z0:z1, y0:y1], axis=(0, 1)))
    return (slice(z0, z1), slice(y0, y1), slice(int(xs[0]), int(xs[-1]) + 1))


def largest_connected_component(mask):
    """Largest 26-connected component of a boolean mask (same shape; empty stays empty).

    Labels only the mask's bounding box, so cost follows the organ, not the scan.
    Ties go to the component with the lowest label (first in raster order).
    """
    return largest_component_and_box(mask)[0]


def _offset_box(outer, inner):
    return tuple(slice(o.start + i.start, o.start + i.stop) for o, i in zip(outer, inner))


def largest_component_and_box(mask, within=None):
    """``(largest 26-connected component, its bounding box or None)`` in one pass.

    ``within`` (a tuple of slices known to contain every True voxel of ``mask``, e.g.
    the bounding box of all labels) limits the search for the mask's box to it.
    """
    xp, ndi = get_xp(mask)
    mask = mask.astype(bool, copy=False)
    out = xp.zeros(mask.shape, dtype=bool)
    if within is None:
        box = bounding_box(mask)
    else:
        inner = bounding_box(mask[within])
        box = None if inner is None else _offset_box(within, inner)
    if box is None:
        return out, None
    sub = mask[box]
    lab, n = ndi.label(sub, structure=xp.asarray(_STRUCT_26))
    n = int(n)
    if n <= 1:
        out[box] = sub
        return out, box
    counts = xp.bincount(lab.ravel(), minlength=n + 1)
    counts[0] = 0
    piece = lab == int(xp.argmax(counts))
    out[box] = piece
    return out, _offset_box(box, bounding_box(piece))


def keep_largest(labels, label_values):
    """Copy of a label map keeping only the largest 26-connected piece of each label."""
    xp, _ = get_xp(labels)
    out = xp.zeros_like(labels)
    for v in label_values:
        out[largest_connected_component(labels == v)] = v
    return out


def organ_volume_ml(mask, spacing) -> float:
    """Volume of a mask in millilitres (spacing in mm, any axis order)."""
    xp, _ = get_xp(mask)
    return float(xp.count_nonzero(mask)) * float(np.prod(spacing)) / 1000.0


def touches_edge(mask) -> bool:
    """True when the mask has a voxel on any face of the volume."""
    for ax in range(mask.ndim):
        first = [slice(None)] * mask.ndim
        last = [slice(None)] * mask.ndim
        first[ax] = 0
        last[ax] = -1
        if bool(mask[tuple(first)].any()) or bool(mask[tuple(last)].any()):
            return True
    return False
