"""The per-scan pipeline as a library (client.pipeline.screen): segmenters, covariates, mask checks."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from client.core import contract
from client.core.errors import ConfigError
from client.pipeline.screen import ScreenConfig, screen_scan
from client.pipeline.segmenters import MaskFolderSegmenter, Segmenter, check_mask_matches_scan
from client.reading.discover import discover

warnings.filterwarnings("ignore", category=UserWarning, module="pydicom")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def real(shared_data):
    d = shared_data / "totalseg_example"
    return d / "ct.nii.gz", d / "labels.nii.gz"


def _reference_ratio(ct: Path, labels: Path) -> float:
    """Mean HU inside the masks (independent of the cube sampling)."""
    hu = sitk.GetArrayFromImage(sitk.ReadImage(str(ct))).astype(float)
    lab = sitk.GetArrayFromImage(sitk.ReadImage(str(labels)))
    return hu[lab == 1].mean() / hu[lab == 2].mean()


def _masks_dir(tmp_path, labels: Path, name="ct"):
    m = tmp_path / "masks"
    m.mkdir(exist_ok=True)
    shutil.copyfile(labels, m / f"{name}.nii.gz")
    return m


def test_screen_scan_with_a_mask_folder_on_real_ct(tmp_path, real):
    ct, labels = real
    seg = MaskFolderSegmenter(_masks_dir(tmp_path, labels))
    assert isinstance(seg, Segmenter)
    res = screen_scan(ct, seg, ScreenConfig())  # a bare path: case_id from its name
    assert res.case_id == "ct" and res.status in ("ok", "flagged") and res.error == ""
    assert res.grade == "normal"
    assert abs(res.row["ratio"] - _reference_ratio(ct, labels)) < 0.1
    assert res.labels.shape == res.assessment.liver.corners.shape[:0] + (112, 101, 122)
    assert set(res.row) <= set(contract.RESULT_COLUMNS)
    assert res.files == {}  # no out_dir: nothing written
    assert res.stage_seconds["read"] > 0 and res.stage_seconds["measure"] > 0
    assert res.row["seconds_infer"] == 0.0  # no model with --masks


def test_outputs_go_to_out_dir(tmp_path, real):
    ct, labels = real
    src = discover([ct]).sources[0]
    cfg = ScreenConfig(out_dir=tmp_path / "o")
    res = screen_scan(src, MaskFolderSegmenter(_masks_dir(tmp_path, labels)), cfg)
    assert res.files["qc"] == tmp_path / "o" / "qc" / "ct.png" and res.files["qc"].stat().st_size
    assert "mask" not in res.files  # the user's own masks are not copied


def test_config_is_frozen_and_validated():
    cfg = ScreenConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.device = "gpu"
    with pytest.raises(ConfigError, match="device"):
        ScreenConfig(device="tpu")


def test_a_bad_scan_is_an_error_result_not_an_exception(tmp_path, real):
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not a scan at all" * 40)
    res = screen_scan(bad, MaskFolderSegmenter(tmp_path))
    assert res.status == "error" and res.grade == "indeterminate"
    assert str(bad) in res.error and res.assessment is None


def test_mask_of_another_scan_is_refused(tmp_path, real, shared_data):
    ct, _ = real
    small = shared_data / "totalseg_example" / "labels_small.nii.gz"  # a 30-slice crop
    res = screen_scan(ct, MaskFolderSegmenter(_masks_dir(tmp_path, small)))
    assert res.status == "error" and "mask does not match scan" in res.error
    # Same voxels, another spacing: another physical box.
    img = sitk.ReadImage(str(real[1]))
    img.SetSpacing((2.0, 2.0, 2.0))
    sitk.WriteImage(img, str(tmp_path / "masks" / "ct.nii.gz"))
    res = screen_scan(ct, MaskFolderSegmenter(tmp_path / "masks"))
    assert res.status == "error" and "mask does not match scan" in res.error


def test_mask_stored_in_another_orientation_is_resampled(tmp_path, real):
    ct, labels = real
    img = sitk.ReadImage(str(labels))
    flipped = sitk.Flip(img, [True, False, True])  # same physical box, other storage order
    assert flipped.GetDirection() != img.GetDirection()
    (tmp_path / "m").mkdir()
    sitk.WriteImage(flipped, str(tmp_path / "m" / "ct.nii.gz"))
    check_mask_matches_scan(tmp_path / "m" / "ct.nii.gz", discover([ct]).sources[0].read())
    a = screen_scan(ct, MaskFolderSegmenter(tmp_path / "m"))
    b = screen_scan(ct, MaskFolderSegmenter(_masks_dir(tmp_path, labels)))
    assert a.status == b.status and a.row["ratio"] == b.row["ratio"]
    assert np.array_equal(a.labels, b.labels)


def test_totalsegmentator_per_organ_folders(tmp_path, real):
    ct, labels = real
    img = sitk.ReadImage(str(labels))
    arr = sitk.GetArrayFromImage(img)
    organ_dir = tmp_path / "ts" / "ct"
    organ_dir.mkdir(parents=True)
    for name, value in (("liver", 1), ("spleen", 2)):
        m = sitk.GetImageFromArray((arr == value).astype(np.uint8))
        m.CopyInformation(img)
        sitk.WriteImage(m, str(organ_dir / f"{name}.nii.gz"))
    a = screen_scan(ct, MaskFolderSegmenter(tmp_path / "ts"))
    b = screen_scan(ct, MaskFolderSegmenter(_masks_dir(tmp_path, labels)))
    assert a.status == b.status and a.row["ratio"] == b.row["ratio"]
    assert np.array_equal(a.labels, b.labels)
    (organ_dir / "spleen.nii.gz").unlink()
    c = screen_scan(ct, MaskFolderSegmenter(tmp_path / "ts"))
    assert c.status == "error" and "spleen.nii.gz" in c.error


def _dicom_phantom(folder: Path):
    import pydicom

    from client.reading.dicom import write_series
    from training.phantoms import make_phantom

    p = make_phantom(3, shape=(40, 96, 96), grade="mild")
    write_series(p.to_scan(), folder / "series", shuffle_seed=1)
    frame_uid = pydicom.uid.generate_uid()
    for f in (folder / "series").iterdir():
        ds = pydicom.dcmread(f)
        ds.FrameOfReferenceUID = frame_uid  # as a scanner writes it (DICOM SEG needs it)
        ds.Manufacturer, ds.ManufacturerModelName = "ACME", "Scanner 9000"
        ds.PatientName, ds.PatientBirthDate = "Doe^Jane", "19700101"
        ds.save_as(f)
    lab = sitk.GetImageFromArray(p.labels)
    lab.CopyInformation(p.to_scan().to_sitk())
    (folder / "masks").mkdir()
    sitk.WriteImage(lab, str(folder / "masks" / "series.nii.gz"))
    return ds


def test_acquisition_covariates_and_uids_only_on_request(tmp_path):
    ds = _dicom_phantom(tmp_path)
    seg = MaskFolderSegmenter(tmp_path / "masks")
    res = screen_scan(tmp_path / "series", seg)
    assert res.status != "error", res.error
    r = res.row
    assert (r["manufacturer"], r["manufacturer_model"]) == ("ACME", "Scanner 9000")
    assert r["kvp"] == 120.0 and r["convolution_kernel"] == "STANDARD"
    assert r["series_description"] == "HepaScreen test series"
    assert r["slice_thickness_mm"] == pytest.approx(float(ds.SliceThickness))
    assert r.get("study_instance_uid") is None and r.get("series_instance_uid") is None
    text = repr(r)
    assert "Doe" not in text and "1970" not in text and str(ds.SeriesInstanceUID) not in text
    linked = screen_scan(tmp_path / "series", seg, ScreenConfig(link_uids=True)).row
    assert linked["series_instance_uid"] == str(ds.SeriesInstanceUID)
    assert linked["study_instance_uid"] == str(ds.StudyInstanceUID)


def test_gpu_model_config_differs_from_the_cpu_one_only_in_device():
    base = ROOT / "model_repository" / "cpu" / contract.MODEL_NAME
    strip = lambda t: [ln for ln in t.splitlines() if ln.strip() and not ln.startswith("#")]  # noqa: E731
    cpu = strip((base / "config.pbtxt").read_text(encoding="utf-8"))
    gpu = strip((base / "configs" / "gpu.pbtxt").read_text(encoding="utf-8"))
    diff = [(a.strip(), b.strip()) for a, b in zip(cpu, gpu) if a != b]
    assert len(cpu) == len(gpu)
    assert diff == [
        ("kind: KIND_CPU", "kind: KIND_GPU"),
        ('value: { string_value: "cpu" }', 'value: { string_value: "gpu" }'),
    ]


def _readme_library_code() -> str:
    """Every python block of the README's Library section, in order (one program)."""
    section = (
        (ROOT / "README.md")
        .read_text(encoding="utf-8")
        .split("## Library", 1)[1]
        .split("\n## ", 1)[0]
    )
    return "\n".join(re.findall(r"```python\n(.*?)```", section, re.S))


@pytest.mark.server
@pytest.mark.slow
def test_readme_library_example_runs_as_written(tmp_path, real):
    shutil.copyfile(real[0], tmp_path / "ct.nii.gz")
    _masks_dir(tmp_path, real[1])
    out = subprocess.run(
        [sys.executable, "-c", _readme_library_code()],
        cwd=tmp_path,
        capture_output=True,
        encoding="utf-8",
        timeout=300,
        env={**__import__("os").environ, "PYTHONPATH": str(ROOT)},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    served, measured = out.stdout.splitlines()
    assert served.split()[0] in ("ok", "flagged") and served.split()[1] in contract.GRADES
    liver, spleen, qc = measured.split()
    assert 40 < float(liver) < 50 and 28 < float(spleen) < 38  # data README: about 44 and 33
    assert (tmp_path / qc).stat().st_size > 0


@pytest.mark.server
def test_bundled_server_loads_the_gpu_config_for_device_gpu(tmp_path):
    """The real server picks configs/gpu.pbtxt; without a GPU it refuses its GPU instance.

    (ONNX Runtime's CUDA provider itself cannot run here: no GPU on this machine type.)
    """
    from client.core.errors import InferenceError
    from client.pipeline.segmenters import TritonSegmenter
    from postprocess import gpu_available

    if gpu_available():
        pytest.skip("a GPU is present: this checks the refusal without one")
    log = tmp_path / "server.log"
    with pytest.raises(InferenceError):
        TritonSegmenter.bundled(device="gpu", log_path=log, ready_timeout_s=60)
    text = log.read_text(encoding="utf-8")
    assert "model_config_name                | gpu" in text
    assert "has kind KIND_GPU but no GPUs are available" in text


def test_mask_problems_are_error_rows_that_name_the_file(tmp_path, real):
    import gzip

    ct, labels = real
    m = tmp_path / "m"
    m.mkdir()
    (m / "ct.nii.gz").mkdir()  # a folder where the label map should be
    res = screen_scan(ct, MaskFolderSegmenter(m))
    assert res.status == "error" and "found a folder" in res.error and "ct.nii.gz" in res.error
    (m / "ct.nii.gz").rmdir()
    raw = gzip.decompress(labels.read_bytes())
    (m / "ct.nii").write_bytes(raw[: len(raw) // 2])  # cut in half
    res = screen_scan(ct, MaskFolderSegmenter(m))
    assert res.status == "error" and "truncated" in res.error and "ct.nii" in res.error
    (m / "ct.nii").unlink()
    res = screen_scan(ct, MaskFolderSegmenter(m))
    assert res.status == "error" and "label map not found" in res.error
