"""Training samples through the serving preprocessing: a scan's model-input grid and one
model-size window of it (imports no other training module).

``resize`` models: the whole volume (:func:`client.reading.preprocess.preprocess_grid`).
``spacing`` models: the fixed-spacing grid (body crop, resampling, centred padding:
exactly what serving does), then one model-size window of it, as the client cuts them.
Used by :mod:`training.samples`, :mod:`training.synth` and :mod:`training.train`.
"""

from __future__ import annotations

import numpy as np

from client.core.contract import LABEL_LIVER, LABEL_SPLEEN
from client.reading.preprocess import as_spec, labels_to_grid, preprocess_grid


def scan_grid(hu, labels, spacing, direction, spec):
    """Image and labels of a scan on the model-input grid of ``spec`` (before windows).

    Returns
    -------
    grid : uint8 [z, y, x] (padded grid), labels : uint8 on the same grid
    """
    grid, rec = preprocess_grid(hu, spacing, direction, as_spec(spec))
    return grid, labels_to_grid(labels, rec)


def random_window(grid, lab, spec, rng, organ_p: float = 0.7, jitter: int = 8):
    """One model-size window of a grid (:func:`scan_grid`): with probability ``organ_p``
    centred on a random liver/spleen voxel (+- ``jitter``), otherwise anywhere
    (multi-class labels: still liver/spleen). Along an axis no longer than the model box
    the window is the padded grid itself, as in serving.

    Returns
    -------
    image : uint8 [1, z, y, x], labels : uint8 [z, y, x]
    """
    m = as_spec(spec).model_shape
    if tuple(grid.shape) == m:
        return grid[None], lab
    room = [g - n for g, n in zip(grid.shape, m)]
    organ = np.flatnonzero(((lab == LABEL_LIVER) | (lab == LABEL_SPLEEN)).ravel())
    if organ.size and rng.random() < organ_p:
        v = np.unravel_index(int(organ[rng.integers(organ.size)]), lab.shape)
        start = [int(c) - n // 2 + int(rng.integers(-jitter, jitter + 1)) for c, n in zip(v, m)]
    else:
        start = [int(rng.integers(0, r + 1)) for r in room]
    start = [min(max(0, s_), r) for s_, r in zip(start, room)]
    win = tuple(slice(a, a + n) for a, n in zip(start, m))
    return np.ascontiguousarray(grid[win])[None], np.ascontiguousarray(lab[win])


def training_window(
    hu, labels, spacing, direction, spec, rng, organ_p: float = 0.7, jitter: int = 8
):
    """One model-size training sample of a scan through the serving preprocessing:
    :func:`scan_grid`, then :func:`random_window` (``resize``: the whole volume).

    Returns
    -------
    image : uint8 [1, z, y, x], labels : uint8 [z, y, x]
    """
    grid, lab = scan_grid(hu, labels, spacing, direction, spec)
    return random_window(grid, lab, spec, rng, organ_p, jitter)
