"""Work done inside the labels' bounding box gives what the whole-volume computation gives.

Each fast path (issue 13: client CPU per scan) is checked against the plain
whole-volume formulation it replaced, written out here as the reference.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import ndimage as ndi

from client.reading.preprocess import PreprocessRecord, canonical_axes, resize_nearest, to_scan_grid
from postprocess import AssessConfig, sample_cubes, valid_cube_positions
from postprocess.components import largest_component_and_box
from postprocess.cubes import sample_valid_cubes
from postprocess.gate import check_segmentation


def _direction(perm, signs):
    d = np.zeros((3, 3))
    for c, p in enumerate(perm):
        d[p, c] = signs[c]
    return d


def _reference_to_scan_grid(labels, rec):
    """Whole-volume nearest resampling, then undo flips and transpose."""
    canon = resize_nearest(labels, rec.canonical_shape)
    flips = tuple(a for a in range(3) if rec.flips[a])
    if flips:
        canon = np.flip(canon, flips)
    return np.ascontiguousarray(np.transpose(canon, np.argsort(rec.axes)))


@pytest.mark.parametrize("perm", list(itertools.permutations(range(3))))
def test_to_scan_grid_equals_whole_volume_resampling(perm):
    rng = np.random.default_rng(sum(perm))
    for signs in itertools.product((1, -1), repeat=3):
        axes, flips = canonical_axes(_direction(perm, signs))
        scan = tuple(int(v) for v in rng.integers(5, 30, 3))
        model = tuple(int(v) for v in rng.integers(3, 16, 3))
        rec = PreprocessRecord(scan, axes, flips, tuple(scan[a] for a in axes), (1, 1, 1), model)
        blob = np.zeros(model, np.uint8)
        blob[1:3, 2:, :2] = 2
        noise = (rng.random(model) < 0.1) * rng.integers(1, 3, model)
        for lab in (blob, noise.astype(np.uint8), np.zeros(model, np.uint8)):
            got = to_scan_grid(lab[None], rec)
            want = _reference_to_scan_grid(lab, rec)
            assert got.dtype == want.dtype and got.flags.c_contiguous
            np.testing.assert_array_equal(got, want)


def _blobs(seed, shape=(30, 40, 36)):
    rng = np.random.default_rng(seed)
    m = ndi.gaussian_filter(rng.random(shape), 2.0) > 0.52
    return m


@pytest.mark.parametrize("seed", range(4))
def test_sampled_cubes_equal_listing_all_corners(seed):
    mask = _blobs(seed)
    for size, margin, n in (
        ((3, 3, 3), (0, 0, 0), 5),
        ((2, 4, 3), (1, 1, 1), 50),
        ((9, 9, 9), (1, 1, 1), 5),
    ):
        pos = valid_cube_positions(mask, size, margin=margin)
        want = sample_cubes(pos, n, np.random.default_rng(seed))
        rng = np.random.default_rng(seed)
        m, got = sample_valid_cubes(mask, size, n, rng, margin=margin)
        assert m == pos.shape[0]
        np.testing.assert_array_equal(got, want)
        assert got.dtype == np.int64


def test_component_search_within_a_box_equals_whole_volume():
    mask = _blobs(7)
    comp, box = largest_component_and_box(mask)
    z, y, x = np.nonzero(mask)
    within = (slice(z.min(), z.max() + 1), slice(y.min(), y.max() + 1), slice(x.min(), x.max() + 1))
    comp2, box2 = largest_component_and_box(mask, within)
    np.testing.assert_array_equal(comp, comp2)
    assert box == box2
    empty = np.zeros_like(mask)
    assert largest_component_and_box(empty, within)[1] is None


def test_gate_within_the_labels_box_gives_the_same_evidence():
    from training.phantoms import make_phantom

    p = make_phantom(5, shape=(40, 80, 80), grade="mild")
    scan, lab = p.to_scan(), p.labels
    liver, spleen = lab == 1, lab == 2
    lc, _ = largest_component_and_box(liver)
    sc, _ = largest_component_and_box(spleen)
    z, y, x = np.nonzero(lab)
    within = (slice(z.min(), z.max() + 1), slice(y.min(), y.max() + 1), slice(x.min(), x.max() + 1))
    cfg = AssessConfig().gate
    args = (scan.array, lc, sc, liver, spleen, scan.spacing, scan.direction, 1500.0, 200.0, cfg)
    a = check_segmentation(*args)
    b = check_segmentation(*args, within=within)
    assert repr(a.evidence()) == repr(b.evidence())
    assert a.flags == b.flags and a.notes == b.notes
