"""training.phase_paint: phases and steatosis painted onto the shared real CT, and the
multi-phase sample study. Every check measures the painted images directly (np.mean /
np.std over label voxels, pydicom, client.reading.io.read_scan), not through the painting code."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from training import phase_paint as pp

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "totalseg_example"
pytestmark = pytest.mark.skipif(
    not (DATA / "labels_all.nii.gz").exists(), reason="../shared/data/totalseg_example missing"
)

MEAN_TOL = 0.5  # HU
SD_TOL = 1.0  # HU, texture kept
STEATOSIS_HU = (60, 38, 27, 15, 5, 0)


@pytest.fixture(scope="module")
def real():
    hu = sitk.GetArrayFromImage(sitk.ReadImage(str(DATA / "ct.nii.gz")))
    lab = sitk.GetArrayFromImage(sitk.ReadImage(str(DATA / "labels_all.nii.gz")))
    names = {int(k): v for k, v in json.loads((DATA / "labels_all_names.json").read_text()).items()}
    return hu, lab, names


def _mask(lab, names, name):
    ids = [k for k, v in names.items() if v == name]
    assert ids, name
    return np.isin(lab, ids)


@pytest.fixture(scope="module")
def painted(real):
    hu, lab, names = real
    return {ph: pp.paint_phase(hu, lab, names, ph) for ph in pp.PHASES}


# ------------------------------------------------------------------ the table
def test_table_complete_and_cited():
    rows = {
        "aorta",
        "inferior_vena_cava",
        "portal_vein_and_splenic_vein",
        "kidney_cortex",
        "kidney_medulla",
        "liver",
        "spleen",
        "blood",
    }
    assert set(pp.PHASE_HU) == set(pp.PHASES)
    for ph, table in pp.PHASE_HU.items():
        assert set(table) == rows, ph
        for row, e in table.items():
            lo, hi = e["range"]
            assert lo <= e["mean"] <= hi, (ph, row)
            # a published source, or an explicit "no source found"
            assert e["refs"] or "no source found" in e["note"], (ph, row)
            for r in e["refs"]:
                assert r in pp.REFERENCES, r
    assert pp.PHASE_HU["arterial"]["spleen"]["mottle_sd"] > 0


def test_independent_of_training_synthesis():
    import re

    src = Path(pp.__file__).read_text()
    assert not re.search(r"^\s*(from|import)\s+(training\.synth|\.synth)\b", src, re.M)
    assert not re.search(r"^\s*from\s+(training|\.)\s+import\s+.*\bsynth\b", src, re.M)


def test_phases_are_distinct_where_a_classifier_looks():
    t = {ph: {r: e["mean"] for r, e in v.items()} for ph, v in pp.PHASE_HU.items()}
    assert t["arterial"]["aorta"] > 2 * t["portal_venous"]["aorta"]
    assert t["arterial"]["kidney_cortex"] - t["arterial"]["kidney_medulla"] >= 100
    assert t["portal_venous"]["portal_vein_and_splenic_vein"] >= t["portal_venous"]["aorta"]
    assert abs(t["delayed"]["aorta"] - t["delayed"]["portal_vein_and_splenic_vein"]) < 10
    for ph in pp.PHASES[1:]:
        for row in ("aorta", "portal_vein_and_splenic_vein", "kidney_cortex"):
            assert t[ph][row] - t["unenhanced"][row] >= 25, (ph, row)


# ------------------------------------------------------------------ phases
@pytest.mark.parametrize("phase", pp.PHASES)
def test_phase_means_and_texture(real, painted, phase):
    hu, lab, names = real
    out = painted[phase]
    assert out.dtype == np.int16 and out.shape == hu.shape
    table = pp.PHASE_HU[phase]
    for row, structures in pp.STRUCTURE_LABELS.items():
        for s in structures:
            m = _mask(lab, names, s)
            assert abs(out[m].mean() - table[row]["mean"]) < MEAN_TOL, (phase, s, out[m].mean())
            if phase == "arterial" and s == "spleen":
                continue
            # texture kept: the same real voxels, moved by one constant (+-1 from rounding)
            diff = out[m].astype(float) - hu[m]
            assert np.ptp(diff) <= 1.0, (phase, s)
            assert abs(out[m].std() - hu[m].std()) < SD_TOL, (phase, s)


@pytest.mark.parametrize("phase", pp.PHASES)
def test_kidney_cortex_shell_and_medulla(real, painted, phase):
    hu, lab, names = real
    out = painted[phase]
    kidneys = _mask(lab, names, "kidney_left") | _mask(lab, names, "kidney_right")
    # independent cortex: kidney voxels with a non-kidney 6-neighbour (plus one more layer)
    core = kidneys.copy()
    for _ in range(2):
        nxt = core.copy()
        for ax in range(3):
            for st in (1, -1):
                nxt &= np.roll(core, st, axis=ax)
        core = nxt
    cortex, medulla = kidneys & ~core, core
    assert cortex.sum() > 0 and medulla.sum() > 0
    table = pp.PHASE_HU[phase]
    assert abs(out[cortex].mean() - table["kidney_cortex"]["mean"]) < MEAN_TOL
    assert abs(out[medulla].mean() - table["kidney_medulla"]["mean"]) < MEAN_TOL
    if phase == "arterial":
        assert out[cortex].mean() - out[medulla].mean() > 100


def test_arterial_spleen_is_mottled_with_the_right_mean(real, painted):
    hu, lab, names = real
    m = _mask(lab, names, "spleen")
    art, pv = painted["arterial"][m], painted["portal_venous"][m]
    assert abs(art.mean() - pp.PHASE_HU["arterial"]["spleen"]["mean"]) < MEAN_TOL
    expect = np.hypot(hu[m].std(), pp.PHASE_HU["arterial"]["spleen"]["mottle_sd"])
    assert abs(art.std() - expect) < 3.0
    assert art.std() > pv.std() + 8  # heterogeneous in arterial, homogeneous in portal


def test_everything_else_unchanged(real, painted):
    hu, lab, names = real
    moved = np.zeros(hu.shape, bool)
    for structures in pp.STRUCTURE_LABELS.values():
        for s in structures:
            moved |= _mask(lab, names, s)
    moved |= _mask(lab, names, "kidney_left") | _mask(lab, names, "kidney_right")
    for out in painted.values():
        assert np.array_equal(out[~moved], hu[~moved])


def test_paint_is_deterministic_and_leaves_input(real):
    hu, lab, names = real
    before = hu.copy()
    a = pp.paint_phase(hu, lab, names, "arterial", seed=3)
    b = pp.paint_phase(hu, lab, names, "arterial", seed=3)
    assert np.array_equal(a, b) and np.array_equal(hu, before)
    with pytest.raises(ValueError):
        pp.paint_phase(hu, lab, names, "venous")


# ------------------------------------------------------------------ steatosis
@pytest.fixture(scope="module")
def steatosis(real):
    hu, lab, names = real
    return {h: pp.paint_steatosis(hu, lab, names, h, return_vessels=True) for h in STEATOSIS_HU}


def test_vessels_inside_the_liver(real, steatosis):
    hu, lab, names = real
    liver = _mask(lab, names, "liver")
    _, v = steatosis[60]
    assert not (v & ~liver).any()
    assert 0.03 <= v.sum() / liver.sum() <= 0.08
    # the same tree for every liver HU (one seed)
    for _, v2 in steatosis.values():
        assert np.array_equal(v, v2)
    # tubes, not a blob: most vessel voxels touch parenchyma
    touching = np.zeros_like(v)
    par = liver & ~v
    for ax in range(3):
        for st in (1, -1):
            touching |= np.roll(par, st, axis=ax)
    assert (v & touching).sum() / v.sum() > 0.6


@pytest.mark.parametrize("liver_hu", STEATOSIS_HU)
def test_steatosis_liver_vessels_blood(real, steatosis, liver_hu):
    hu, lab, names = real
    img, v = steatosis[liver_hu]
    assert img.dtype == np.int16
    liver = _mask(lab, names, "liver")
    par = liver & ~v
    blood = pp.PHASE_HU["unenhanced"]["blood"]["mean"]
    assert abs(img[par].mean() - liver_hu) < MEAN_TOL
    assert abs(img[v].mean() - blood) < MEAN_TOL
    assert 38 <= img[v].mean() <= 46
    for s in ("portal_vein_and_splenic_vein", "inferior_vena_cava", "aorta"):
        assert abs(img[_mask(lab, names, s)].mean() - blood) < MEAN_TOL, s
    spleen = _mask(lab, names, "spleen")
    assert abs(img[spleen].mean() - pp.PHASE_HU["unenhanced"]["spleen"]["mean"]) < MEAN_TOL
    if liver_hu < 40:
        assert img[v].mean() > img[par].mean() + 1  # vessels brighter than a fatty liver
    else:
        assert img[v].mean() < img[par].mean()
    # texture kept in the parenchyma
    assert abs(img[par].std() - hu[par].std()) < SD_TOL
    # nothing outside liver, spleen and the big vessels changed
    touched = liver | spleen
    for row in ("aorta", "inferior_vena_cava", "portal_vein_and_splenic_vein"):
        for s in pp.STRUCTURE_LABELS[row]:
            touched |= _mask(lab, names, s)
    assert np.array_equal(img[~touched], hu[~touched])


def test_leaky_liver_labels(real):
    hu, lab, names = real
    liver, spleen = _mask(lab, names, "liver"), _mask(lab, names, "spleen")
    ref = pp.reference_labels(lab, names)
    assert np.array_equal(ref == 1, liver) and np.array_equal(ref == 2, spleen)
    leaky = pp.leaky_liver_labels(lab, names)
    added = (leaky == 1) & ~liver
    assert np.array_equal(leaky == 2, spleen)
    assert ((leaky == 1) >= liver).all()
    assert 0.01 < added.sum() / liver.sum() < 0.10
    # one side only: every added voxel sits one voxel anterior (+y) of a liver voxel
    assert (np.roll(liver, 1, axis=1) & added).sum() == added.sum()
    soft = pp.leaky_liver_labels(lab, names, hu=hu)
    added_soft = (soft == 1) & ~liver
    assert added_soft.sum() > 0
    assert ((hu[added_soft] >= -30) & (hu[added_soft] <= 150)).all()


# ------------------------------------------------------------------ the study
@pytest.fixture(scope="module", params=[True, False], ids=["tags", "no_tags"])
def study(request, tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    return pp.write_phase_study(out, tags=request.param, seed=5)


def test_study_uids_and_tags(study):
    import pydicom

    study_uids, series_uids = set(), {}
    for ph, folder in study.dicom_dirs.items():
        files = sorted(p for p in folder.iterdir() if p.is_file())
        assert len(files) == study.arrays[ph].shape[0]
        sops = set()
        for f in files:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
            study_uids.add(ds.StudyInstanceUID)
            series_uids.setdefault(ph, set()).add(ds.SeriesInstanceUID)
            sops.add(ds.SOPInstanceUID)
            enhanced = ph != "unenhanced"
            has = "ContrastBolusAgent" in ds
            assert has == (study.tags and enhanced), (ph, f)
            assert ("ContrastBolusStartTime" in ds) == (study.tags and enhanced)
            desc = str(ds.SeriesDescription)
            if study.tags:
                assert desc == pp.SERIES_DESCRIPTIONS_TAGGED[ph]
            else:
                assert desc == pp.NEUTRAL_DESCRIPTION
                assert not any(k in desc.upper() for k in ("PV", "ART", "DELAY", "CONTRAST"))
            assert str(ds.PatientName) == "ANONYMOUS"
        assert len(sops) == len(files)
    assert study_uids == {study.study_uid}
    assert len(series_uids) == 4 and all(len(v) == 1 for v in series_uids.values())
    assert len({next(iter(v)) for v in series_uids.values()}) == 4
    assert {ph: next(iter(v)) for ph, v in series_uids.items()} == study.series_uids


def test_study_images_read_back(study, real):
    from client.reading.io import read_scan

    hu, lab, names = real
    assert np.array_equal(study.arrays["unenhanced"], hu)
    for ph in pp.PHASES:
        if ph != "unenhanced":
            assert np.array_equal(
                study.arrays[ph],
                pp.paint_phase(hu, lab, names, ph, seed=5 + pp.PHASES.index(ph) - 1),
            )
        d = read_scan(study.dicom_dirs[ph])
        n = read_scan(study.nifti_paths[ph])
        assert np.array_equal(d.array, study.arrays[ph]), ph
        assert np.array_equal(n.array, study.arrays[ph]), ph
        assert np.allclose(d.spacing, n.spacing) and np.allclose(d.origin, n.origin, atol=1e-3)
        assert np.allclose(d.direction, n.direction)
        assert "contrast_agent" not in n.metadata
        assert ("contrast_agent" in d.metadata) == (study.tags and ph != "unenhanced")
