"""Scores shared by the trainers and the evaluations (NumPy only, imports no training module)."""

from __future__ import annotations

import numpy as np


def dice_per_class(pred: np.ndarray, target: np.ndarray, classes=(1, 2)) -> list[float]:
    """Dice of each class over a whole batch (NaN when absent in both)."""
    out = []
    for c in classes:
        p, t = pred == c, target == c
        denom = p.sum() + t.sum()
        out.append(float(2.0 * (p & t).sum() / denom) if denom else float("nan"))
    return out
