"""The OUT layout has one home (client.outputs.results.case_files): the screen writes a
case's files where it says, and merge links those files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pydicom

from client.outputs import results
from client.outputs.results import case_files
from client.reading.dicom import write_series
from client.reading.io import read_scan
from client.reading.labels_sidecar import sidecar_paths
from client.scaleout.merge import merge


def test_case_files_names_every_per_scan_file(tmp_path):
    f = case_files(tmp_path, "c1")
    assert f.mask == tmp_path / "masks" / "c1.nii.gz"
    assert (f.slicer, f.itksnap) == (
        sidecar_paths(f.mask)["slicer"],
        sidecar_paths(f.mask)["itksnap"],
    )
    assert f.slicer.name == "c1.ctbl" and f.itksnap.name == "c1.itksnap.txt"
    assert f.qc == tmp_path / "qc" / "c1.png"
    assert f.seg == tmp_path / "dicom" / "c1.seg.dcm"
    assert f.sr == tmp_path / "dicom" / "c1.sr.dcm"
    assert f.qc_dcm == tmp_path / "dicom" / "c1.qc.dcm"
    assert f.screen_outputs() == (f.mask, f.slicer, f.itksnap, f.qc, f.seg, f.sr)
    # every folder of the layout is one --overwrite removes
    assert {p.parent.name for p in f.screen_outputs()} <= set(results.OUTPUT_NAMES)


def test_the_screen_writes_and_merge_links_where_case_files_says(tmp_path, shared_data):
    from client import MaskFolderSegmenter, ScreenConfig, screen_scan

    d = shared_data / "totalseg_example"
    folder = tmp_path / "in" / "c1"
    for f in write_series(read_scan(d / "ct_small.nii.gz"), folder):
        ds = pydicom.dcmread(f)
        ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.7"
        ds.save_as(f)
    masks = tmp_path / "masks"
    masks.mkdir()
    shutil.copyfile(d / "labels_small.nii.gz", masks / "c1.nii.gz")
    out = tmp_path / "out"
    config = ScreenConfig(out_dir=out, dicom_seg=True, dicom_sr=True)
    res = screen_scan(folder, MaskFolderSegmenter(masks), config)
    paths = case_files(out, res.row["case_id"])
    assert res.files == {"qc": paths.qc, "dicom_seg": paths.seg, "dicom_sr": paths.sr}
    assert all(Path(p).is_file() for p in res.files.values())

    row = results.ordered_row({k: v for k, v in res.row.items() if k in results._COLUMN_SET})
    (out / results.RESULTS_JSONL).write_text(json.dumps(row) + "\n")
    merge([out], tmp_path / "merged")
    merged = case_files(tmp_path / "merged", res.row["case_id"])
    assert [p.is_file() for p in merged.screen_outputs()] == [
        p.is_file() for p in paths.screen_outputs()
    ]
    assert merged.qc.read_bytes() == paths.qc.read_bytes()
