"""Label-map synthesis (training.synth): determinism, geometry against SciPy, HU per phase, crops."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from training import synth
from training.phantoms import TISSUES, make_anatomy_map

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "totalseg_example"
needs_data = pytest.mark.skipif(
    not (DATA / "labels_all.nii.gz").exists(), reason="../shared/data/totalseg_example missing"
)


@pytest.fixture(scope="module")
def anatomy():
    return make_anatomy_map(3)


def test_anatomy_map_has_the_organs_around_the_spleen(anatomy):
    lab, sp = anatomy
    assert sp == (3.0, 3.0, 3.0)
    present = set(np.unique(lab).tolist())
    for name in (
        "liver",
        "spleen",
        "stomach",
        "colon",
        "kidney_cortex",
        "kidney_medulla",
        "pancreas",
        "artery",
        "vein",
        "lung",
        "bone",
    ):
        assert TISSUES[name] in present, name
    # Spleen on the patient's left (high x), liver on the right (low x), stomach left.
    com = {n: ndi.center_of_mass(lab == TISSUES[n]) for n in ("liver", "spleen", "stomach")}
    mid = lab.shape[2] / 2
    assert com["spleen"][2] > mid > com["liver"][2]
    assert com["stomach"][2] > mid
    # Spleen of adult size: 60-600 ml.
    ml = (lab == TISSUES["spleen"]).sum() * 27 / 1000
    assert 60 < ml < 600, ml


def test_warp_map_matches_scipy_map_coordinates(anatomy):
    lab, sp = anatomy
    rng = np.random.default_rng(0)
    shape = (20, 40, 40)
    q = [(np.arange(n) + 0.5) * 4.0 - n * 2.0 for n in shape]
    rot = synth._rot(rng, 15, 6)
    m = rot.T / np.array([1.2, 0.9, 1.1])[None, :]
    p = [
        m[i, 0] * q[0][:, None, None]
        + m[i, 1] * q[1][None, :, None]
        + m[i, 2] * q[2][None, None, :]
        + 3.0 * synth._smooth_field(rng, q, 50.0)
        for i in range(3)
    ]
    got = synth.warp_map(lab, sp, p)
    ext = np.array(lab.shape) * np.array(sp)
    coords = np.stack([(p[i] + ext[i] / 2) / sp[i] - 0.5 for i in range(3)])
    ref = ndi.map_coordinates(lab, coords, order=0, mode="nearest")
    inside = np.ones(shape, bool)
    for i in (1, 2):
        inside &= np.abs(p[i]) <= ext[i] / 2
    ref[~inside] = 0
    # Nearest-neighbour rounding of exact .5 ties may differ: allow a few voxels.
    assert (got != ref).mean() < 1e-3


def test_warp_map_scaling_scales_organ_volume(anatomy):
    lab, sp = anatomy
    s = 1.2  # anatomy enlarged 1.2x: volumes x 1.728
    d = 2.0
    shape = tuple(int(e * s / d) for e in np.array(lab.shape) * 3.0)
    q = [(np.arange(n) + 0.5) * d - n * d / 2 for n in shape]
    p = np.meshgrid(*[a / s for a in q], indexing="ij", sparse=True)
    out = synth.warp_map(lab, sp, p)
    for name in ("liver", "spleen"):
        v0 = (lab == TISSUES[name]).sum() * 27.0
        v1 = (out == TISSUES[name]).sum() * d**3
        assert v1 / v0 == pytest.approx(s**3, rel=0.03), name


def test_draw_means_respects_phase_ranges():
    rng = np.random.default_rng(1)
    for phase in synth.PHASES:
        k = synth.PHASES.index(phase)
        ratios = []
        for _ in range(200):
            mean, info = synth.draw_means(rng, phase)
            for name, ranges in synth.HU_RANGES.items():
                lo, hi = ranges[k]
                assert lo <= mean[TISSUES[name]] <= hi, (phase, name)
            ratios.append(info["liver_hu"] / info["spleen_hu"])
        if phase == "unenhanced":
            r = np.array(ratios)
            assert r.max() <= 1.5 and (r < 0.5).any() and (r > 1.2).any()
    # Enhanced spleen up to about 150 HU, arterial aorta far above portal liver.
    assert synth.HU_RANGES["spleen"][1][1] == 150
    assert synth.HU_RANGES["artery"][1][0] >= 120


@needs_data
def test_synth_scan_is_deterministic_and_labels_follow_tissue():
    a = synth.synth_scan(11, "real")
    b = synth.synth_scan(11, "real")
    assert np.array_equal(a["hu"], b["hu"]) and np.array_equal(a["labels"], b["labels"])
    assert a["hu"].dtype == np.int16 and a["hu"].shape == a["labels"].shape
    c = synth.synth_scan(12, "real")
    assert a["hu"].shape != c["hu"].shape or not np.array_equal(a["hu"], c["hu"])


@needs_data
@pytest.mark.parametrize(
    "source,phase,lo,hi",
    [
        ("real", "unenhanced", 15, 75),
        ("real", "portal", 80, 170),
        ("real_image", "portal", 80, 170),
    ],
)
def test_spleen_attenuation_follows_the_phase(source, phase, lo, hi):
    s = synth.synth_scan(21, source, phase=phase, scenario="full")
    spleen = ndi.binary_erosion(s["labels"] == 2, iterations=1)
    assert spleen.sum() > 50
    med = float(np.median(s["hu"][spleen]))
    assert lo < med < hi, med
    assert s["info"]["phase"] == phase


def test_chest_and_slab_scenarios():
    chest = synth.synth_scan(5, "phantom", anatomy_seed=3, scenario="chest")
    full = synth.synth_scan(5, "phantom", anatomy_seed=3, scenario="full")
    assert chest["info"]["scenario"] == "chest"
    n_full = int((full["labels"] > 0).sum())
    assert n_full > 1000
    # Chest-only range: (almost) no liver or spleen, but a body with lung in it.
    assert (chest["labels"] > 0).sum() < 0.02 * n_full * np.prod(full["spacing"]) / np.prod(
        chest["spacing"]
    )
    assert (chest["hu"] < -700).mean() > 0.1 and (chest["hu"] > -200).mean() > 0.1
    slab = synth.synth_scan(6, "phantom", anatomy_seed=3, scenario="slab")
    ax = 2 - int(np.argmax(np.abs(slab["direction"][2])))  # array axis along patient z
    sz, nz = slab["spacing"][ax], slab["hu"].shape[ax]
    assert 15 <= nz * sz <= 70, (nz, sz)
    assert (slab["labels"] > 0).any()
    # The serving preprocessing stretches the slab to the model's size; labels follow.
    img, lab, info = synth.synth_sample(6, (32, 32, 32), "phantom")
    assert img.shape == (1, 32, 32, 32) and img.dtype == np.uint8 and lab.shape == (32, 32, 32)


def test_unknown_source_phase_scenario_are_errors():
    with pytest.raises(ValueError, match="anatomy source"):
        synth.synth_scan(0, "mri")
    with pytest.raises(ValueError, match="phase or scenario"):
        synth.synth_scan(0, "phantom", anatomy_seed=3, phase="venous-ish")


@needs_data
def test_shards_are_deterministic_and_resumable(tmp_path):
    synth.write_shards(tmp_path / "a", 7, 3, shard=2, model_shape=(16, 16, 16))
    synth.write_shards(tmp_path / "b", 7, 3, shard=2, model_shape=(16, 16, 16))
    names = sorted(p.name for p in (tmp_path / "a").glob("synth_*.npz"))
    assert names == ["synth_0000007.npz", "synth_0000009.npz"]
    for n in names:
        za, zb = np.load(tmp_path / "a" / n), np.load(tmp_path / "b" / n)
        assert np.array_equal(za["images"], zb["images"])
        assert np.array_equal(za["labels"], zb["labels"])
    mtime = (tmp_path / "a" / names[0]).stat().st_mtime_ns
    synth.write_shards(tmp_path / "a", 7, 3, shard=2, model_shape=(16, 16, 16))
    assert (tmp_path / "a" / names[0]).stat().st_mtime_ns == mtime  # kept, not rewritten
