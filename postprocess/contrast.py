"""Contrast evidence from the image alone, for scans whose metadata does not say.

The ratio criteria hold for unenhanced CT only, and archives carry enhanced scans
without a usable DICOM tag (NIfTI conversions drop it). Physiology separates the
phases (docs/gate.md, tests/test_contrast.py):

* ``attenuation``: enhanced organs are brighter than unenhanced tissue can be
  (spleen above ~80 HU; liver above ~80 HU outside rare iron or amiodarone
  overload, which are not what this screen grades either).
* ``vessels``: in unenhanced CT, blood measures about 40-45 HU (at most
  ``blood_max_hu``); with contrast (portal-venous: 130-200 HU) the vessels inside the
  liver stand out above anything unenhanced blood can measure. A fatty liver's
  parenchyma falls below the blood, so its vessels stand out too: only the tail above
  ``blood_max_hu`` plus noise counts, never the tail above the parenchyma alone.
  With contrast (portal-venous: portal and hepatic veins 130-200 HU) they form a
  bright tail of the liver's attenuation distribution. Noise is symmetric about the
  parenchyma median, so the statistic is the excess of the upper tail over the
  mirrored lower tail (voxels beyond ``max(vessel_excess_hu, 2.5 robust noise SD)``
  above the median, and above ``blood_max_hu + 2.5 noise SD``, minus those as far
  below), inside the liver eroded by one coarse
  voxel so that its border (fat, ribs, kidney) does not enter.
* ``spleen_pattern``: in the arterial phase the spleen enhances in cords
  (mottled); the spread of the spleen's cube means, corrected for what noise alone
  gives, exceeds ``spleen_spread_hu``.

Written once against ``xp`` on the gate's coarse grid (about 3 mm).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ._xp import get_xp
from .config import ContrastConfig


@dataclass
class ContrastResult:
    """Which evidence fired (``evidence``: subset of attenuation, vessels, spleen_pattern)."""

    evidence: list = field(default_factory=list)
    liver_vessel_excess: float = float("nan")
    liver_tail_hu: float = float("nan")
    spleen_spread_hu: float = float("nan")

    def details(self) -> dict:
        def r(x):
            return None if not math.isfinite(x) else round(float(x), 4)

        return {
            "evidence": list(self.evidence),
            "liver_vessel_excess": r(self.liver_vessel_excess),
            "liver_tail_hu": r(self.liver_tail_hu),
            "spleen_spread_hu": r(self.spleen_spread_hu),
        }


def vessel_excess(hu_c, liver_c, cfg: ContrastConfig) -> tuple[float, float]:
    """Upper-tail excess (fraction) and tail threshold (HU above the median) in the liver.

    Parameters
    ----------
    hu_c : ndarray [z, y, x]
        HU on a coarse grid (strided view of the scan).
    liver_c : bool ndarray, same shape
        Liver (largest piece) on the same grid.
    cfg : ContrastConfig
    """
    xp, ndi = get_xp(liver_c)
    if int(xp.count_nonzero(liver_c)) < 50:
        return float("nan"), float("nan")
    from .components import bounding_box

    box = bounding_box(liver_c)
    pad = tuple(slice(max(0, b.start - 1), b.stop + 1) for b in box)
    core = ndi.binary_erosion(liver_c[pad], structure=xp.ones((3, 3, 3), dtype=bool))
    if int(xp.count_nonzero(core)) < 50:
        core = liver_c[pad]
    vals = hu_c[pad][core].astype(xp.float32)
    q = xp.percentile(vals, xp.asarray([15.87, 50.0]))
    lo16, med = float(q[0]), float(q[1])
    sigma = max(med - lo16, 1.0)  # lower half only: bright vessels cannot inflate it
    t = max(cfg.vessel_excess_hu, cfg.vessel_noise_k * sigma)
    # The tail must also lie above what unenhanced blood can measure: in a fatty liver
    # (parenchyma below 40 HU) unenhanced vessels stand out above the parenchyma, the
    # classic sign of steatosis, not of contrast (issue 20).
    t = max(t, cfg.blood_max_hu + cfg.vessel_noise_k * sigma - med)
    upper = float(xp.mean(vals > med + t))
    lower = float(xp.mean(vals < med - t))
    return upper - lower, t


def spleen_spread(means, sds, cube_voxels) -> float:
    """Spread (HU) of spleen cube means beyond what voxel noise explains.

    Robust SD of the cube means (IQR / 1.349) with the noise part (median cube SD /
    sqrt(voxels per cube)) removed in quadrature.
    """
    means = np.asarray(means, dtype=np.float64)
    if means.size < 8:
        return float("nan")
    q1, q3 = np.percentile(means, [25, 75])
    spread = (q3 - q1) / 1.349
    noise = float(np.median(np.asarray(sds))) / math.sqrt(max(1, int(np.prod(cube_voxels))))
    return float(math.sqrt(max(spread**2 - noise**2, 0.0)))


def contrast_evidence(
    hu_c, liver_c, liver_hu, spleen_hu, spleen_means, spleen_sds, spleen_cube, cfg, spleen_limit_hu
) -> ContrastResult:
    """Evidence of contrast enhancement from the image.

    Parameters
    ----------
    hu_c : ndarray [z, y, x]
        HU on the coarse grid (NumPy or CuPy).
    liver_c : bool ndarray
        Liver's largest piece on the coarse grid.
    liver_hu, spleen_hu : float
        Organ attenuation from the kept cubes (nan when not measured).
    spleen_means, spleen_sds : array
        Means and SDs of every sampled spleen cube (before rejection).
    spleen_cube : tuple of int
        Spleen cube size in voxels.
    cfg : ContrastConfig
    spleen_limit_hu : float
        Spleen attenuation above which the scan counts as enhanced.

    Returns
    -------
    ContrastResult
    """
    res = ContrastResult()
    if not cfg.enabled:
        return res
    if (math.isfinite(spleen_hu) and spleen_hu > spleen_limit_hu) or (
        math.isfinite(liver_hu) and liver_hu > cfg.liver_hu
    ):
        res.evidence.append("attenuation")
    if liver_c is not None:
        res.liver_vessel_excess, res.liver_tail_hu = vessel_excess(hu_c, liver_c, cfg)
        if (
            math.isfinite(res.liver_vessel_excess)
            and res.liver_vessel_excess > cfg.vessel_min_fraction
        ):
            res.evidence.append("vessels")
    res.spleen_spread_hu = spleen_spread(spleen_means, spleen_sds, spleen_cube)
    if math.isfinite(res.spleen_spread_hu) and res.spleen_spread_hu > cfg.spleen_spread_hu:
        res.evidence.append("spleen_pattern")
    return res


__all__ = ["ContrastResult", "contrast_evidence", "spleen_spread", "vessel_excess"]
