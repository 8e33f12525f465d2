"""Model preprocessing and its exact inverse; shared by training and serving.

MedicalSeg trained the VNet on volumes HU-windowed to [-100, 300] -> 0..255 and
resampled linearly to the model size; the network input is then the volume
divided by its own maximum (done inside the exported graph, mirrored here by
:func:`normalise_network_input`). We add one step in front: the volume is turned
into a canonical orientation (array axes along +z, +y, +x of ITK's LPS frame) so
the model always sees the same anatomy whatever the file's direction cosines.
The :class:`PreprocessRecord` undoes every step; :func:`to_scan_grid` maps a
label map at model size back to the scan's own grid (nearest neighbour).

Coordinate mapping for both resamplings is "align corners" (voxel centres of
the first and last voxel coincide), as ``scipy.ndimage.zoom(order=1)`` does.
Arrays may be NumPy or CuPy (the module is picked from the input).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .contract import HU_WINDOW
from .errors import PreprocessError


def _xp(a):
    mod = type(a).__module__
    if mod.startswith("cupy"):
        import cupy

        return cupy
    return np


@dataclass(frozen=True)
class PreprocessRecord:
    """Everything needed to map a model-size label map back to the scan grid.

    Attributes
    ----------
    scan_shape : tuple of int
        Shape ``[z, y, x]`` of the scan array as read.
    axes : tuple of int
        ``canonical = scan.transpose(axes)`` (before flips).
    flips : tuple of bool
        Canonical axes that were reversed after the transpose.
    canonical_shape : tuple of int
        Shape after transpose.
    canonical_spacing : tuple of float
        Spacing (mm) of the canonical array, same order as its axes.
    model_shape : tuple of int
        Spatial shape of the model tensor ``[z, y, x]``.
    """

    scan_shape: tuple[int, int, int]
    axes: tuple[int, int, int]
    flips: tuple[bool, bool, bool]
    canonical_shape: tuple[int, int, int]
    canonical_spacing: tuple[float, float, float]
    model_shape: tuple[int, int, int]


def canonical_axes(direction) -> tuple[tuple[int, int, int], tuple[bool, bool, bool]]:
    """Transpose and flips that bring an array into the canonical orientation.

    Parameters
    ----------
    direction : array_like, 3 x 3
        ITK direction matrix (columns are the index axes i, j, k = array axes 2, 1, 0).

    Returns
    -------
    axes, flips
        ``np.flip(arr.transpose(axes), [a for a in range(3) if flips[a]])`` has its
        axes 0, 1, 2 running along physical +z, +y, +x (nearest physical axis for
        oblique scans).
    """
    d = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    axes = [0, 0, 0]
    flips = [False, False, False]
    used = set()
    # Assign the most clearly aligned index axes first so oblique matrices stay a permutation.
    order = sorted(range(3), key=lambda c: -np.max(np.abs(d[:, c])))
    for c in order:
        ranked = np.argsort(-np.abs(d[:, c]))
        p = next(int(p) for p in ranked if int(p) not in used)
        used.add(p)
        new_axis = 2 - p  # physical x -> array axis 2, z -> axis 0
        old_axis = 2 - c
        axes[new_axis] = old_axis
        flips[new_axis] = bool(d[p, c] < 0)
    return tuple(axes), tuple(flips)


def window_hu(hu, window: tuple[float, float] = HU_WINDOW):
    """Map HU linearly from ``window`` to 0..255 (float32, clipped outside)."""
    xp = _xp(hu)
    lo, hi = window
    out = (hu.astype(xp.float32) - xp.float32(lo)) * xp.float32(255.0 / (hi - lo))
    return xp.clip(out, 0.0, 255.0)


def _align_corner_coords(n_in: int, n_out: int):
    if n_out == 1 or n_in == 1:
        return np.zeros(n_out, dtype=np.float64)
    return np.arange(n_out, dtype=np.float64) * ((n_in - 1) / (n_out - 1))


def resize_linear(vol, out_shape, pointwise=None):
    """Separable linear resampling (align corners) of a 3D array to ``out_shape``.

    Equals ``scipy.ndimage.zoom(vol, out/in, order=1)`` to float rounding. Only the
    voxels that some output sample interpolates from are read: they are gathered
    first (at most ``2 * out`` per axis), ``pointwise`` (e.g. :func:`window_hu`) is
    applied to them only, then one pass per axis (largest reduction first). For a
    512 x 512 x 200 scan to 64^3 that touches 2 M of 52 M voxels.
    """
    xp = _xp(vol)
    plans = []
    for ax in range(3):
        n_in, n_out = vol.shape[ax], int(out_shape[ax])
        c = _align_corner_coords(n_in, n_out)
        lo = np.clip(np.floor(c).astype(np.int64), 0, n_in - 1)
        hi = np.clip(lo + 1, 0, n_in - 1)
        needed = np.unique(np.concatenate([lo, hi])) if n_in != n_out else np.arange(n_in)
        plans.append((n_in, n_out, lo, hi, (c - lo).astype(np.float32), needed))
    sub = vol[xp.ix_(*(xp.asarray(p[5]) for p in plans))]
    if pointwise is not None:
        sub = pointwise(sub)
    out = sub.astype(xp.float32, copy=False)
    order = sorted(range(3), key=lambda a: out_shape[a] / max(vol.shape[a], 1))
    for ax in order:
        n_in, n_out, lo, hi, w, needed = plans[ax]
        if n_in == n_out:
            continue
        shape = [1, 1, 1]
        shape[ax] = n_out
        w = xp.asarray(w).reshape(shape)
        a = xp.take(out, xp.asarray(np.searchsorted(needed, lo)), axis=ax)
        b = xp.take(out, xp.asarray(np.searchsorted(needed, hi)), axis=ax)
        out = a * (1.0 - w) + b * w
    return out


def resize_nearest(vol, out_shape):
    """Nearest-neighbour resampling with the same align-corners mapping as :func:`resize_linear`."""
    xp = _xp(vol)
    idx = [
        xp.asarray(np.rint(_align_corner_coords(n_in, int(n_out))).astype(np.int64))
        for n_in, n_out in zip(vol.shape, out_shape)
    ]
    return vol[xp.ix_(*idx)]


def preprocess(hu, spacing, direction, model_shape):
    """Turn a CT volume into the model's uint8 input and a record that inverts it.

    Parameters
    ----------
    hu : ndarray, [z, y, x]
        HU values on the scan's own grid (NumPy or CuPy).
    spacing : sequence of 3 floats
        Voxel size in mm, ``(z, y, x)``.
    direction : array_like, 3 x 3
        ITK direction matrix of the scan.
    model_shape : sequence of 3 ints
        Spatial size of the served model's input ``[z, y, x]``.

    Returns
    -------
    tensor : ndarray, uint8, ``[1, *model_shape]``
        Channel-first input volume; stack along a new axis 0 for a batch.
    record : PreprocessRecord

    Raises
    ------
    PreprocessError
        If the volume is not 3D or the model shape is not three positive ints.
    """
    xp = _xp(hu)
    if hu.ndim != 3:
        raise PreprocessError(
            f"expected a 3D volume [z, y, x], got {hu.ndim}D of shape {tuple(hu.shape)}"
        )
    model_shape = tuple(int(n) for n in model_shape)
    if len(model_shape) != 3 or min(model_shape) < 1:
        raise PreprocessError(f"expected a model shape of three positive ints, got {model_shape}")
    axes, flips = canonical_axes(direction)
    canon = xp.transpose(hu, axes)
    flip_axes = tuple(a for a in range(3) if flips[a])
    if flip_axes:
        canon = xp.flip(canon, flip_axes)
    spacing_c = tuple(float(spacing[a]) for a in axes)
    vol = resize_linear(canon, model_shape, pointwise=window_hu)
    tensor = xp.rint(vol).astype(xp.uint8)[None]
    record = PreprocessRecord(
        scan_shape=tuple(int(n) for n in hu.shape),
        axes=axes,
        flips=flips,
        canonical_shape=tuple(int(n) for n in canon.shape),
        canonical_spacing=spacing_c,
        model_shape=model_shape,
    )
    return tensor, record


def preprocess_scan(scan, model_shape):
    """:func:`preprocess` applied to a :class:`client.scan.ScanVolume`."""
    return preprocess(scan.array, scan.spacing, scan.direction, model_shape)


def to_scan_grid(labels, record: PreprocessRecord):
    """Map a label map at model size back onto the scan's own grid (nearest neighbour).

    Parameters
    ----------
    labels : ndarray, ``record.model_shape`` (a leading axis of length 1 is accepted)
    record : PreprocessRecord

    Returns
    -------
    ndarray with ``record.scan_shape``, same dtype as ``labels``.
    """
    xp = _xp(labels)
    if labels.ndim == 4 and labels.shape[0] == 1:
        labels = labels[0]
    if tuple(labels.shape) != tuple(record.model_shape):
        raise PreprocessError(
            f"expected a label map of model shape {record.model_shape}, got {tuple(labels.shape)}"
        )
    out = xp.zeros(record.scan_shape, dtype=labels.dtype)
    # ``out`` seen in the canonical orientation (a view: writes land on the scan grid).
    canon = xp.transpose(out, record.axes)
    flip_axes = tuple(a for a in range(3) if record.flips[a])
    if flip_axes:
        canon = xp.flip(canon, flip_axes)
    # Only the labelled box is resampled; everything else is background (0). The
    # nearest-neighbour source index is non-decreasing along each axis, so the output
    # voxels whose source lies in the box form one contiguous range per axis.
    box = _nonzero_box(labels)
    if box is None:
        return out
    idx, sel = [], []
    for (lo, hi), n_in, n_out in zip(box, labels.shape, record.canonical_shape):
        src = np.rint(_align_corner_coords(n_in, int(n_out))).astype(np.int64)
        a, b = int(np.searchsorted(src, lo, "left")), int(np.searchsorted(src, hi, "left"))
        idx.append(xp.asarray(src[a:b]))
        sel.append(slice(a, b))
    canon[tuple(sel)] = labels[xp.ix_(*idx)]
    return out


def _nonzero_box(labels):
    """``[(lo, hi)] * 3`` half-open index ranges of the nonzero voxels; None when all zero."""
    xp = _xp(labels)
    nz = labels != 0
    box = []
    for ax in range(3):
        other = tuple(a for a in range(3) if a != ax)
        hit = np.flatnonzero(_to_numpy(xp.any(nz, axis=other)))
        if hit.size == 0:
            return None
        box.append((int(hit[0]), int(hit[-1]) + 1))
    return box


def _to_numpy(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)


def normalise_network_input(tensor):
    """The network's own input normalisation: float32 volume divided by its maximum.

    Mirrors what the exported graph does to the uint8 input (per volume; an all-zero
    volume stays zero). ``tensor`` is ``[..., z, y, x]`` with one volume per leading index.
    """
    xp = _xp(tensor)
    x = tensor.astype(xp.float32)
    spatial = tuple(range(x.ndim - 3, x.ndim))
    m = xp.max(x, axis=spatial, keepdims=True)
    return x / xp.maximum(m, 1.0)


def labels_to_model(labels, direction, model_shape):
    """Bring a label map on the scan grid to model size the way :func:`preprocess` moves the image.

    Same canonical reorientation, then nearest-neighbour resampling (used for training targets).
    """
    xp = _xp(labels)
    axes, flips = canonical_axes(direction)
    canon = xp.transpose(labels, axes)
    flip_axes = tuple(a for a in range(3) if flips[a])
    if flip_axes:
        canon = xp.flip(canon, flip_axes)
    return xp.ascontiguousarray(resize_nearest(canon, tuple(int(n) for n in model_shape)))
