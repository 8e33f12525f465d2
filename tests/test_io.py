"""Reading scans: real DICOM edge cases, NIfTI validation, geometry, label maps."""

from __future__ import annotations

import gzip
import warnings

import numpy as np
import pytest
import SimpleITK as sitk

from client.core.errors import ScanReadError
from client.reading.dicom import write_series
from client.reading.io import read_label_map, read_scan, write_label_map
from client.reading.scan import ScanVolume

warnings.filterwarnings("ignore", category=UserWarning, module="pydicom")

RELAXED = dict(min_slices=3, require_ct=False, check_hu=False)


@pytest.fixture(scope="module")
def edge(shared_data):
    return shared_data / "dicom_edge_cases"


@pytest.fixture(scope="module")
def real_ct(shared_data):
    ct = read_scan(shared_data / "totalseg_example" / "ct.nii.gz")
    labels = read_label_map(shared_data / "totalseg_example" / "labels.nii.gz", ct)
    return ct, labels


# --- DICOM edge cases ----------------------------------------------------------------
def test_philips_study_yields_only_the_axial_series(edge):
    scan = read_scan(edge / "philips_study_multiseries")
    assert scan.shape == (28, 512, 512)  # S2010: 28 axial slices, not the scout or dose screens
    assert scan.metadata["modality"] == "CT"
    assert scan.metadata["n_series_in_folder"] >= 3
    assert scan.spacing[0] == pytest.approx(5.0, abs=0.01)
    # Slices are sorted along the normal: origin is the lowest slice position.
    assert np.allclose(np.abs(scan.direction), np.eye(3), atol=1e-3)
    assert scan.array.dtype == np.int16
    assert not any(k in scan.metadata for k in ("PatientName", "patient_name", "PatientID"))


def test_philips_scout_and_dose_folders_alone_are_refused(edge):
    with pytest.raises(ScanReadError, match="localizer"):
        read_scan(edge / "philips_study_multiseries" / "S1000")
    with pytest.raises(ScanReadError, match="secondary capture"):
        read_scan(edge / "philips_study_multiseries" / "S4010")


def test_gantry_tilt_is_corrected_onto_a_regular_grid(edge):
    scan = read_scan(edge / "ge_head_ct_gantry_tilt")
    notes = ";".join(scan.metadata["notes"])
    assert "gantry_tilt_corrected (18.5 deg)" in notes
    # Non-uniform slice spacing (1.14 / 4.22 / 7.38 mm) was regularised, not ignored.
    assert "resampled_nonuniform_spacing" in notes
    assert scan.shape[0] > 28 and scan.spacing[0] == pytest.approx(4.0, abs=0.1)
    # Head CT: brain and skull are still there after the in-plane shifts.
    assert (scan.array > 1000).any() and ((scan.array > 0) & (scan.array < 80)).mean() > 0.05


def test_tilt_shift_follows_the_tilt_angle(edge):
    """After correction the head's in-plane centre does not drift with z.

    Uncorrected, a tilted series drifts by tan(tilt) * dz per slice (18.5 deg: 0.33 mm/mm).
    """
    scan = read_scan(edge / "ge_head_ct_gantry_tilt")
    head = scan.array > -300
    zs = [k for k in range(head.shape[0]) if head[k].sum() > 2000]
    cy = np.array([np.nonzero(head[k])[0].mean() for k in zs]) * scan.spacing[1]
    slope = np.polyfit(np.array(zs) * scan.spacing[0], cy, 1)[0]
    assert abs(slope) < 0.15  # mm per mm; tilt left in place would give ~0.33


@pytest.mark.parametrize(
    "name",
    ["compressed", "compressed_j2k", "compressed_jpeg", "compressed_jpegls", "compressed_rle"],
)
def test_compressed_series_decode_and_match_ground_truth(edge, name):
    folder = edge / "dicom2nifti_compressed" / name
    scan = read_scan(folder / "001", **RELAXED)
    truth = sitk.ReadImage(str(folder / "001_ground_truth.nii.gz"))
    ours = scan.to_sitk(scan.array.astype(np.float32))
    resampled = sitk.GetArrayFromImage(
        sitk.Resample(
            sitk.Cast(truth, sitk.sitkFloat32),
            ours,
            sitk.Transform(),
            sitk.sitkNearestNeighbor,
            -9999,
        )
    )
    valid = resampled != -9999
    assert valid.mean() > 0.95
    assert np.array_equal(resampled[valid], scan.array[valid].astype(np.float32))


def test_mr_is_refused_as_not_ct(edge):
    with pytest.raises(ScanReadError, match="expected a CT series, got modality MR"):
        read_scan(edge / "dicom2nifti_compressed" / "compressed" / "001")


@pytest.mark.parametrize(
    "rel, kwargs, match",
    [
        ("dicom2nifti_failing/notavolume/001", RELAXED, "not a volume: .* same position"),
        ("dicom2nifti_failing/slicecount/001", RELAXED, "at least 3 slices, got at most 2"),
        ("dicom2nifti_failing/sliceorientation/001", RELAXED, "mixed orientations"),
        ("pydicom_files/MR_truncated.dcm", RELAXED, "truncated pixel data"),
        ("pydicom_files/rtstruct.dcm", {}, "RT structure set"),
        ("pydicom_files/liver_1frame.dcm", {}, "DICOM SEG"),
        ("pydicom_files/CT_small.dcm", {}, "got a single 2D slice"),
        ("pydicom_files/MR_small.dcm", {}, "got modality MR"),
        ("LICENSE.dicom2nifti", {}, "not an image"),
    ],
)
def test_bad_dicom_gives_clear_errors(edge, rel, kwargs, match):
    with pytest.raises(ScanReadError, match=match) as info:
        read_scan(edge / rel, **kwargs)
    assert str(edge / rel) in str(info.value)  # the message names the file


def test_missing_slice_is_interpolated_when_small(edge):
    scan = read_scan(edge / "dicom2nifti_failing" / "sliceincrement" / "001", **RELAXED)
    assert "resampled_nonuniform_spacing" in ";".join(scan.metadata["notes"])
    assert scan.shape[0] == 5  # 4 slices with one 10 mm gap -> 5 at 5 mm


def test_large_gap_is_refused(tmp_path, real_ct):
    ct, _ = real_ct
    paths = write_series(ct, tmp_path / "series", shuffle_seed=1)
    for p in sorted(paths, key=lambda p: int(sitk.ReadImage(str(p)).GetMetaData("0020|0013")))[
        40:46
    ]:
        p.unlink()  # 6 missing slices of 3 mm: an 21 mm hole
    with pytest.raises(ScanReadError, match="missing slices"):
        read_scan(tmp_path / "series")


# --- geometry: NIfTI vs DICOM written from it -----------------------------------------
def test_dicom_written_from_real_ct_measures_the_same(tmp_path, real_ct):
    ct, labels = real_ct
    write_series(ct, tmp_path / "dcm", shuffle_seed=7)  # no extensions, shuffled names
    (tmp_path / "dcm" / "DIRFILE").write_bytes(b"not dicom")
    d = read_scan(tmp_path / "dcm")
    assert d.shape == ct.shape and np.allclose(d.spacing, ct.spacing)
    assert np.allclose(d.origin, ct.origin, atol=1e-3)
    assert np.allclose(d.direction, ct.direction, atol=1e-6)
    liver = labels == 1
    assert float(d.array[liver].mean()) == pytest.approx(float(ct.array[liver].mean()), abs=1e-6)
    assert 40 < float(ct.array[liver].mean()) < 50  # README: liver about 44 HU


def test_integer_hu_stays_integer(real_ct):
    ct, _ = real_ct
    assert ct.array.dtype == np.int16
    assert ct.array.min() < -900  # air, in HU


# --- NIfTI / NRRD / MHA validation ------------------------------------------------------
def _write(img, path):
    sitk.WriteImage(img, str(path))
    return path


def test_formats_agree(tmp_path, real_ct):
    ct, _ = real_ct
    for suffix in (".nrrd", ".mha", ".nii"):
        p = _write(ct.to_sitk(), tmp_path / f"ct{suffix}")
        s = read_scan(p)
        assert np.array_equal(s.array, ct.array) and np.allclose(s.direction, ct.direction)
        assert np.allclose(s.origin, ct.origin, atol=1e-3)


def test_2d_image_is_refused(tmp_path):
    img = sitk.GetImageFromArray(np.full((64, 64), -1000, np.int16))
    with pytest.raises(ScanReadError, match="expected a 3D volume, got a 2D image"):
        read_scan(_write(img, tmp_path / "slice.nii.gz"))


def test_single_slice_volume_is_refused(tmp_path):
    img = sitk.GetImageFromArray(np.full((1, 64, 64), -1000, np.int16))
    with pytest.raises(ScanReadError, match="2D image"):
        read_scan(_write(img, tmp_path / "one.nii.gz"))


def test_4d_takes_first_volume_and_says_so(tmp_path, real_ct):
    ct, _ = real_ct
    a = np.stack([ct.array, ct.array + 100])
    img = sitk.GetImageFromArray(a, isVector=False)
    s = read_scan(_write(img, tmp_path / "ct4d.nii.gz"))
    assert np.array_equal(s.array, ct.array)
    assert "4d_first_volume_only" in ";".join(s.metadata["notes"])


def test_not_hu_is_refused(tmp_path, real_ct):
    ct, _ = real_ct
    raw = (ct.array.astype(np.int32) + 1024).astype(np.uint16)  # intercept forgotten
    with pytest.raises(ScanReadError, match="implausible HU range"):
        read_scan(_write(ct.to_sitk(raw), tmp_path / "raw.nii.gz"))


def test_absurd_spacing_is_refused(tmp_path, real_ct):
    ct, _ = real_ct
    img = ct.to_sitk()
    img.SetSpacing((300.0, 3.0, 3.0))
    with pytest.raises(ScanReadError, match="absurd voxel spacing"):
        read_scan(_write(img, tmp_path / "sp.nii.gz"))


def test_truncated_empty_and_garbage_files(tmp_path, shared_data):
    src = (shared_data / "totalseg_example" / "ct.nii.gz").read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(src[: len(src) // 3])
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    (tmp_path / "garbage.nii.gz").write_bytes(gzip.compress(b"hello" * 100))
    with pytest.raises(ScanReadError, match="cut.nii.gz: truncated"):
        read_scan(tmp_path / "cut.nii.gz")
    with pytest.raises(ScanReadError, match="empty file"):
        read_scan(tmp_path / "empty.nii.gz")
    with pytest.raises(ScanReadError, match="garbage.nii.gz"):
        read_scan(tmp_path / "garbage.nii.gz")
    with pytest.raises(ScanReadError, match="no such file"):
        read_scan(tmp_path / "absent.nii.gz")


def test_empty_folder_is_an_empty_series(tmp_path):
    (tmp_path / "series").mkdir()
    (tmp_path / "series" / "DIRFILE").write_bytes(b"\x00" * 200)
    with pytest.raises(ScanReadError, match="empty series"):
        read_scan(tmp_path / "series")


# --- label maps ---------------------------------------------------------------------------
def test_label_map_written_aligned_with_scan(tmp_path, real_ct):
    ct, labels = real_ct
    for suffix in (".nii.gz", ".nrrd"):
        p = write_label_map(labels, ct, tmp_path / f"mask{suffix}")
        img = sitk.ReadImage(str(p))
        ref = ct.to_sitk()
        assert img.GetSize() == ref.GetSize()
        assert np.allclose(img.GetSpacing(), ref.GetSpacing())
        assert np.allclose(img.GetOrigin(), ref.GetOrigin())
        assert np.allclose(img.GetDirection(), ref.GetDirection())
        assert np.array_equal(read_label_map(p, ct), labels)
    assert not list(tmp_path.glob(".tmp-*"))  # atomic write left nothing behind


def test_label_map_in_other_orientation_is_resampled(tmp_path, real_ct):
    ct, labels = real_ct
    flipped = ScanVolume(ct.array[:, ::-1, :].copy(), ct.spacing, ct.origin, ct.direction)
    # Same physical content stored with the y axis reversed.
    flipped.origin = tuple(
        np.asarray(ct.origin) + ct.direction[:, 1] * ct.spacing[1] * (ct.shape[1] - 1)
    )
    flipped.direction = ct.direction @ np.diag([1.0, -1.0, 1.0])
    p = write_label_map(labels[:, ::-1, :], flipped, tmp_path / "flipped.nii.gz")
    assert np.array_equal(read_label_map(p, ct), labels)


def test_totalsegmentator_label_values(tmp_path, real_ct):
    ct, labels = real_ct
    ts = np.zeros_like(labels)
    ts[labels == 1] = 5
    ts[labels == 2] = 1
    p = write_label_map(ts, ct, tmp_path / "ts.nii.gz")
    assert np.array_equal(read_label_map(p, ct, "totalsegmentator"), labels)


def test_axial_series_preferred_over_a_larger_coronal_reformat(tmp_path, real_ct):
    import shutil

    ct, _ = real_ct
    axial = ScanVolume(ct.array[:20], ct.spacing, ct.origin, ct.direction)  # 20 axial slices
    # Coronal reformat: 101 slices, slice normal along the patient's y axis.
    cor = np.ascontiguousarray(np.transpose(ct.array, (1, 0, 2)))
    d = np.array([[-1.0, 0, 0], [0, 0, -1.0], [0, 1.0, 0]])  # columns: row, column, normal (+y)
    coronal = ScanVolume(cor, (ct.spacing[1], ct.spacing[0], ct.spacing[2]), ct.origin, d)
    write_series(axial, tmp_path / "a", shuffle_seed=1)
    write_series(coronal, tmp_path / "c", shuffle_seed=2)
    study = tmp_path / "study"
    shutil.copytree(tmp_path / "a", study / "axial")
    shutil.copytree(tmp_path / "c", study / "coronal")
    s = read_scan(study)
    assert s.shape[0] == 20 and abs(s.direction[2, 2]) > 0.99


# --- gzip NIfTI read and written through ISA-L: exactly what ITK gives ---------------------------
def _nifti_gz(path, array, spacing=(0.8, 0.7, 2.5), origin=(-120.0, 33.0, 610.5), direction=None):
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection(direction or (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    sitk.WriteImage(img, str(path), useCompression=True)
    return path


def _assert_same_as_itk(scan, path):
    img = sitk.ReadImage(str(path))
    ref = sitk.GetArrayFromImage(img)
    assert np.array_equal(scan.array, ref) and scan.array.flags.writeable
    assert scan.spacing == tuple(img.GetSpacing())[::-1] and scan.origin == img.GetOrigin()
    assert np.array_equal(scan.direction.ravel(), np.asarray(img.GetDirection()))
    # the same signs too (-0.0 would be written "-0" into DICOM orientation)
    assert str(scan.direction.ravel().tolist()) == str([v + 0.0 for v in img.GetDirection()])
    assert str(list(scan.origin)) == str([v + 0.0 for v in img.GetOrigin()])


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.int32, np.uint16])
def test_gzip_nifti_integers_are_inflated_once_outside_itk_and_equal_itk(
    tmp_path, dtype, monkeypatch
):
    rng = np.random.default_rng(3)
    hi = 200 if dtype == np.uint8 else 3000
    arr = rng.integers(0, hi, (12, 40, 36)).astype(dtype)
    arr[0, 0, 0] = 0
    path = _nifti_gz(tmp_path / "a.nii.gz", arr)
    # ITK must not read the voxels: only its header read is used
    monkeypatch.setattr(
        sitk.ImageFileReader, "Execute", lambda self: pytest.fail("ITK read the voxels")
    )
    scan = read_scan(path, **RELAXED)
    monkeypatch.undo()
    _assert_same_as_itk(scan, path)


def test_gzip_nifti_big_endian_equals_itk(tmp_path):
    arr = np.arange(8 * 20 * 24, dtype=np.int16).reshape(8, 20, 24) - 900
    path = _nifti_gz(tmp_path / "le.nii.gz", arr)
    raw = bytearray(gzip.decompress(path.read_bytes()))
    # swap every header field ITK reads (the whole 348 bytes are ints/floats/chars) by re-packing
    import struct

    le = bytes(raw[:348])
    fmt = "i10s18sihbb8h3f4h8f3fhbb4f2i80s24s2h6f12f16s4s"  # the NIfTI-1 header layout
    fields = struct.unpack("<" + fmt, le)
    be_head = struct.pack(">" + fmt, *fields)
    data = np.frombuffer(bytes(raw[352:]), "<i2").astype(">i2").tobytes()
    big = tmp_path / "be.nii.gz"
    big.write_bytes(gzip.compress(be_head + bytes(raw[348:352]) + data))
    scan = read_scan(big, **RELAXED)
    _assert_same_as_itk(scan, big)
    assert np.array_equal(scan.array, arr)


def test_gzip_nifti_with_scaling_or_float_is_left_to_itk_and_equal(tmp_path):
    arr = np.random.default_rng(4).integers(-1000, 1000, (10, 30, 30)).astype(np.int16)
    path = _nifti_gz(tmp_path / "s.nii.gz", arr)
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[112:120] = np.array([2.0, -1024.0], "<f4").tobytes()  # scl_slope, scl_inter
    scaled = tmp_path / "scaled.nii.gz"
    scaled.write_bytes(gzip.compress(bytes(raw)))
    scan = read_scan(scaled, **RELAXED)
    _assert_same_as_itk(scan, scaled)
    flt = _nifti_gz(tmp_path / "f.nii.gz", arr.astype(np.float32) + 0.5)
    _assert_same_as_itk(read_scan(flt, **RELAXED), flt)


def test_gzip_nifti_truncated_is_refused_naming_the_file(tmp_path):
    arr = np.random.default_rng(5).integers(-1000, 1000, (10, 64, 64)).astype(np.int16)
    path = _nifti_gz(tmp_path / "t.nii.gz", arr)
    data = path.read_bytes()
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ScanReadError, match="cut.nii.gz: truncated"):
        read_scan(cut, **RELAXED)


def test_real_ct_reads_as_itk_reads_it(shared_data):
    path = shared_data / "totalseg_example" / "ct.nii.gz"
    _assert_same_as_itk(read_scan(path), path)


def test_written_mask_decompresses_to_itks_own_file_and_is_reproducible(tmp_path, real_ct):
    ct, labels = real_ct
    ours = write_label_map(labels, ct, tmp_path / "ours.nii.gz")
    again = write_label_map(labels, ct, tmp_path / "again.nii.gz")
    itk = tmp_path / "itk.nii.gz"
    sitk.WriteImage(ct.to_sitk(labels.astype(np.uint8)), str(itk), useCompression=True)
    assert gzip.decompress(ours.read_bytes()) == gzip.decompress(itk.read_bytes())
    assert ours.read_bytes() == again.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "again.nii.gz",
        "itk.nii.gz",
        "ours.nii.gz",
    ]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_written_mask_header_is_itks_for_any_geometry(tmp_path, seed):
    """Shapes, spacings, origins and oblique directions: the same decompressed file as
    ITK writes (its qform/sform, dims and voxel order)."""
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in rng.integers(3, 40, 3))
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    like = ScanVolume(
        array=np.zeros(shape, np.int16),
        spacing=tuple(float(s) for s in rng.uniform(0.3, 5.0, 3)),
        origin=tuple(float(o) for o in rng.uniform(-300, 300, 3)),
        direction=q if seed else np.eye(3),
    )
    labels = rng.integers(0, 13, shape).astype(np.uint8)
    ours = write_label_map(labels, like, tmp_path / "ours.nii.gz")
    itk = tmp_path / "itk.nii.gz"
    sitk.WriteImage(like.to_sitk(labels), str(itk), useCompression=True)
    assert gzip.decompress(ours.read_bytes()) == gzip.decompress(itk.read_bytes())
    back = sitk.ReadImage(str(ours))
    assert np.array_equal(sitk.GetArrayFromImage(back), labels)
