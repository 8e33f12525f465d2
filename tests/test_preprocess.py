"""Preprocessing: HU window, resampling against SciPy, exact orientation handling, round trips."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage as ndi

from client.contract import ORIGINAL_MODEL_SHAPE
from client.io import read_label_map, read_scan
from client.preprocess import (
    labels_to_model,
    normalise_network_input,
    preprocess,
    preprocess_scan,
    resize_linear,
    to_scan_grid,
    window_hu,
)
from client.scan import ScanVolume


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
    """training.samples builds its images with client.preprocess.preprocess."""
    import inspect

    import training.samples as samples

    src = inspect.getsource(samples)
    assert "from client.preprocess import labels_to_model, preprocess" in src
    ct, labels = real_ct
    t, rec = preprocess(ct.array, ct.spacing, ct.direction, (64, 64, 64))
    assert t.dtype == np.uint8 and t.shape == (1, 64, 64, 64)
    assert rec.scan_shape == ct.shape
