"""NumPy / CuPy parity of every preprocess and postprocess function, and of a whole screen.

One module, parametrised over the array module ``xp``: each test runs the function
on ``xp`` arrays, runs the NumPy implementation on the same data, and checks

* parity: the ``xp`` result equals the NumPy result (exactly for indices, labels,
  positions and grades; to float rounding for means and ratios);
* truth: the NumPy result equals an independent reference (SciPy, a brute-force
  loop, or the phantom's known attenuation), so the NumPy leg asserts something
  real on machines without a GPU.

The CuPy leg runs only where ``postprocess._xp.gpu_status()`` says CuPy can compile
and run a kernel; elsewhere it is skipped with that reason (e.g. "CuPy is not
installed" or the missing CUDA headers and their fix).
"""

from __future__ import annotations

import csv
import inspect

import numpy as np
import pytest
from scipy import ndimage as ndi

import client.reading.preprocess as pre
import postprocess
from postprocess import AssessConfig
from postprocess._xp import gpu_status, to_numpy
from training.phantoms import make_phantom

GPU_OK, GPU_WHY = gpu_status()
MODEL_SHAPE = (32, 48, 48)
# The whole screen uses a finer model grid: at 32 x 48 x 48 the nearest-neighbour round
# trip leaves the spleen of a 40 x 80 x 80 phantom with a flat cut face, which the
# segmentation gate rightly flags.
SCREEN_MODEL_SHAPE = (40, 64, 64)
COVERED: set[str] = set()  # functions exercised here (checked by the last test)


def covers(*names):
    COVERED.update(names)

    def deco(f):
        return f

    return deco


@pytest.fixture(
    params=[
        pytest.param("numpy", id="numpy"),
        pytest.param(
            "cupy",
            id="cupy",
            marks=[
                pytest.mark.gpu,
                pytest.mark.skipif(not GPU_OK, reason=f"no usable GPU: {GPU_WHY}"),
            ],
        ),
    ]
)
def xp(request):
    """The array module under test (overrides conftest's: the GPU check compiles a kernel)."""
    if request.param == "numpy":
        return np
    import cupy

    return cupy


def _same(got, want, exact=True, tol=1e-9):
    got, want = to_numpy(got), to_numpy(want)
    assert got.shape == want.shape, (got.shape, want.shape)
    if exact:
        assert np.array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def _organ_mask(seed=0, shape=(20, 26, 30)):
    """Two blobs and specks: a largest piece that is not the first in raster order."""
    rng = np.random.default_rng(seed)
    m = ndi.gaussian_filter(rng.random(shape), 2.0) > 0.52
    m[0, 0, 0] = True  # a speck on the edge
    return m


@pytest.fixture(scope="module")
def phantoms():
    """Two phantoms: one stored canonically, one with a random signed axis permutation."""
    return [
        make_phantom(1, shape=(40, 80, 80), grade="normal"),
        make_phantom(2, shape=(40, 80, 80), grade="moderate", random_orientation=True),
    ]


# --- preprocess -----------------------------------------------------------------------------
@covers("window_hu")
def test_window_hu(xp):
    hu = np.random.default_rng(0).integers(-1024, 2000, size=(6, 7, 8)).astype(np.int16)
    got, want = pre.window_hu(xp.asarray(hu)), pre.window_hu(hu)
    _same(got, want, exact=False, tol=1e-4)
    ref = np.clip((hu.astype(np.float64) + 100.0) * 255.0 / 400.0, 0, 255)
    np.testing.assert_allclose(want, ref, atol=1e-3)


@covers("resize_linear")
@pytest.mark.parametrize(
    "shape_in,shape_out", [((17, 23, 31), (8, 9, 10)), ((5, 9, 7), (11, 9, 13))]
)
def test_resize_linear(xp, shape_in, shape_out):
    vol = np.random.default_rng(1).random(shape_in).astype(np.float32) * 300 - 100
    got = pre.resize_linear(xp.asarray(vol), shape_out, pointwise=pre.window_hu)
    want = pre.resize_linear(vol, shape_out, pointwise=pre.window_hu)
    _same(got, want, exact=False, tol=1e-3)
    zoom = [o / i for o, i in zip(shape_out, shape_in)]
    ref = ndi.zoom(pre.window_hu(vol).astype(np.float64), zoom, order=1, grid_mode=False)
    np.testing.assert_allclose(want, ref, atol=1e-3)


def _nearest_ref(vol, out_shape):
    """Brute force: output voxel i reads input round(i * (n_in - 1) / (n_out - 1))."""
    idx = [
        [int(np.rint(i * (n - 1) / (m - 1))) if m > 1 else 0 for i in range(m)]
        for n, m in zip(vol.shape, out_shape)
    ]
    out = np.empty(out_shape, dtype=vol.dtype)
    for a, i in enumerate(idx[0]):
        for b, j in enumerate(idx[1]):
            for c, k in enumerate(idx[2]):
                out[a, b, c] = vol[i, j, k]
    return out


@covers("resize_nearest")
def test_resize_nearest(xp):
    lab = np.random.default_rng(2).integers(0, 3, size=(9, 14, 11)).astype(np.uint8)
    got, want = pre.resize_nearest(xp.asarray(lab), (5, 20, 7)), pre.resize_nearest(lab, (5, 20, 7))
    _same(got, want)
    _same(want, _nearest_ref(lab, (5, 20, 7)))


@covers("normalise_network_input")
def test_normalise_network_input(xp):
    t = np.random.default_rng(3).integers(0, 256, size=(3, 1, 4, 5, 6)).astype(np.uint8)
    t[1] = 0  # an all-zero volume stays zero
    got, want = pre.normalise_network_input(xp.asarray(t)), pre.normalise_network_input(t)
    _same(got, want, exact=False, tol=1e-6)
    ref = (
        t.astype(np.float64)
        / np.maximum(t.reshape(3, -1).max(axis=1), 1)[:, None, None, None, None]
    )
    np.testing.assert_allclose(want, ref, rtol=1e-6)


@covers("preprocess", "preprocess_scan", "canonical_axes")
def test_preprocess_and_orientation(xp, phantoms):
    for p in phantoms:
        scan = p.to_scan()
        got, rec_x = pre.preprocess(xp.asarray(p.hu), p.spacing, p.direction, MODEL_SHAPE)
        windows, rec = pre.preprocess_scan(scan, MODEL_SHAPE)
        assert windows.shape == (1, 1, *MODEL_SHAPE)  # resize: one window
        want = windows[0]
        assert rec_x == rec and got.dtype == want.dtype == np.uint8
        diff = np.abs(to_numpy(got).astype(int) - want.astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3  # float ties at .5 only
        # Truth: SciPy on the array brought to canonical orientation by hand.
        canon = np.flip(np.transpose(p.hu, rec.axes), [a for a in range(3) if rec.flips[a]])
        zoom = [o / i for o, i in zip(MODEL_SHAPE, canon.shape)]
        ref = ndi.zoom(pre.window_hu(canon).astype(np.float64), zoom, order=1, grid_mode=False)
        assert np.abs(want[0].astype(float) - ref).max() <= 0.51


@covers("labels_to_model", "to_scan_grid")
def test_labels_to_model_and_back(xp, phantoms):
    for p in phantoms:
        small_x = pre.labels_to_model(xp.asarray(p.labels), p.direction, MODEL_SHAPE)
        small = pre.labels_to_model(p.labels, p.direction, MODEL_SHAPE)
        _same(small_x, small)
        _, rec = pre.preprocess(p.hu, p.spacing, p.direction, MODEL_SHAPE)
        back_x, back = pre.to_scan_grid(small_x, rec), pre.to_scan_grid(small, rec)
        _same(back_x, back)
        # Truth: brute-force nearest resampling of the canonical label map, and a round
        # trip that keeps the organs (Dice) on the scan's own grid.
        canon = np.flip(np.transpose(p.labels, rec.axes), [a for a in range(3) if rec.flips[a]])
        _same(small, _nearest_ref(np.ascontiguousarray(canon), MODEL_SHAPE))
        for v in (1, 2):
            a, b = back == v, p.labels == v
            assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.8


# --- preprocess: fixed-spacing mode (windows) -------------------------------------------------
# A small model box so that the phantoms need several windows on some axes and padding on others.
SPACING_SPEC = pre.PreprocessSpec("spacing", (16, 24, 20), (5.0, 6.0, 7.0), min_overlap=4)


@covers("as_spec", "grid_shape_for", "window_starts", "preprocess_grid", "preprocess_windows")
def test_preprocess_windows(xp, phantoms):
    for p in phantoms:
        got, rec_x = pre.preprocess_windows(xp.asarray(p.hu), p.spacing, p.direction, SPACING_SPEC)
        want, rec = pre.preprocess_windows(p.hu, p.spacing, p.direction, SPACING_SPEC)
        assert rec_x == rec and got.dtype == want.dtype == np.uint8 and len(rec.windows) > 1
        diff = np.abs(to_numpy(got).astype(int) - want.astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3  # float ties at .5 only
        grid, rec_g = pre.preprocess_grid(p.hu, p.spacing, p.direction, SPACING_SPEC)
        assert rec_g == rec and pre.as_spec(SPACING_SPEC) is SPACING_SPEC
        # Truth: the grid's shape from the physical extent, windows by hand, the resampled
        # crop by scipy.ndimage.map_coordinates on the canonical array.
        canon = np.flip(np.transpose(p.hu, rec.axes), [a for a in range(3) if rec.flips[a]])
        crop = canon[tuple(slice(lo, hi) for lo, hi in rec.crop)]
        for n, g, s, t in zip(crop.shape, rec.grid_shape, rec.canonical_spacing, (5, 6, 7)):
            assert abs(g - ((n - 1) * s / t + 1)) <= 0.5
        assert rec.grid_shape == pre.grid_shape_for(crop.shape, rec.canonical_spacing, (5, 6, 7))
        for a, (g, m) in enumerate(zip(rec.grid_shape, SPACING_SPEC.model_shape)):
            starts = sorted({w[a] for w in rec.windows})
            assert (starts, rec.pad[a]) == tuple(pre.window_starts(g, m, 4)[:2])
        for k, w in enumerate(rec.windows):
            cut = grid[tuple(slice(s, s + n) for s, n in zip(w, SPACING_SPEC.model_shape))]
            _same(want[k, 0], cut)
        coords = np.meshgrid(
            *[np.linspace(0, n - 1, g) for n, g in zip(crop.shape, rec.grid_shape)], indexing="ij"
        )
        ref = ndi.map_coordinates(pre.window_hu(crop).astype(np.float64), coords, order=1)
        inner = grid[tuple(slice(q, q + g) for q, g in zip(rec.pad, rec.grid_shape))]
        assert np.abs(inner.astype(float) - ref).max() <= 0.51


def _not_a_tie(n_in: int, n_out: int) -> np.ndarray:
    """Output indices whose align-corners source ``i * (n_in - 1) / (n_out - 1)`` is not an
    exact half (integer arithmetic)."""
    if n_out == 1:
        return np.arange(1)
    i = np.arange(n_out)
    return i[(2 * ((i * (n_in - 1)) % (n_out - 1))) != (n_out - 1)]


@covers("window_batch", "stitch_windows", "labels_to_grid")
def test_labels_through_windows_and_back(xp, phantoms):
    for p in phantoms:
        _, rec = pre.preprocess_windows(p.hu, p.spacing, p.direction, SPACING_SPEC)
        lab_x = pre.labels_to_grid(xp.asarray(p.labels), rec)
        lab = pre.labels_to_grid(p.labels, rec)
        _same(lab_x, lab)
        win_x, win = pre.window_batch(lab_x, rec), pre.window_batch(lab, rec)
        _same(win_x, win)
        st_x, st = pre.stitch_windows(win_x[:, 0], rec), pre.stitch_windows(win[:, 0], rec)
        _same(st_x, st)
        back_x, back = pre.to_scan_grid(win_x[:, 0], rec), pre.to_scan_grid(win[:, 0], rec)
        _same(back_x, back)
        # Truth: the label grid is brute-force nearest resampling of the canonical crop,
        # padded; windows of one grid stitch back to that grid; the organs come back.
        canon = np.flip(np.transpose(p.labels, rec.axes), [a for a in range(3) if rec.flips[a]])
        crop = np.ascontiguousarray(canon[tuple(slice(lo, hi) for lo, hi in rec.crop)])
        inner = tuple(slice(q, q + g) for q, g in zip(rec.pad, rec.grid_shape))
        # (Output voxels whose source is an exact .5 tie may round either way: left out.)
        no_tie = np.ix_(*[_not_a_tie(n, g) for n, g in zip(crop.shape, rec.grid_shape)])
        _same(lab[inner][no_tie], _nearest_ref(crop, rec.grid_shape)[no_tie])
        assert lab.sum() == lab[inner].sum()  # padding is background
        _same(st, lab[inner])
        for v in (1, 2):
            a, b = back == v, p.labels == v
            assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.7


@covers("body_box")
def test_body_box(xp):
    vol = np.full((12, 90, 100), -1000, np.int16)
    vol[:, 20:60, 15:80] = 30  # the body
    vol[:, 70:76, 5:95] = 200  # a table below it, separated by 10 voxels of air
    got = pre.body_box(xp.asarray(vol), (2.0, 1.0, 1.0), -500.0, 5.0)
    want = pre.body_box(vol, (2.0, 1.0, 1.0), -500.0, 5.0)
    assert got == want
    assert want[0] == (0, 12)  # all slices
    # Truth: the body's box +- 5 mm, to one coarse step (4 voxels at 1 mm); no table.
    for (lo, hi), (a, b) in zip(want[1:], ((20, 60), (15, 80))):
        assert abs(lo - (a - 5)) <= 4 and abs(hi - (b + 5)) <= 4
    assert want[1][1] <= 70


# --- postprocess: components -------------------------------------------------------------------
@covers("bounding_box")
def test_bounding_box(xp):
    m = _organ_mask(1)
    got, want = postprocess.bounding_box(xp.asarray(m)), postprocess.bounding_box(m)
    assert got == want
    pts = np.argwhere(m)
    assert want == tuple(slice(int(lo), int(hi) + 1) for lo, hi in zip(pts.min(0), pts.max(0)))
    assert postprocess.bounding_box(xp.zeros((3, 3, 3), dtype=bool)) is None


@covers("largest_connected_component")
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_largest_connected_component(xp, seed):
    m = _organ_mask(seed)
    got = postprocess.largest_connected_component(xp.asarray(m))
    want = postprocess.largest_connected_component(m)
    _same(got, want)
    lab, n = ndi.label(m, structure=np.ones((3, 3, 3)))
    sizes = np.bincount(lab.ravel())[1:]
    _same(want, lab == (int(np.argmax(sizes)) + 1))


@covers("keep_largest")
def test_keep_largest(xp):
    lab = _organ_mask(3).astype(np.uint8) + 2 * _organ_mask(4, shape=(20, 26, 30)) * (
        ~_organ_mask(3)
    )
    got, want = (
        postprocess.keep_largest(xp.asarray(lab), (1, 2)),
        postprocess.keep_largest(lab, (1, 2)),
    )
    _same(got, want)
    for v in (1, 2):
        cc, _ = ndi.label(lab == v, structure=np.ones((3, 3, 3)))
        biggest = np.argmax(np.bincount(cc.ravel())[1:]) + 1
        _same(want == v, cc == biggest)


@covers("organ_volume_ml", "touches_edge")
def test_volume_and_edge(xp):
    m = _organ_mask(5)
    sp = (2.5, 0.7, 0.8)
    assert postprocess.organ_volume_ml(xp.asarray(m), sp) == pytest.approx(
        postprocess.organ_volume_ml(m, sp), rel=1e-12
    )
    assert postprocess.organ_volume_ml(m, sp) == pytest.approx(m.sum() * 2.5 * 0.7 * 0.8 / 1000)
    inner = np.zeros((8, 8, 8), dtype=bool)
    inner[2:5, 3:6, 1:7] = True
    for arr, want in ((m, True), (inner, False)):
        faces = [np.take(arr, i, axis=a).any() for a in range(3) for i in (0, -1)]
        assert postprocess.touches_edge(xp.asarray(arr)) == postprocess.touches_edge(arr)
        assert postprocess.touches_edge(arr) == any(faces) == want


# --- postprocess: cubes ---------------------------------------------------------------------------
@covers("cube_size_voxels", "valid_cube_positions")
@pytest.mark.parametrize("margin", [(0, 0, 0), (1, 1, 1)])
def test_valid_cube_positions(xp, margin):
    z, y, x = np.ogrid[:20, :26, :30]
    m = ((z - 9) / 8.0) ** 2 + ((y - 12) / 10.0) ** 2 + ((x - 14) / 12.0) ** 2 <= 1
    m |= _organ_mask(6)  # an irregular surface
    size = postprocess.cube_size_voxels(3.0, (1.0, 0.75, 0.6))
    assert size == (3, 4, 5)
    got = postprocess.valid_cube_positions(xp.asarray(m), size, margin=margin)
    want = postprocess.valid_cube_positions(m, size, margin=margin)
    _same(got, want)
    ref = [
        (z, y, x)
        for z in range(m.shape[0])
        for y in range(m.shape[1])
        for x in range(m.shape[2])
        if z >= margin[0]
        and y >= margin[1]
        and x >= margin[2]
        and m[
            z - margin[0] : z + size[0] + margin[0],
            y - margin[1] : y + size[1] + margin[1],
            x - margin[2] : x + size[2] + margin[2],
        ].all()
        and z + size[0] + margin[0] <= m.shape[0]
        and y + size[1] + margin[1] <= m.shape[1]
        and x + size[2] + margin[2] <= m.shape[2]
    ]
    assert len(ref) > 20
    assert sorted(map(tuple, to_numpy(want).tolist())) == ref


@covers("sample_cubes", "cube_stats")
def test_sample_cubes_and_stats(xp):
    rng_hu = np.random.default_rng(7)
    hu = rng_hu.integers(-50, 150, size=(20, 26, 30)).astype(np.int16)
    pos = np.argwhere(np.ones((12, 15, 18), dtype=bool)).astype(np.int64)
    got = postprocess.sample_cubes(xp.asarray(pos), 40, np.random.default_rng(3))
    want = postprocess.sample_cubes(pos, 40, np.random.default_rng(3))
    _same(got, want)
    _same(want, pos[np.sort(np.random.default_rng(3).choice(len(pos), 40, replace=False))])
    size = (3, 4, 5)
    means_x, sds_x = postprocess.cube_stats(xp.asarray(hu), got, size)
    means, sds = postprocess.cube_stats(hu, want, size)
    _same(means_x, means, exact=False, tol=1e-12)
    _same(sds_x, sds, exact=False, tol=1e-12)
    for c, mu, sd in zip(want, means, sds):
        block = hu[c[0] : c[0] + 3, c[1] : c[1] + 4, c[2] : c[2] + 5].astype(np.float64)
        assert mu == pytest.approx(block.mean()) and sd == pytest.approx(block.std())


# --- postprocess: measurement -----------------------------------------------------------------------
@covers("measure_organ", "grade_ratio")
def test_measure_organ(xp, phantoms):
    p = phantoms[0]
    cfg = AssessConfig(seed=4)
    liver = p.labels == 1
    mx, fx = postprocess.measure_organ(
        xp.asarray(p.hu), xp.asarray(liver), p.spacing, "liver", cfg, np.random.default_rng(4)
    )
    m, f = postprocess.measure_organ(p.hu, liver, p.spacing, "liver", cfg, np.random.default_rng(4))
    assert fx == f and mx.cube_voxels == m.cube_voxels
    _same(mx.corners, m.corners)
    _same(mx.kept, m.kept)
    _same(mx.means, m.means, exact=False, tol=1e-9)
    s = m.cube_voxels
    direct = [p.hu[z : z + s[0], y : y + s[1], x : x + s[2]].mean() for z, y, x in m.corners]
    np.testing.assert_allclose(m.means, direct, rtol=1e-12)
    assert abs(m.hu - p.truth["liver_hu"]) < 5
    assert postprocess.grade_ratio(p.truth["ratio"]) == p.truth["grade"]


@covers("assess")
def test_assess(xp, phantoms):
    for p in phantoms:
        cfg = AssessConfig(seed=1)
        ax = postprocess.assess(
            xp.asarray(p.hu), xp.asarray(p.labels), p.spacing, cfg, direction=p.direction
        )
        a = postprocess.assess(p.hu, p.labels, p.spacing, cfg, direction=p.direction)
        _assert_rows_equal(ax.to_row(), a.to_row())
        assert a.grade == p.truth["grade"] and abs(a.ratio - p.truth["ratio"]) < 0.05


def _assert_rows_equal(rx: dict, r: dict):
    assert rx.keys() == r.keys()
    for k in r:
        if isinstance(r[k], float) and isinstance(rx[k], float):
            assert rx[k] == pytest.approx(r[k], rel=1e-9, abs=1e-9, nan_ok=True), k
        else:
            assert rx[k] == r[k], k


# --- a whole screen of two phantoms ----------------------------------------------------------------
def _screen_in_process(xp, p):
    """read -> preprocess -> (perfect) segmentation at model size -> back to grid -> assess."""
    hu = xp.asarray(p.hu)
    tensor, rec = pre.preprocess(hu, p.spacing, p.direction, SCREEN_MODEL_SHAPE)
    assert tensor.shape == (1, *SCREEN_MODEL_SHAPE)
    seg = pre.labels_to_model(xp.asarray(p.labels), p.direction, SCREEN_MODEL_SHAPE)
    labels = pre.to_scan_grid(seg, rec)
    return postprocess.assess(hu, labels, p.spacing, AssessConfig(seed=2), direction=p.direction)


def test_whole_screen_in_process(xp, phantoms):
    for p in phantoms:
        got, want = _screen_in_process(xp, p), _screen_in_process(np, p)
        _assert_rows_equal(got.to_row(), want.to_row())
        assert want.grade == p.truth["grade"], (want.ratio, p.truth)


@pytest.fixture(scope="module")
def archive(phantoms, tmp_path_factory):
    """The two phantoms as NIfTI scans plus their label maps (a --masks folder)."""
    import SimpleITK as sitk

    base = tmp_path_factory.mktemp("xp_archive")
    (base / "scans").mkdir()
    (base / "masks").mkdir()
    for i, p in enumerate(phantoms):
        scan = p.to_scan()
        sitk.WriteImage(scan.to_sitk(p.hu.astype(np.int16)), str(base / "scans" / f"p{i}.nii.gz"))
        sitk.WriteImage(
            scan.to_sitk(p.labels.astype(np.uint8)), str(base / "masks" / f"p{i}.nii.gz")
        )
    return base


def _cli_rows(base, out, gpu):
    from client.batch import main as batch_main

    argv = [str(base / "scans"), "-o", str(out), "--masks", str(base / "masks"), "--quiet"]
    rc = batch_main(argv + (["--device", "gpu"] if gpu else []))
    with open(out / "results.csv", newline="") as f:
        rows = {r["case_id"]: r for r in csv.DictReader(f)}
    return rc, rows


def test_whole_screen_through_the_cli(xp, archive, phantoms, tmp_path):
    """``python -m client.batch --masks`` on the two phantoms; ``--device gpu`` on the CuPy leg."""
    rc_cpu, cpu = _cli_rows(archive, tmp_path / "cpu", gpu=False)
    assert rc_cpu == 0 and set(cpu) == {"p0", "p1"}
    for i, p in enumerate(phantoms):
        row = cpu[f"p{i}"]
        assert row["status"] in ("ok", "flagged") and row["grade"] == p.truth["grade"], row
        assert abs(float(row["ratio"]) - p.truth["ratio"]) < 0.05
    if xp is np:
        return
    rc_gpu, gpu = _cli_rows(archive, tmp_path / "gpu", gpu=True)
    assert rc_gpu == 0
    skip = {"seconds", "stage_seconds", "source"}
    for case in cpu:
        for k, v in cpu[case].items():
            if k in skip:
                continue
            try:
                assert float(gpu[case][k]) == pytest.approx(float(v), rel=1e-9, abs=1e-9), k
            except ValueError:
                assert gpu[case][k] == v, (case, k)


# --- nothing left out ---------------------------------------------------------------------------------
def test_every_array_function_is_covered():
    """Every public array function of postprocess and client.reading.preprocess has a parity test here."""
    helpers = {"get_xp", "gpu_available"}
    public = {
        n
        for n in postprocess.__all__
        if n not in helpers and inspect.isfunction(getattr(postprocess, n))
    }
    public |= {
        n
        for n, f in vars(pre).items()
        if inspect.isfunction(f) and not n.startswith("_") and f.__module__ == pre.__name__
    }
    missing = sorted(public - COVERED)
    assert not missing, f"add a NumPy/CuPy parity test to tests/test_xp_parity.py for: {missing}"


def test_gpu_check_reason_is_specific():
    """Without a usable GPU the skip reason says why (and, for a compile failure, the fix)."""
    if GPU_OK:
        assert GPU_WHY.startswith("CuPy ")
        return
    assert GPU_WHY and (
        any(s in GPU_WHY for s in ("not installed", "no CUDA", "does not import", "no CUDA device"))
        or "; fix: " in GPU_WHY  # a kernel that failed: what failed, then the fix
    )


def test_cupy_has_every_array_function_the_code_calls():
    """Every ``xp.<name>`` / ``ndi.<name>`` used in postprocess and client.reading.preprocess exists in CuPy.

    Needs CuPy installed, not a GPU (CuPy imports without a driver): CI with the ``gpu``
    extra checks it; CuPy 13.6 had all 37 names used on the day this was written.
    """
    import ast
    from pathlib import Path

    cupy = pytest.importorskip("cupy", reason="CuPy is not installed (the 'gpu' extra)")
    import cupyx.scipy.ndimage as cndi

    root = Path(__file__).resolve().parents[1]
    files = sorted((root / "postprocess").glob("*.py")) + [root / "client" / "preprocess.py"]
    missing = []
    for f in files:
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in ("xp", "ndi")
            ):
                mod = cupy if node.value.id == "xp" else cndi
                if not hasattr(mod, node.attr):
                    missing.append(f"{f.name}: {node.value.id}.{node.attr}")
    assert not missing, missing


# --- the fast forms of issue 23 (summed windows, cc3d labelling, flat gathers) -------------------
@pytest.mark.parametrize("s", [1, 2, 3, 5, 8, 13, 16, 17])
def test_window_all_is_the_minimum_filter_it_replaced(xp, s):
    from postprocess.cubes import window_all

    rng = np.random.default_rng(s)
    a = rng.random((19, 23, 29)) < 0.85
    for axis in range(3):
        if a.shape[axis] < s:
            continue
        want = ndi.minimum_filter1d(a.astype(np.uint8), s, axis=axis, origin=-(s // 2),
                                    mode="constant", cval=0)  # fmt: skip
        sl = [slice(None)] * 3
        sl[axis] = slice(0, a.shape[axis] - s + 1)
        _same(window_all(xp.asarray(a), s, axis), want[tuple(sl)] > 0)


def test_label_26_numbers_components_as_scipy_on_either_path(xp, monkeypatch):
    from postprocess import components

    rng = np.random.default_rng(3)
    for _ in range(40):
        shape = tuple(int(n) for n in rng.integers(2, 24, 3))
        m = rng.random(shape) < rng.uniform(0.05, 0.6)
        want, n_want = ndi.label(m, structure=np.ones((3, 3, 3), bool))
        got, n_got = components.label_26(xp.asarray(m))
        assert n_got == n_want
        _same(got, want)
    monkeypatch.setattr(components, "_cc3d", None)  # the SciPy fallback gives the same
    got, n_got = components.label_26(m)
    assert n_got == n_want and np.array_equal(got, want)
