"""Model preprocessing and its exact inverse; shared by training and serving.

MedicalSeg trained the VNet on volumes HU-windowed to [-100, 300] -> 0..255 and
resampled linearly to the model size; the network input is then the volume
divided by its own maximum (done inside the exported graph, mirrored here by
:func:`normalise_network_input`). We add one step in front: the volume is turned
into a canonical orientation (array axes along +z, +y, +x of ITK's LPS frame) so
the model always sees the same anatomy whatever the file's direction cosines.
The :class:`PreprocessRecord` undoes every step; :func:`to_scan_grid` maps a
label map at model size back to the scan's own grid (nearest neighbour).

A served model declares how its input is made (:class:`PreprocessSpec`, from the
model's ``config.pbtxt`` parameters, see ``client.core.contract.PREPROCESS_PARAM``):

- ``resize`` (MedicalSeg, the default): the whole canonical volume resized to the
  model shape; a 40 mm slab and a 1.5 m whole-body scan both fill the model box.
- ``spacing`` (as nnU-Net / TotalSegmentator): the canonical volume cropped in-plane to
  the body (a coarse threshold pass), resampled to a fixed voxel size so the model sees
  a fixed physical box, padded (centred, with air) where the scan is smaller than the
  box, and covered by overlapping model-size windows where it is larger. Each window is
  one model input (one batch item); :func:`to_scan_grid` stitches the windows' labels
  (every voxel from the window whose centre is nearest) and maps them back.

Coordinate mapping for both resamplings is "align corners" (voxel centres of
the first and last voxel coincide), as ``scipy.ndimage.zoom(order=1)`` does.
Arrays may be NumPy or CuPy (the module is picked from the input).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from client.core.contract import (
    HU_WINDOW,
    PREPROCESS_MODES,
    PREPROCESS_PARAM,
    PREPROCESS_SPACING_PARAM,
)
from client.core.errors import PreprocessError


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
    crop : tuple of (lo, hi), optional
        Canonical index box that was resampled (``spacing`` mode: the body's in-plane
        box, all slices); None = the whole canonical volume.
    grid_shape : tuple of int, optional
        Shape of the resampled crop (``resize`` mode: the model shape).
    pad : tuple of int
        Where the resampled crop starts inside the padded grid (centred when smaller
        than the model box).
    windows : tuple of start triples
        Model-size windows in the padded grid, one per batch item (``resize``: one at 0).
    mode : str
        ``"resize"`` or ``"spacing"``.
    """

    scan_shape: tuple[int, int, int]
    axes: tuple[int, int, int]
    flips: tuple[bool, bool, bool]
    canonical_shape: tuple[int, int, int]
    canonical_spacing: tuple[float, float, float]
    model_shape: tuple[int, int, int]
    crop: tuple[tuple[int, int], ...] | None = None
    grid_shape: tuple[int, int, int] | None = None
    pad: tuple[int, int, int] = (0, 0, 0)
    windows: tuple[tuple[int, int, int], ...] = ((0, 0, 0),)
    mode: str = "resize"

    @property
    def padded_shape(self) -> tuple[int, int, int]:
        """Shape of the padded grid the windows tile."""
        grid = self.grid_shape or self.model_shape
        return tuple(max(g, m) for g, m in zip(grid, self.model_shape))


@dataclass(frozen=True)
class PreprocessSpec:
    """How a served model wants its input: ``resize`` (MedicalSeg) or ``spacing``.

    Attributes
    ----------
    mode : str
        One of :data:`client.core.contract.PREPROCESS_MODES`.
    model_shape : tuple of int
        The model's input size ``[z, y, x]``.
    spacing_mm : tuple of float, optional
        ``spacing`` mode: voxel size ``(z, y, x)`` in mm the volume is resampled to.
    body_hu : float
        ``spacing`` mode: voxels above this HU count as body for the in-plane crop.
    body_margin_mm : float
        ``spacing`` mode: margin kept around the body box.
    min_overlap : int, optional
        ``spacing`` mode: minimum overlap in voxels between neighbouring windows
        (default a quarter of the smallest model side).
    inplane_slack : int, optional
        ``spacing`` mode: an in-plane body box at most this many samples wider than the
        model box is trimmed (centred) to the box instead of taking a second window
        (default a sixteenth of the smallest model side: 4 samples, 24 mm at 6 mm for
        64^3; the body box has a 10 mm margin, so at most a few mm of skin are lost).
    """

    mode: str
    model_shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float] | None = None
    body_hu: float = -500.0
    body_margin_mm: float = 10.0
    min_overlap: int | None = None
    inplane_slack: int | None = None

    def __post_init__(self):
        shape = tuple(int(n) for n in self.model_shape)
        if len(shape) != 3 or min(shape) < 1:
            raise PreprocessError(f"expected a model shape of three positive ints, got {shape}")
        object.__setattr__(self, "model_shape", shape)
        if self.mode not in PREPROCESS_MODES:
            raise PreprocessError(
                f"unknown preprocessing mode {self.mode!r}; expected one of {PREPROCESS_MODES}"
            )
        if self.mode == "spacing":
            sp = tuple(float(v) for v in (self.spacing_mm or ()))
            if len(sp) != 3 or not all(np.isfinite(sp)) or min(sp) <= 0:
                raise PreprocessError(
                    f"'spacing' preprocessing needs three positive voxel sizes in mm, got {self.spacing_mm!r}"
                )
            object.__setattr__(self, "spacing_mm", sp)
        if self.min_overlap is None:
            object.__setattr__(self, "min_overlap", min(shape) // 4)
        if self.inplane_slack is None:
            object.__setattr__(self, "inplane_slack", min(shape) // 16)
        if self.mode == "spacing":
            if not 0 <= int(self.min_overlap) < min(shape):
                raise PreprocessError(
                    f"min_overlap {self.min_overlap} must be in [0, {min(shape)})"
                )

    @classmethod
    def from_parameters(cls, parameters: dict, model_shape) -> PreprocessSpec:
        """From a model config's ``parameters`` (Triton JSON: ``{key: {"string_value": v}}``
        or a plain ``{key: v}`` mapping, e.g. ONNX metadata). No :data:`PREPROCESS_PARAM`
        means ``resize``.

        Raises
        ------
        PreprocessError
            Unknown mode, or ``spacing`` without three positive finite sizes in
            :data:`PREPROCESS_SPACING_PARAM`; the message names the parameter.
        """

        def get(key):
            v = (parameters or {}).get(key)
            return v.get("string_value") if isinstance(v, dict) else v

        mode = str(get(PREPROCESS_PARAM) or "resize").strip()
        if mode not in PREPROCESS_MODES:
            raise PreprocessError(
                f"model parameter {PREPROCESS_PARAM}: expected one of "
                f"{', '.join(PREPROCESS_MODES)}, got {mode!r}"
            )
        spacing = None
        if mode == "spacing":
            raw = get(PREPROCESS_SPACING_PARAM)
            try:
                spacing = tuple(float(v) for v in str(raw).split(","))
            except ValueError:
                spacing = None
            if (
                raw is None
                or spacing is None
                or len(spacing) != 3
                or not all(np.isfinite(spacing))
                or min(spacing) <= 0
            ):
                raise PreprocessError(
                    f"model parameter {PREPROCESS_SPACING_PARAM}: 'spacing' preprocessing needs "
                    f"three positive voxel sizes 'z,y,x' in mm, got "
                    f"{'nothing' if raw is None else repr(raw)}"
                )
        return cls(mode, tuple(model_shape), spacing)

    def parameters(self) -> dict[str, str]:
        """The model-config parameters that declare this spec."""
        out = {PREPROCESS_PARAM: self.mode}
        if self.mode == "spacing":
            out[PREPROCESS_SPACING_PARAM] = ",".join(f"{v:g}" for v in self.spacing_mm)
        return out


def as_spec(spec_or_shape) -> PreprocessSpec:
    """A :class:`PreprocessSpec`; a bare model shape means ``resize`` (MedicalSeg)."""
    if isinstance(spec_or_shape, PreprocessSpec):
        return spec_or_shape
    return PreprocessSpec("resize", tuple(int(n) for n in spec_or_shape))


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


def _canonical(vol, direction):
    """``vol`` seen in the canonical orientation (a view), with its transpose and flips."""
    xp = _xp(vol)
    axes, flips = canonical_axes(direction)
    canon = xp.transpose(vol, axes)
    flip_axes = tuple(a for a in range(3) if flips[a])
    if flip_axes:
        canon = xp.flip(canon, flip_axes)
    return canon, axes, flips


def _check_volume(hu):
    if hu.ndim != 3:
        raise PreprocessError(
            f"expected a 3D volume [z, y, x], got {hu.ndim}D of shape {tuple(hu.shape)}"
        )


def body_box(canon, spacing_c, body_hu: float = -500.0, margin_mm: float = 10.0):
    """In-plane box of the body in a canonical volume: ``[(0, nz), (y0, y1), (x0, x1)]``.

    A coarse pass (about 4 mm steps) thresholds at ``body_hu`` and keeps the largest
    connected piece (the patient; a table or a blanket separated by air is dropped),
    then the box grows by ``margin_mm``. All slices are kept. Without any body voxel the
    whole volume is returned.
    """
    from scipy import ndimage as ndi

    steps = [max(1, int(round(4.0 / max(float(s), 1e-6)))) for s in spacing_c]
    sub = _to_numpy(canon[:: steps[0], :: steps[1], :: steps[2]] > body_hu)
    full = [(0, int(n)) for n in canon.shape]
    if not sub.any():
        return full
    lab, n = ndi.label(sub)
    if n > 1:
        sizes = np.bincount(lab.ravel())
        sizes[0] = 0
        sub = lab == int(np.argmax(sizes))
    box = [full[0]]
    for ax in (1, 2):
        other = tuple(a for a in range(3) if a != ax)
        hit = np.flatnonzero(sub.any(axis=other))
        m = int(np.ceil(margin_mm / float(spacing_c[ax])))
        # The body's edge lies within one coarse step before the first hit (and before
        # the step after the last): widen by that, so the full margin is always kept.
        lo = max(0, int(hit[0]) * steps[ax] - (steps[ax] - 1) - m)
        hi = min(int(canon.shape[ax]), (int(hit[-1]) + 1) * steps[ax] + m)
        box.append((lo, hi))
    return box


def grid_shape_for(n_in, spacing_in, spacing_out) -> tuple[int, int, int]:
    """Samples per axis when ``n_in`` voxels at ``spacing_in`` are resampled to ``spacing_out``
    (align corners: the first and last voxel centres are kept)."""
    return tuple(
        max(1, int(round((int(n) - 1) * float(a) / float(b))) + 1)
        for n, a, b in zip(n_in, spacing_in, spacing_out)
    )


def window_starts(n: int, m: int, min_overlap: int) -> tuple[list[int], int, int]:
    """Windows of length ``m`` covering ``n`` samples along one axis.

    Returns ``(starts, pad, padded_length)``: a length below ``m`` is padded (centred) to
    ``m`` and gets one window; a longer one gets the fewest evenly spaced windows whose
    neighbours overlap by at least ``min_overlap``.
    """
    if n <= m:
        return [0], (m - n) // 2, m
    k = int(np.ceil((n - min_overlap) / (m - min_overlap)))
    k = max(k, 2)
    starts = [int(round(v)) for v in np.linspace(0, n - m, k)]
    return starts, 0, n


def _fit_inplane(crop, spacing_c, spec) -> tuple[tuple[int, int], ...]:
    """Trim an in-plane crop that is at most ``spec.inplane_slack`` samples wider than the
    model box back to the box (centred), so a body a little wider than the box (its
    margin, skin) needs one window, not two. The slice axis is never trimmed."""
    out = [tuple(crop[0])]
    for ax in (1, 2):
        lo, hi = crop[ax]
        m = spec.model_shape[ax]
        (n,) = grid_shape_for((hi - lo,), (spacing_c[ax],), (spec.spacing_mm[ax],))
        if m < n <= m + spec.inplane_slack:
            keep = int(np.floor((m - 1) * spec.spacing_mm[ax] / spacing_c[ax] + 1e-9)) + 1
            lo += ((hi - lo) - keep) // 2
            hi = lo + keep
        out.append((int(lo), int(hi)))
    return tuple(out)


def _owned_ranges(starts, m: int, length: int):
    """Per window, the half-open range it owns: voxels nearest to its centre."""
    bounds = [0]
    for a, b in zip(starts[:-1], starts[1:]):
        bounds.append((b + a + m) // 2)
    bounds.append(length)
    return list(zip(bounds[:-1], bounds[1:]))


def preprocess_grid(hu, spacing, direction, spec):
    """The model-input grid of a scan (before it is cut into windows) and its record.

    Parameters
    ----------
    hu : ndarray, [z, y, x]
        HU on the scan's own grid (NumPy or CuPy).
    spacing : 3 floats
        Voxel size in mm ``(z, y, x)``.
    direction : 3 x 3
        ITK direction matrix.
    spec : PreprocessSpec or 3 ints
        A bare model shape means ``resize``.

    Returns
    -------
    grid : ndarray, uint8, ``record.padded_shape``
        HU-windowed to 0..255; padding is 0 (air).
    record : PreprocessRecord
    """
    xp = _xp(hu)
    spec = as_spec(spec)
    _check_volume(hu)
    m = spec.model_shape
    canon, axes, flips = _canonical(hu, direction)
    spacing_c = tuple(float(spacing[a]) for a in axes)
    if spec.mode == "resize":
        crop = None
        region = canon
        grid_shape = m
    else:
        crop = _fit_inplane(
            body_box(canon, spacing_c, spec.body_hu, spec.body_margin_mm), spacing_c, spec
        )
        region = canon[tuple(slice(lo, hi) for lo, hi in crop)]
        grid_shape = grid_shape_for(region.shape, spacing_c, spec.spacing_mm)
    vol = xp.rint(resize_linear(region, grid_shape, pointwise=window_hu)).astype(xp.uint8)
    plans = [window_starts(g, mm, spec.min_overlap) for g, mm in zip(grid_shape, m)]
    pad = tuple(p[1] for p in plans)
    padded = tuple(p[2] for p in plans)
    if padded != tuple(grid_shape):
        grid = xp.zeros(padded, dtype=xp.uint8)
        grid[tuple(slice(p, p + g) for p, g in zip(pad, grid_shape))] = vol
    else:
        grid = vol
    windows = tuple((a, b, c) for a in plans[0][0] for b in plans[1][0] for c in plans[2][0])
    record = PreprocessRecord(
        scan_shape=tuple(int(n) for n in hu.shape),
        axes=axes,
        flips=flips,
        canonical_shape=tuple(int(n) for n in canon.shape),
        canonical_spacing=spacing_c,
        model_shape=m,
        crop=crop,
        grid_shape=tuple(int(n) for n in grid_shape),
        pad=pad,
        windows=windows,
        mode=spec.mode,
    )
    return grid, record


def window_batch(grid, record: PreprocessRecord):
    """Cut a padded grid into the record's windows: ``[n_windows, 1, *model_shape]``."""
    xp = _xp(grid)
    m = record.model_shape
    if len(record.windows) == 1 and tuple(grid.shape) == m:
        return grid[None, None]
    cuts = [grid[tuple(slice(s, s + n) for s, n in zip(w, m))] for w in record.windows]
    return xp.stack(cuts)[:, None]


def preprocess_windows(hu, spacing, direction, spec):
    """A scan as the model's uint8 input batch ``[n_windows, 1, *model_shape]`` and its record.

    ``resize`` mode gives one window (the whole volume); ``spacing`` mode one per
    model-size window of the fixed-spacing grid. :func:`to_scan_grid` inverts it.
    """
    grid, record = preprocess_grid(hu, spacing, direction, spec)
    return window_batch(grid, record), record


def preprocess(hu, spacing, direction, model_shape):
    """Turn a CT volume into the model's uint8 input (``resize`` mode) and a record that inverts it.

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
        If the volume is not 3D, the model shape is not three positive ints, or a
        ``spacing`` spec is given (it needs :func:`preprocess_windows`).

    See :func:`preprocess_windows` for any :class:`PreprocessSpec`.
    """
    _check_volume(hu)
    spec = as_spec(model_shape)
    if spec.mode != "resize":
        # A 'spacing' grid is not one model input: it would come back padded or too big.
        raise PreprocessError(
            f"preprocess() makes one whole-volume ('resize') input; got a {spec.mode!r} spec: "
            "use preprocess_windows() (or preprocess_grid() + window_batch())"
        )
    grid, record = preprocess_grid(hu, spacing, direction, spec)
    return grid[None], record


def preprocess_scan(scan, spec):
    """:func:`preprocess_windows` applied to a :class:`client.reading.scan.ScanVolume`.

    ``spec`` is a :class:`PreprocessSpec` or a model shape (``resize``); returns
    ``(batch [n_windows, 1, *model_shape], record)``.
    """
    return preprocess_windows(scan.array, scan.spacing, scan.direction, spec)


def stitch_windows(labels, record: PreprocessRecord):
    """Labels of the record's windows ``[n_windows, *model_shape]`` -> the resampled crop's grid.

    Every voxel comes from the window whose centre is nearest along each axis (windows
    overlap; their borders, where context is poorest, are not used). Padding is dropped.
    """
    xp = _xp(labels)
    m = tuple(record.model_shape)
    if labels.ndim == 3:
        labels = labels[None]
    if labels.ndim != 4 or labels.shape[0] != len(record.windows) or tuple(labels.shape[1:]) != m:
        raise PreprocessError(
            f"expected labels for {len(record.windows)} window(s) of model shape {m}, "
            f"got {tuple(labels.shape)}"
        )
    grid_shape = tuple(record.grid_shape or m)
    padded = record.padded_shape
    if len(record.windows) == 1 and padded == grid_shape:
        return labels[0]
    starts = [sorted({w[a] for w in record.windows}) for a in range(3)]
    owned = [dict(zip(s, _owned_ranges(s, n, L))) for s, n, L in zip(starts, m, padded)]
    full = xp.zeros(padded, dtype=labels.dtype)
    for k, w in enumerate(record.windows):
        rng = [owned[a][w[a]] for a in range(3)]
        dst = tuple(slice(lo, hi) for lo, hi in rng)
        src = tuple(slice(lo - s, hi - s) for (lo, hi), s in zip(rng, w))
        full[dst] = labels[k][src]
    return full[tuple(slice(p, p + g) for p, g in zip(record.pad, grid_shape))]


def _cropped_canonical_view(array, record, xp):
    """``array`` (on the scan grid) seen in the canonical orientation and cut to the
    record's body crop: a view, so writes into it land on the scan grid."""
    canon = xp.transpose(array, record.axes)
    flip_axes = tuple(a for a in range(3) if record.flips[a])
    if flip_axes:
        canon = xp.flip(canon, flip_axes)
    if record.crop is not None:
        canon = canon[tuple(slice(lo, hi) for lo, hi in record.crop)]
    return canon


def to_scan_grid(labels, record: PreprocessRecord, within=None):
    """Map model-size labels back onto the scan's own grid (nearest neighbour).

    Parameters
    ----------
    labels : ndarray, ``[n_windows, *record.model_shape]`` (one window: the leading axis
        may be omitted)
    record : PreprocessRecord
    within : ndarray, optional
        Model-size labels of the same windows: only their nonzero box is mapped back
        (0 elsewhere). For a per-voxel map that is nonzero everywhere (the model's
        confidence) but needed only inside the organs: the full-resolution map-back of
        the whole volume is skipped.

    Returns
    -------
    ndarray with ``record.scan_shape``, same dtype as ``labels``.
    """
    xp = _xp(labels)
    m = tuple(record.model_shape)
    if labels.ndim == 3 and len(record.windows) == 1 and tuple(labels.shape) != m:
        raise PreprocessError(f"expected a label map of model shape {m}, got {tuple(labels.shape)}")
    grid = stitch_windows(labels, record)
    boxed = grid if within is None else stitch_windows(within, record)
    out = xp.zeros(record.scan_shape, dtype=labels.dtype)
    # ``out`` seen in the canonical orientation (a view: writes land on the scan grid).
    canon = _cropped_canonical_view(out, record, xp)
    # Only the labelled box is resampled; everything else is background (0). The
    # nearest-neighbour source index is non-decreasing along each axis, so the output
    # voxels whose source lies in the box form one contiguous range per axis.
    box = _nonzero_box(boxed)
    if box is None:
        return out
    idx, sel = [], []
    for (lo, hi), n_in, n_out in zip(box, grid.shape, canon.shape):
        src = np.rint(_align_corner_coords(n_in, int(n_out))).astype(np.int64)
        a, b = int(np.searchsorted(src, lo, "left")), int(np.searchsorted(src, hi, "left"))
        idx.append(xp.asarray(src[a:b]))
        sel.append(slice(a, b))
    canon[tuple(sel)] = grid[xp.ix_(*idx)]
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

    Same canonical reorientation, then nearest-neighbour resampling (used for training
    targets of ``resize`` models; :func:`labels_to_grid` for any mode).
    """
    xp = _xp(labels)
    canon, _, _ = _canonical(labels, direction)
    return xp.ascontiguousarray(resize_nearest(canon, tuple(int(n) for n in model_shape)))


def labels_to_grid(labels, record: PreprocessRecord):
    """A label map on the scan grid moved the way :func:`preprocess_grid` moved the image.

    Same canonical orientation, crop, nearest-neighbour resampling to the grid and
    padding, so ``window_batch(labels_to_grid(lab, rec), rec)[:, 0]`` lines up with the
    image's windows (training targets) and :func:`to_scan_grid` of that is the round trip.
    """
    xp = _xp(labels)
    if tuple(labels.shape) != tuple(record.scan_shape):
        raise PreprocessError(
            f"label map shape {tuple(labels.shape)} does not match the scan {record.scan_shape}"
        )
    canon = _cropped_canonical_view(labels, record, xp)
    grid_shape = tuple(record.grid_shape or record.model_shape)
    small = resize_nearest(canon, grid_shape)
    padded = record.padded_shape
    if padded == grid_shape:
        return xp.ascontiguousarray(small)
    out = xp.zeros(padded, dtype=labels.dtype)
    out[tuple(slice(p, p + g) for p, g in zip(record.pad, grid_shape))] = small
    return out
