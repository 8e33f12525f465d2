"""Preprocessing: HU window, resampling against SciPy, exact orientation handling, round trips."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage as ndi

from client.core.contract import ORIGINAL_MODEL_SHAPE
from client.core.errors import PreprocessError
from client.reading.io import read_label_map, read_scan
from client.reading.preprocess import (
    PreprocessSpec,
    as_spec,
    body_box,
    labels_to_grid,
    labels_to_model,
    normalise_network_input,
    preprocess,
    preprocess_grid,
    preprocess_scan,
    preprocess_windows,
    resize_linear,
    stitch_windows,
    to_scan_grid,
    window_batch,
    window_hu,
    window_starts,
)
from client.reading.scan import ScanVolume


@pytest.fixture(scope="module")
def real_ct(shared_data):
    ct = read_scan(shared_data / "totalseg_example" / "ct.nii.gz")
    labels = read_label_map(shared_data / "totalseg_example" / "labels.nii.gz", ct)
    return ct, labels


def dice(a, b):
    s = a.sum() + b.sum()
    return 2.0 * (a & b).sum() / s if s else 1.0


def round_trip(ct: ScanVolume, labels, model_shape=ORIGINAL_MODEL_SHAPE):
    small = labels_to_model(labels, ct.direction, model_shape)
    _, record = preprocess_scan(ct, model_shape)
    back = to_scan_grid(small, record)
    assert back.shape == labels.shape
    return dice(back == 1, labels == 1), dice(back == 2, labels == 2)


def flipped(ct: ScanVolume, labels, axis: int):
    """The same physical scan stored with array axis ``axis`` reversed."""
    k = 2 - axis  # ITK index axis of array axis
    d = ct.direction.copy()
    origin = np.asarray(ct.origin) + d[:, k] * ct.spacing[axis] * (ct.shape[axis] - 1)
    d[:, k] *= -1
    a = np.flip(ct.array, axis).copy()
    return ScanVolume(a, ct.spacing, tuple(origin), d), np.flip(labels, axis).copy()


def test_window_matches_medicalseg_hunorm():
    hu = np.array([-1000, -100, 0, 100, 300, 2000], np.float32)
    assert np.allclose(window_hu(hu), [0, 0, 63.75, 127.5, 255, 255])


@pytest.mark.parametrize("shape_in, shape_out", [((7, 9, 11), (4, 5, 6)), ((5, 6, 7), (9, 11, 13))])
def test_resize_linear_equals_scipy_zoom(shape_in, shape_out):
    rng = np.random.default_rng(0)
    v = rng.normal(size=shape_in).astype(np.float32)
    ref = ndi.zoom(
        v, np.array(shape_out) / np.array(shape_in), order=1, mode="nearest", grid_mode=False
    )
    assert ref.shape == shape_out
    assert np.allclose(resize_linear(v, shape_out), ref, atol=1e-5)


def test_network_input_normalisation_is_the_served_one():
    t = np.array([[[[0, 51, 255]]]], np.uint8)
    assert np.allclose(normalise_network_input(t), [[[[0, 0.2, 1.0]]]])
    assert np.allclose(
        normalise_network_input(np.zeros((1, 2, 2, 2), np.uint8)), 0
    )  # max 0 guarded


def test_round_trip_dice_on_real_ct(real_ct):
    ct, labels = real_ct
    d_liver, d_spleen = round_trip(ct, labels)
    assert d_liver >= 0.95 and d_spleen >= 0.85, (d_liver, d_spleen)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_flipped_storage_gives_the_same_model_input_and_round_trip(real_ct, axis):
    ct, labels = real_ct
    fct, flab = flipped(ct, labels, axis)
    t0, _ = preprocess(ct.array, ct.spacing, ct.direction, (64, 64, 64))
    t1, _ = preprocess(fct.array, fct.spacing, fct.direction, (64, 64, 64))
    assert np.array_equal(t0, t1)  # canonical orientation: storage order does not matter
    d_liver, d_spleen = round_trip(fct, flab)
    assert d_liver >= 0.95 and d_spleen >= 0.85
    # And the mapped-back mask lands on the flipped scan's own voxels.
    small = labels_to_model(flab, fct.direction, ORIGINAL_MODEL_SHAPE)
    _, rec = preprocess_scan(fct, ORIGINAL_MODEL_SHAPE)
    back = to_scan_grid(small, rec)
    assert dice(np.flip(back, axis) == 1, labels == 1) >= 0.95


def test_round_trip_after_resampling_to_thick_slices(real_ct):
    ct, labels = real_ct
    img, lab = ct.to_sitk(), ct.to_sitk(labels)
    size = [
        int(round(n * s / t)) for n, s, t in zip(img.GetSize(), img.GetSpacing(), (0.8, 0.8, 5.0))
    ]
    ref = sitk.Image(size, sitk.sitkInt16)
    ref.SetSpacing((0.8, 0.8, 5.0))
    ref.SetOrigin(img.GetOrigin())
    ref.SetDirection(img.GetDirection())
    hu = sitk.GetArrayFromImage(sitk.Resample(img, ref, sitk.Transform(), sitk.sitkLinear, -1000))
    la = sitk.GetArrayFromImage(
        sitk.Resample(lab, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    )
    thick = ScanVolume(hu, (5.0, 0.8, 0.8), img.GetOrigin(), ct.direction)
    assert thick.shape[1] > 350 and thick.shape[0] < 80  # 379 x 458 x 67
    d_liver, d_spleen = round_trip(thick, la.astype(np.uint8))
    assert d_liver >= 0.95 and d_spleen >= 0.85, (d_liver, d_spleen)


def test_training_and_serving_share_preprocessing(real_ct):
    """training.samples builds its images with client.reading.preprocess.preprocess."""
    import ast
    import inspect

    import training.samples as samples

    imported = {
        a.name
        for node in ast.walk(ast.parse(inspect.getsource(samples)))
        if isinstance(node, ast.ImportFrom) and node.module == "client.reading.preprocess"
        for a in node.names
    }
    assert {"labels_to_model", "preprocess"} <= imported, imported
    ct, labels = real_ct
    t, rec = preprocess(ct.array, ct.spacing, ct.direction, (64, 64, 64))
    assert t.dtype == np.uint8 and t.shape == (1, 64, 64, 64)
    assert rec.scan_shape == ct.shape


# --- fixed-spacing preprocessing (issue 8 item 3) ------------------------------------------
# Both modes a served model may declare; tests over MODES hold for either.
SHAPE = (64, 64, 64)
SPEC6 = PreprocessSpec("spacing", SHAPE, (6.0, 6.0, 6.0))
MODES = [pytest.param(as_spec(SHAPE), id="resize"), pytest.param(SPEC6, id="spacing")]


def scan_round_trip(scan: ScanVolume, labels, spec):
    """Labels moved to the model's windows the way the image is, stitched and mapped back."""
    windows, rec = preprocess_scan(scan, spec)
    back = to_scan_grid(window_batch(labels_to_grid(labels, rec), rec)[:, 0], rec)
    assert back.shape == labels.shape and back.dtype == labels.dtype
    return back, windows, rec


def restored(ct: ScanVolume, labels, perm, flips):
    """The same physical scan stored with array axes permuted (``perm``) then flipped."""
    a = np.transpose(ct.array, perm)
    lab = np.transpose(labels, perm)
    spacing = tuple(ct.spacing[p] for p in perm)
    d_old = np.asarray(ct.direction, float)
    d = np.zeros((3, 3))
    origin = np.asarray(ct.origin, float)
    for ax in range(3):
        col = d_old[:, 2 - perm[ax]].copy()  # ITK index axis of array axis ax is 2 - ax
        if flips[ax]:
            origin = origin + col * spacing[ax] * (a.shape[ax] - 1)
            col = -col
        d[:, 2 - ax] = col
    fl = tuple(ax for ax in range(3) if flips[ax])
    if fl:
        a, lab = np.flip(a, fl), np.flip(lab, fl)
    scan = ScanVolume(np.ascontiguousarray(a), spacing, tuple(origin), d)
    return scan, np.ascontiguousarray(lab)


def test_restored_helper_is_the_same_physical_image(real_ct):
    """The orientation helper itself, against SimpleITK resampling (an independent check)."""
    ct, _ = real_ct
    spacing = tuple(4 * s for s in ct.spacing)
    small = ScanVolume(ct.array[::4, ::4, ::4].copy(), spacing, ct.origin, ct.direction)
    other, _ = restored(small, small.array, (2, 0, 1), (True, False, True))
    back = sitk.Resample(
        other.to_sitk(), small.to_sitk(), sitk.Transform(), sitk.sitkNearestNeighbor
    )
    assert np.array_equal(sitk.GetArrayFromImage(back), small.array)


@settings(max_examples=300, deadline=None)
@given(n=st.integers(1, 700), m=st.integers(1, 128), data=st.data())
def test_window_starts_cover_with_the_fewest_overlapping_windows(n, m, data):
    ov = data.draw(st.integers(0, m - 1))
    starts, pad, length = window_starts(n, m, ov)
    assert length == max(n, m) and starts == sorted(set(starts))
    assert starts[0] == 0 and starts[-1] + m == length  # the first and last voxel are covered
    if n <= m:
        assert starts == [0] and pad == (m - n) // 2  # centred
        return
    assert pad == 0 and len(starts) >= 2
    covered = np.zeros(n, bool)
    for s in starts:
        covered[s : s + m] = True
    assert covered.all()
    assert all(a + m - b >= ov for a, b in zip(starts, starts[1:]))  # neighbours overlap
    k = len(starts)
    if k > 2:  # one window fewer, evenly spread, would overlap less than ov
        assert (n - m) / (k - 2) > m - ov


def _brute_force_stitch(labels, rec):
    """Per voxel of the padded grid: the label of the window whose centre is nearest in 3D
    (Euclidean); where centres tie, the set of the tied windows' labels."""
    m = np.array(rec.model_shape)
    centres = np.array(rec.windows) + (m - 1) / 2.0
    out = {}
    for p in np.ndindex(*rec.padded_shape):
        d = ((centres - np.array(p)) ** 2).sum(axis=1)
        best = np.flatnonzero(np.isclose(d, d.min()))
        vals = set()
        for k in best:
            local = np.array(p) - np.array(rec.windows[k])
            assert (local >= 0).all() and (local < m).all()  # the nearest window holds it
            vals.add(int(labels[k][tuple(local)]))
        out[p] = vals
    return out


@pytest.mark.parametrize(
    "scan_shape, model_shape",
    [((30, 40, 50), (8, 10, 12)), ((30, 5, 50), (8, 10, 12)), ((13, 29, 8), (6, 6, 9))],
)
def test_stitching_equals_brute_force_nearest_centre(scan_shape, model_shape):
    spec = PreprocessSpec("spacing", model_shape, (3.0, 3.0, 3.0), min_overlap=2)
    hu = np.zeros(scan_shape, np.int16)  # all body: the crop is the whole scan
    _, rec = preprocess_grid(hu, (3.0, 3.0, 3.0), np.eye(3), spec)
    assert len(rec.windows) > 1
    labels = np.random.default_rng(1).integers(0, 250, (len(rec.windows), *model_shape))
    labels = labels.astype(np.uint8)
    got = stitch_windows(labels, rec)
    assert got.shape == rec.grid_shape
    ref = _brute_force_stitch(labels, rec)
    for q in np.ndindex(*rec.grid_shape):
        p = tuple(a + b for a, b in zip(q, rec.pad))
        assert int(got[q]) in ref[p], (q, got[q], ref[p])


@pytest.mark.parametrize("spec", MODES)
def test_round_trip_of_labels_through_windows_on_real_ct(real_ct, spec):
    ct, labels = real_ct
    back, windows, rec = scan_round_trip(ct, labels, spec)
    assert windows.shape == (len(rec.windows), 1, *SHAPE) and windows.dtype == np.uint8
    d_liver, d_spleen = dice(back == 1, labels == 1), dice(back == 2, labels == 2)
    assert d_liver >= 0.9 and d_spleen >= 0.9, (d_liver, d_spleen)


def test_spacing_grid_keeps_physical_proportions_on_real_ct(real_ct):
    """3 mm voxels to 6 mm: about half the samples per axis, centred in the 64^3 box."""
    ct, _ = real_ct
    windows, rec = preprocess_scan(ct, SPEC6)
    for n_crop, g, s in zip(
        (hi - lo for lo, hi in rec.crop), rec.grid_shape, rec.canonical_spacing
    ):
        assert abs(g - ((n_crop - 1) * s / 6.0 + 1)) <= 0.5
    assert len(rec.windows) == 1  # 333 x 300 x 363 mm fits 384 mm: one window
    assert rec.pad == tuple((64 - g) // 2 for g in rec.grid_shape)
    # Padding is air (0) and the scan's data sits inside it.
    inner = tuple(slice(p, p + g) for p, g in zip(rec.pad, rec.grid_shape))
    mask = np.ones(SHAPE, bool)
    mask[inner] = False
    assert windows[0, 0][mask].max() == 0 and windows[0, 0][inner].max() == 255


@pytest.mark.parametrize("spec", [*MODES, pytest.param(
    PreprocessSpec("spacing", (32, 40, 48), (4.0, 5.0, 7.0)), id="spacing-anisotropic")])  # fmt: skip
@pytest.mark.parametrize("seed", range(4))
def test_random_orientations_give_the_same_windows_and_round_trip(real_ct, spec, seed):
    """Direction matrices with permutations and flips: the model sees the same windows and
    the labels come back onto the stored array's own voxels."""
    ct, labels = real_ct
    rng = np.random.default_rng(seed)
    perm = tuple(int(p) for p in rng.permutation(3))
    flips = tuple(bool(f) for f in rng.integers(0, 2, 3))
    if seed == 0:
        perm, flips = (2, 1, 0), (True, True, False)  # always one full reversal of the axes
    other, olab = restored(ct, labels, perm, flips)
    w0, r0 = preprocess_scan(ct, spec)
    w1, r1 = preprocess_scan(other, spec)
    assert np.array_equal(w0, w1), (perm, flips)
    assert r1.grid_shape == r0.grid_shape and r1.windows == r0.windows
    back0, _, _ = scan_round_trip(ct, labels, spec)
    back1, _, _ = scan_round_trip(other, olab, spec)
    # Undo the storage by hand: the two mapped-back label maps are the same voxels.
    undo = np.flip(back1, tuple(ax for ax in range(3) if flips[ax]))
    assert np.array_equal(np.transpose(undo, np.argsort(perm)), back0)


def test_spacing_grid_equals_scipy_map_coordinates_on_the_crop(real_ct):
    """The resampled crop against scipy.ndimage.map_coordinates (order 1, align corners),
    with an anisotropic target and a non-canonical storage."""
    ct, _ = real_ct
    spec = PreprocessSpec("spacing", (32, 40, 48), (4.0, 5.0, 7.0))
    scan, _ = restored(ct, ct.array, (1, 2, 0), (False, True, True))
    grid, rec = preprocess_grid(scan.array, scan.spacing, scan.direction, spec)
    canon = np.flip(np.transpose(scan.array, rec.axes), [a for a in range(3) if rec.flips[a]])
    crop = canon[tuple(slice(lo, hi) for lo, hi in rec.crop)]
    coords = np.meshgrid(
        *[np.linspace(0, n - 1, g) for n, g in zip(crop.shape, rec.grid_shape)], indexing="ij"
    )
    ref = ndi.map_coordinates(window_hu(crop).astype(np.float64), coords, order=1)
    got = grid[tuple(slice(p, p + g) for p, g in zip(rec.pad, rec.grid_shape))]
    assert np.abs(got.astype(float) - ref).max() <= 0.51
    # Physical spacing of the grid is the target's within half a target voxel per extent.
    for n, g, s, t in zip(crop.shape, rec.grid_shape, rec.canonical_spacing, spec.spacing_mm):
        assert abs((g - 1) * t - (n - 1) * s) <= t / 2 + 1e-9


def _body_with_table(gap_mm=30.0):
    """Canonical phantom at 3 x 1 x 1 mm: an elliptic body and a table below it (+y is
    posterior in LPS), separated by ``gap_mm`` of air."""
    nz, ny, nx = 20, 300, 320
    vol = np.full((nz, ny, nx), -1000, np.int16)
    yy, xx = np.mgrid[:ny, :nx]
    body = ((yy - 120) / 80.0) ** 2 + ((xx - 150) / 110.0) ** 2 <= 1.0  # y 40..200, x 40..260
    vol[:, body] = 40
    t0 = 200 + int(gap_mm)
    vol[:, t0 : t0 + 15, 10:310] = 300  # table wider than the body
    return vol, (3.0, 1.0, 1.0), body, (t0, t0 + 15)


def test_body_box_drops_a_separate_table_and_keeps_the_body():
    vol, spacing, body, (t0, t1) = _body_with_table()
    box = body_box(vol, spacing, -500.0, 10.0)
    ys, xs = np.flatnonzero(body.any(1)), np.flatnonzero(body.any(0))
    assert box[0] == (0, vol.shape[0])  # all slices kept
    for (lo, hi), hit in zip(box[1:], (ys, xs)):
        # Brute-force box of the body at full resolution +- 10 mm, to one coarse step (4 mm):
        # the coarse pass samples every 4th voxel, so a thin tip may fall between samples.
        assert abs(lo - (hit[0] - 10)) <= 4 and abs(hi - (hit[-1] + 1 + 10)) <= 4, (lo, hi, hit)
    assert box[1][1] <= t0  # the table (wider than the body) is outside the box
    _, rec = preprocess_grid(vol, spacing, np.eye(3), SPEC6)
    assert rec.crop == tuple(box)


def test_body_box_of_air_only_is_the_whole_volume():
    vol = np.full((5, 30, 40), -1000, np.int16)
    assert body_box(vol, (2.0, 2.0, 2.0)) == [(0, 5), (0, 30), (0, 40)]


def _slab(ct: ScanVolume, labels, n: int, liver_centre: bool = True):
    z = np.flatnonzero((labels == 1).any((1, 2)))
    s0 = (z[0] + z[-1]) // 2 - n // 2 if liver_centre else 0
    return (
        ScanVolume(
            np.ascontiguousarray(ct.array[s0 : s0 + n]), ct.spacing, ct.origin, ct.direction
        ),
        np.ascontiguousarray(labels[s0 : s0 + n]),
    )


@pytest.mark.parametrize("n", [10, 15, 20])
def test_thin_slab_is_padded_in_z_and_keeps_its_proportions(real_ct, n):
    """A 30-60 mm slab: one window in z, the grid's z length is its extent at 6 mm (not
    stretched to 64 as 'resize' does), in-plane the same grid as the whole scan."""
    ct, labels = real_ct
    slab, slab_lab = _slab(ct, labels, n)
    extent = (n - 1) * ct.spacing[0]
    back, windows, rec = scan_round_trip(slab, slab_lab, SPEC6)
    assert abs(rec.grid_shape[0] - (extent / 6.0 + 1)) <= 0.5
    assert {w[0] for w in rec.windows} == {0} and rec.pad[0] == (64 - rec.grid_shape[0]) // 2
    _, full = preprocess_scan(ct, SPEC6)
    assert all(abs(a - b) <= 2 for a, b in zip(rec.grid_shape[1:], full.grid_shape[1:]))
    # The slab's data occupies only the middle slices of the window; the rest is air.
    z_data = np.flatnonzero(windows[0, 0].any((1, 2)))
    assert z_data[0] >= rec.pad[0] and z_data[-1] < rec.pad[0] + rec.grid_shape[0]
    for v in (1, 2):
        assert dice(back == v, slab_lab == v) >= 0.85
    # 'resize' stretches the same slab over the whole box: 64 samples for n slices.
    _, rrec = preprocess_scan(slab, as_spec(SHAPE))
    assert rrec.grid_shape[0] == 64


def test_liver_only_coverage(real_ct):
    """A field of view cut to the liver's box (+ 10 mm): smaller than the model box on
    every axis, padded centred, the liver comes back."""
    ct, labels = real_ct
    idx = np.nonzero(labels == 1)
    box = tuple(slice(max(0, i.min() - 3), i.max() + 4) for i in idx)
    scan = ScanVolume(np.ascontiguousarray(ct.array[box]), ct.spacing, ct.origin, ct.direction)
    lab = np.ascontiguousarray(labels[box])
    back, windows, rec = scan_round_trip(scan, lab, SPEC6)
    assert len(rec.windows) == 1 and all(g < 64 for g in rec.grid_shape)
    assert all(p == (64 - g) // 2 for p, g in zip(rec.pad, rec.grid_shape))
    assert dice(back == 1, lab == 1) >= 0.9


def test_scan_smaller_than_the_box_on_every_axis_round_trips_exactly():
    """At the target spacing the grid is the scan itself: the round trip is exact, so any
    padding offset error shows."""
    rng = np.random.default_rng(5)
    shape = (21, 17, 30)
    hu = rng.integers(-200, 400, shape).astype(np.int16)
    lab = rng.integers(0, 3, shape).astype(np.uint8)
    direction = np.diag([1.0, -1.0, -1.0])  # ITK columns i, j, k: y and z stored reversed
    windows, rec = preprocess_windows(hu, (6.0, 6.0, 6.0), direction, SPEC6)
    assert rec.grid_shape == shape and len(rec.windows) == 1
    assert rec.pad == tuple((64 - n) // 2 for n in shape)
    canon = np.flip(hu, (0, 1))  # array axes z, y
    inner = windows[0, 0][tuple(slice(p, p + n) for p, n in zip(rec.pad, shape))]
    assert np.array_equal(inner, np.rint(window_hu(canon)).astype(np.uint8))
    back = to_scan_grid(window_batch(labels_to_grid(lab, rec), rec)[:, 0], rec)
    assert np.array_equal(back, lab)


def _tiled_whole_body(ct: ScanVolume, labels, length_mm=1500.0):
    n = int(round(length_mm / ct.spacing[0]))
    reps = -(-n // ct.shape[0])
    scan = ScanVolume(np.concatenate([ct.array] * reps)[:n], ct.spacing, ct.origin, ct.direction)
    return scan, np.concatenate([labels] * reps)[:n]


def test_whole_body_length_scan_gets_several_windows_each_voxel_owned_once(real_ct):
    ct, labels = real_ct
    scan, lab = _tiled_whole_body(ct, labels)
    back, windows, rec = scan_round_trip(scan, lab, SPEC6)
    zs = sorted({w[0] for w in rec.windows})
    assert len(zs) >= 4 and len(rec.windows) == len(zs)  # 1.5 m: 5 windows in z, 1 in-plane
    assert zs[0] == 0 and zs[-1] + 64 == rec.grid_shape[0]
    assert all(b - a <= 64 - SPEC6.min_overlap for a, b in zip(zs, zs[1:]))
    # Ownership: window k labelled k + 1 everywhere; stitched, every voxel has exactly one
    # owner (no 0 left) and it is the window whose centre is nearest (brute force).
    ids = np.stack([np.full(SHAPE, k + 1, np.uint8) for k in range(len(rec.windows))])
    owner = stitch_windows(ids, rec)
    assert owner.shape == rec.grid_shape and owner.min() >= 1
    centres = np.array(zs) + 31.5
    for z in range(rec.grid_shape[0]):
        d = np.abs(centres - z)
        nearest = set(np.flatnonzero(d == d.min()) + 1)
        assert set(np.unique(owner[z])) <= nearest and len(np.unique(owner[z])) == 1
        k = int(owner[z, 0, 0]) - 1
        assert zs[k] <= z < zs[k] + 64  # the owner contains the voxel
    for v in (1, 2):
        assert dice(back == v, lab == v) >= 0.88


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(mode="fixed", model_shape=SHAPE), "unknown preprocessing mode 'fixed'"),
        (dict(mode="spacing", model_shape=SHAPE), "three positive voxel sizes"),
        (dict(mode="spacing", model_shape=SHAPE, spacing_mm=(6, 6)), "three positive"),
        (dict(mode="spacing", model_shape=SHAPE, spacing_mm=(0, 6, 6)), "three positive"),
        (dict(mode="spacing", model_shape=SHAPE, spacing_mm=(6, -1, 6)), "three positive"),
        (dict(mode="spacing", model_shape=SHAPE, spacing_mm=(6, float("nan"), 6)), "positive"),
        (dict(mode="resize", model_shape=(64, 64)), "three positive ints"),
        (dict(mode="resize", model_shape=(0, 64, 64)), "three positive ints"),
        (
            dict(mode="spacing", model_shape=SHAPE, spacing_mm=(6, 6, 6), min_overlap=64),
            r"min_overlap 64 must be in \[0, 64\)",
        ),  # fmt: skip
    ],
)
def test_preprocess_spec_validation(kw, match):
    with pytest.raises(PreprocessError, match=match):
        PreprocessSpec(**kw)


def _triton_json_parameters(pbtxt_parameters: str) -> dict:
    """``parameters`` as Triton's JSON config has them (``get_model_config(as_json=True)``)."""
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    msg = text_format.Parse(pbtxt_parameters, model_config_pb2.ModelConfig())
    return json_format.MessageToDict(msg, preserving_proto_field_name=True).get("parameters", {})


def test_from_parameters_reads_tritons_json_form_and_round_trips():
    params = _triton_json_parameters(
        'parameters: { key: "device" value: { string_value: "cpu" } }\n'
        'parameters: { key: "hepascreen_preprocess" value: { string_value: "spacing" } }\n'
        'parameters: { key: "hepascreen_spacing_mm" value: { string_value: "5, 6,7.5" } }\n'
    )
    assert params["hepascreen_preprocess"] == {"string_value": "spacing"}  # the JSON shape
    spec = PreprocessSpec.from_parameters(params, (48, 64, 64))
    assert spec == PreprocessSpec("spacing", (48, 64, 64), (5.0, 6.0, 7.5))
    assert spec.parameters() == {
        "hepascreen_preprocess": "spacing",
        "hepascreen_spacing_mm": "5,6,7.5",
    }
    assert PreprocessSpec.from_parameters(spec.parameters(), (48, 64, 64)) == spec  # plain form
    none = _triton_json_parameters('parameters: { key: "device" value: { string_value: "cpu" } }')
    assert PreprocessSpec.from_parameters(none, SHAPE) == as_spec(SHAPE)  # absent: resize
    assert PreprocessSpec.from_parameters({}, SHAPE).mode == "resize"


@pytest.mark.parametrize(
    "params, match",
    [
        ({"hepascreen_preprocess": {"string_value": "nnunet"}}, "hepascreen_preprocess.*'nnunet'"),
        ({"hepascreen_preprocess": "spacing"}, "hepascreen_spacing_mm.*got nothing"),
        ({"hepascreen_preprocess": "spacing", "hepascreen_spacing_mm": "6,6"}, "'6,6'"),
        ({"hepascreen_preprocess": "spacing", "hepascreen_spacing_mm": "6,x,6"}, "'6,x,6'"),
        ({"hepascreen_preprocess": "spacing", "hepascreen_spacing_mm": "6,0,6"}, "'6,0,6'"),
    ],
)
def test_from_parameters_errors_name_the_parameter(params, match):
    with pytest.raises(PreprocessError, match=match):
        PreprocessSpec.from_parameters(params, SHAPE)


def test_preprocess_refuses_a_spacing_spec(real_ct):
    ct, _ = real_ct
    with pytest.raises(PreprocessError, match="preprocess_windows"):
        preprocess(ct.array, ct.spacing, ct.direction, SPEC6)


def _ellipse_body(width_mm, fov_mm=500.0, n=256, nz=12):
    sp = (2.5, fov_mm / n, fov_mm / n)
    yy, xx = np.mgrid[:n, :n]
    c = (n - 1) / 2
    body = ((xx - c) * sp[2] / (width_mm / 2)) ** 2 + ((yy - c) * sp[1] / 120.0) ** 2 < 1
    body = np.repeat(body[None], nz, axis=0)
    return np.where(body, 40, -1000).astype(np.int16), body.astype(np.uint8), sp


@pytest.mark.parametrize("width_mm, windows", [(330, 1), (375, 1), (400, 2), (440, 2)])
def test_a_body_slightly_wider_than_the_box_takes_one_window(width_mm, windows):
    """In-plane slack: 6 mm x 64 = 384 mm box; a body box (body + 10 mm margins) up to 4
    samples wider is trimmed to the box (one window), a wider one gets two; either way
    the body survives the round trip (nearest-neighbour loss only)."""
    spec = PreprocessSpec("spacing", (64, 64, 64), (6.0, 6.0, 6.0))
    hu, body, sp = _ellipse_body(width_mm)
    batch, rec = preprocess_windows(hu, sp, np.eye(3), spec)
    assert len(rec.windows) == windows == batch.shape[0]
    assert max(rec.grid_shape[1:]) <= 64 or windows > 1
    back = to_scan_grid(window_batch(labels_to_grid(body, rec), rec)[:, 0], rec)
    assert (back.astype(bool) & ~body.astype(bool)).sum() <= 0.02 * body.sum()
    assert 1.0 - back.sum() / body.sum() < 0.02


@pytest.mark.parametrize("spec", MODES)
def test_a_map_back_within_the_labels_box_equals_the_full_one_there(real_ct, spec):
    """to_scan_grid(conf, rec, within=labels): the confidence mapped back only inside the
    box of the labelled voxels (issue 23: the whole-volume map-back of a map that is
    nonzero everywhere is skipped) equals the full map-back inside that box, 0 outside."""
    ct, labels = real_ct
    windows, rec = preprocess_scan(ct, spec)
    model_labels = window_batch(labels_to_grid(labels, rec), rec)[:, 0]
    conf = (windows[:, 0].astype(np.uint16) * 7 % 251 + 1).astype(np.uint8)  # nonzero everywhere
    full = to_scan_grid(conf, rec)
    boxed = to_scan_grid(conf, rec, within=model_labels)
    back = to_scan_grid(model_labels, rec)
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(back))
    inside = np.zeros(back.shape, bool)
    inside[box] = True
    assert np.array_equal(boxed[inside], full[inside])
    assert not boxed[~inside].any() and full[~inside].any()
