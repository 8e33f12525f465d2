"""Issue 19: the class table, image-less label maps with a built body, multi-class
synthesis and the source-level split of multi-class pools."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from client.core.contract import LABEL_LIVER, LABEL_SPLEEN
from training import classes, synth
from training.labelmap_body import (
    LABELMAP_SUBJECTS,
    convex_hull_mask,
    labelmap_anatomy,
    read_canonical,
)
from training.phantoms import TISSUES, make_anatomy_map, make_phantom

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
LABELMAPS = SHARED / "labelmaps"
EXAMPLE = SHARED / "totalseg_example"
needs_maps = pytest.mark.skipif(
    not all((LABELMAPS / s / "labels_all.nii.gz").exists() for s in LABELMAP_SUBJECTS),
    reason="../shared/data/labelmaps missing",
)
needs_example = pytest.mark.skipif(
    not (EXAMPLE / "labels_all.nii.gz").exists(), reason="../shared/data/totalseg_example missing"
)


# --- the class table ----------------------------------------------------------------
def test_class_table_is_contiguous_and_keeps_liver_and_spleen():
    values = [v for v, _ in classes.CLASSES]
    assert values == list(range(classes.NUM_CLASSES))
    assert classes.CLASS_INDEX["background"] == 0
    assert classes.CLASS_INDEX["liver"] == LABEL_LIVER == 1
    assert classes.CLASS_INDEX["spleen"] == LABEL_SPLEEN == 2
    for name in (
        "kidney",
        "aorta",
        "inferior_vena_cava",
        "portal_splenic_vein",
        "stomach",
        "gallbladder",
        "pancreas",
        "duodenum",
    ):
        assert name in classes.CLASS_INDEX
    assert len(set(classes.CLASS_NAMES)) == classes.NUM_CLASSES
    # The metadata form: JSON with string keys, round trip, short enough for a config parameter.
    text = classes.labels_json()
    assert json.loads(text)["1"] == "liver"
    assert classes.parse_labels_json(text) == dict(classes.CLASSES)
    assert len(text) < 1024


def _names_files():
    out = [LABELMAPS / s / "labels_all_names.json" for s in LABELMAP_SUBJECTS]
    out.append(EXAMPLE / "labels_all_names.json")
    return [p for p in out if p.exists()]


@pytest.mark.parametrize("path", _names_files(), ids=lambda p: p.parent.name)
def test_names_to_classes_through_the_names_files(path):
    names = json.loads(path.read_text(encoding="utf-8"))
    lut = classes.totalseg_lut(names)
    # Independent reference: the structure names written out by hand.
    expected = {
        "liver": 1,
        "spleen": 2,
        "kidney_left": 3,
        "kidney_right": 3,
        "aorta": 4,
        "inferior_vena_cava": 5,
        "portal_vein_and_splenic_vein": 6,
        "stomach": 7,
        "gallbladder": 8,
        "pancreas": 9,
        "duodenum": 10,
        "small_bowel": 11,
        "colon": 12,
    }
    by_name = {n: int(v) for v, n in names.items()}
    for name, cls in expected.items():
        assert name in by_name, f"{path.parent.name} lacks {name}"
        assert lut[by_name[name]] == cls, name
    others = [int(v) for v, n in names.items() if n not in expected]
    assert others and not lut[others].any()  # e.g. kidney cysts, iliac arteries: background
    if "kidney_cyst_left" in by_name:
        assert lut[by_name["kidney_cyst_left"]] == 0


@needs_maps
@pytest.mark.parametrize("subject", ["totalseg_s0328"])
def test_class_volumes_match_the_structure_volumes(subject):
    """Class voxels (via the names) against the data set's own volumes_ml.json."""
    lab, names, sp = read_canonical(LABELMAPS / subject)
    vols = json.loads((LABELMAPS / subject / "volumes_ml.json").read_text(encoding="utf-8"))
    cls = classes.totalseg_lut(names)[lab]
    vox_ml = float(np.prod(sp)) / 1000
    for cname, members in (
        ("liver", ["liver"]),
        ("kidney", ["kidney_left", "kidney_right"]),
        ("portal_splenic_vein", ["portal_vein_and_splenic_vein"]),
    ):
        ml = float((cls == classes.CLASS_INDEX[cname]).sum()) * vox_ml
        ref = sum(vols[m] for m in members)
        assert ml == pytest.approx(ref, rel=0.02), cname


# --- the body built around a label map ----------------------------------------------
def test_convex_hull_mask_against_a_disc_and_points():
    yy, xx = np.mgrid[0:41, 0:41]
    disc = (yy - 20) ** 2 + (xx - 20) ** 2 <= 15**2
    ring = disc & ~((yy - 20) ** 2 + (xx - 20) ** 2 <= 12**2)
    h = convex_hull_mask(ring)
    assert h[disc].all()  # the hole is filled
    assert h.sum() <= 1.1 * disc.sum()
    three = np.zeros((10, 10), bool)
    three[[1, 1, 8], [1, 8, 1]] = True
    t = convex_hull_mask(three)
    assert t[1, 1] and t[1, 8] and t[8, 1] and t[3, 3] and not t[8, 8]


@needs_maps
@pytest.mark.parametrize("subject", LABELMAP_SUBJECTS)
def test_envelope_contains_every_trunk_structure(subject):
    a = labelmap_anatomy(subject)
    inside = a.outside_mm == 0
    labelled = a.classes > 0  # every class structure is trunk
    assert labelled.sum() > 10000
    assert inside[labelled].all()
    trunk_tissue = np.isin(a.tissue, [TISSUES[t] for t in ("liver", "bone", "lung", "muscle")])
    assert inside[trunk_tissue].mean() > 0.97  # humeri (arms) may lie outside
    # Unlabelled space inside the envelope is fat; outside it, nothing but air yet.
    assert (a.tissue[inside] != TISSUES["air"]).all()
    assert (a.tissue[~inside] == TISSUES["air"]).mean() > 0.99
    # A plausible trunk: at the liver's level, 200-480 mm wide.
    z = int(np.median(np.flatnonzero((a.classes == 1).any((1, 2)))))
    cols = np.flatnonzero(inside[z].any(0))
    width = (cols[-1] - cols[0] + 1) * a.spacing[2]
    assert 200 < width < 480, width


@needs_maps
def test_painted_label_map_scan_has_the_drawn_attenuation_and_a_body():
    s = synth.synth_scan(
        3, "totalseg_s0011", phase="portal", scenario="full", multiclass=True, variety=False
    )
    hu, cls, info = s["hu"].astype(np.float32), s["classes"], s["info"]
    assert hu.shape == cls.shape and cls.dtype == np.uint8
    assert info["source"] == "totalseg_s0011"

    def med(name):
        m = ndi.binary_erosion(cls == classes.CLASS_INDEX[name], iterations=1)
        assert m.sum() > 30, name
        return float(np.median(hu[m]))

    # Bands of training.synth.HU_RANGES (portal) widened by the texture/noise margin.
    assert abs(med("liver") - info["liver_hu"]) < 20
    assert abs(med("spleen") - info["spleen_hu"]) < 20
    assert 100 < med("spleen") < 170
    assert 110 < med("aorta") < 240
    assert 120 < med("kidney") < 240
    # Liver and spleen labels are the 1/2 of the class map.
    assert np.array_equal(s["labels"], np.where(cls <= 2, cls, 0))
    # A body outline with subcutaneous fat: fat-like voxels in the outer body ring.
    body = ndi.binary_fill_holes(hu > -500, structure=np.ones((1, 3, 3)))
    ring = body & ~ndi.binary_erosion(body, np.ones((1, 3, 3)), iterations=3)
    assert ((hu[ring] > -160) & (hu[ring] < -40)).mean() > 0.2
    assert info["subcutaneous_fat_mm"] >= 5


@needs_maps
@pytest.mark.parametrize("subject", LABELMAP_SUBJECTS)
@pytest.mark.parametrize("phase", ["unenhanced", "arterial"])
def test_class_medians_lie_in_the_painters_bands(subject, phase):
    """Median HU per class against training.synth.HU_RANGES (the painter's table)."""
    s = synth.synth_scan(5, subject, phase=phase, scenario="full", multiclass=True)
    hu, cls = s["hu"].astype(np.float32), s["classes"]
    k = synth.PHASES.index(phase)
    margin = 25.0  # texture, noise, partial volume after the slice profile
    bands = {
        "spleen": [synth.HU_RANGES["spleen"][k]],
        "kidney": [synth.HU_RANGES["kidney_cortex"][k], synth.HU_RANGES["kidney_medulla"][k]],
        "aorta": [synth.HU_RANGES["artery"][k]],
        "inferior_vena_cava": [synth.HU_RANGES["vein"][k]],
        "pancreas": [synth.HU_RANGES["pancreas"][k]],
    }
    for name, ranges in bands.items():
        m = ndi.binary_erosion(cls == classes.CLASS_INDEX[name], iterations=1)
        if m.sum() < 20:
            continue
        lo = min(r[0] for r in ranges) - margin
        hi = max(r[1] for r in ranges) + margin
        med = float(np.median(hu[m]))
        assert lo <= med <= hi, (name, med, lo, hi)


@needs_maps
def test_multiclass_scan_is_deterministic_and_variety_changes_it():
    a = synth.synth_scan(8, "totalseg_s0327", multiclass=True, variety=True)
    b = synth.synth_scan(8, "totalseg_s0327", multiclass=True, variety=True)
    assert np.array_equal(a["hu"], b["hu"]) and np.array_equal(a["classes"], b["classes"])
    c = synth.synth_scan(8, "totalseg_s0327", multiclass=True, variety=False)
    assert c["hu"].shape != a["hu"].shape or not np.array_equal(a["hu"], c["hu"])


@needs_example
def test_variety_off_gives_the_liver_spleen_pools_samples():
    """variety/multiclass draw from a second generator: old pools stay reproducible."""
    a = synth.synth_scan(11, "real")
    b = synth.synth_scan(11, "real", multiclass=True)
    assert np.array_equal(a["hu"], b["hu"]) and np.array_equal(a["labels"], b["labels"])
    assert np.array_equal(b["labels"], np.where(b["classes"] <= 2, b["classes"], 0))


def test_grow_and_shrink_masks_stay_where_allowed():
    m = np.zeros((9, 30, 30), bool)
    m[3:6, 10:20, 10:20] = True
    into = np.zeros_like(m)
    into[:, :, 20:] = True  # only to the right
    g = synth.grow_mask(m, into, 6.0, (2.0, 2.0, 2.0))
    new = g & ~m
    assert new.any() and not (new & ~into).any()
    assert np.flatnonzero(new.any((0, 1))).max() <= 19 + 3
    sh = synth.shrink_mask(m, 2.0, (2.0, 2.0, 2.0))
    assert sh.sum() < m.sum() and not (sh & ~m).any()


@needs_maps
def test_vary_anatomy_relabels_what_it_changes():
    s = synth.synth_scan(0, "totalseg_s0328", multiclass=True, variety=False, scenario="full")
    from training.synth_preview import canonical

    cls = canonical(s["classes"], s["direction"]).copy()
    # A tissue map consistent with the classes, for the organs vary_anatomy touches.
    tissue = np.full(cls.shape, TISSUES["fat"], np.uint8)
    for name in ("liver", "spleen", "gallbladder", "colon", "small_bowel"):
        tissue[cls == classes.CLASS_INDEX[name]] = TISSUES[name]
    tissue[cls == classes.CLASS_INDEX["kidney"]] = TISSUES["kidney_cortex"]
    before = cls.copy()
    for seed in range(12):
        t, c = tissue.copy(), before.copy()
        fluid, info = synth.vary_anatomy(np.random.default_rng(seed), t, c, s["spacing"])
        changed = c != before
        # Classes follow the tissue wherever something changed.
        for name in ("liver", "spleen", "gallbladder"):
            k = classes.CLASS_INDEX[name]
            assert ((c == k) == (t == TISSUES[name]))[changed].all(), (seed, name)
        # Fluid outside the liver is never labelled as an organ that it is not.
        outside = fluid & (c != classes.CLASS_INDEX["liver"])
        assert (
            np.isin(c[outside], [0, classes.CLASS_INDEX["gallbladder"]]).all() or not outside.any()
        )


# --- phantoms in the class table ----------------------------------------------------
def test_phantom_anatomy_classes_exclude_the_iliac_arteries():
    parts = {}
    lab, _ = make_anatomy_map(3, parts=parts)
    cls = synth.phantom_classes(3)
    aorta = cls == classes.CLASS_INDEX["aorta"]
    artery = lab == TISSUES["artery"]
    assert aorta.any() and not (aorta & ~artery).any()
    assert parts["iliac_artery"].any() and not aorta[parts["iliac_artery"]].any()
    assert (artery & ~aorta).any()
    for tissue, cname in classes.TISSUE_CLASS.items():
        m = lab == TISSUES[tissue]
        if m.any() and tissue != "artery":
            assert (cls[m] == classes.CLASS_INDEX[cname]).all(), tissue


def test_plain_phantom_labels_its_neighbours_with_the_same_image():
    a = make_phantom(4, shape=(40, 64, 64))
    b = make_phantom(4, shape=(40, 64, 64), label_neighbours=True)
    assert np.array_equal(a.hu, b.hu)
    assert np.array_equal(a.labels, np.where(b.labels <= 2, b.labels, 0))
    assert set(np.unique(b.labels).tolist()) == {0, 1, 2, 3, 4}


# --- the source-level split ----------------------------------------------------------
def test_split_keeps_held_out_anatomies_out_of_the_mixture(monkeypatch):
    split = synth.split_of("neighbours_heldout")
    assert "real" in split["held_out"] and len(split["held_out"]) >= 2
    assert not set(split["held_out"]) & set(split["train"])
    kinds = {synth.kind_of_seed(s, synth.MIXTURES["neighbours_heldout"]) for s in range(3000)}
    assert not kinds & set(split["held_out"])
    assert set(split["train"]) <= kinds
    bad = {**synth.MIXTURES, "neighbours_heldout": (("real", 0.5), ("phantom", 0.5))}
    monkeypatch.setattr(synth, "MIXTURES", bad)
    with pytest.raises(ValueError, match="held-out"):
        synth.split_of("neighbours_heldout")


@needs_maps
def test_multiclass_pool_records_split_and_classes_and_uses_train_sources_only(tmp_path):
    from client.reading.preprocess import PreprocessSpec

    spec = PreprocessSpec("spacing", (32, 32, 32), (8, 8, 8))
    out = tmp_path / "pool"
    synth.write_shards(out, 0, 6, shard=3, spec=spec, mixture_name="neighbours_heldout")
    meta = json.loads((out / "pool.json").read_text(encoding="utf-8"))
    assert meta["split"] == synth.split_of("neighbours_heldout")
    assert meta["classes"] == classes.labels_dict() and meta["num_classes"] == 13
    infos = []
    for p in sorted(out.glob("synth_*.json")):
        infos += json.loads(p.read_text(encoding="utf-8"))
    sources = {i["source"] for i in infos}
    assert len(infos) == 6
    assert sources <= set(meta["split"]["train"]) | {"phantom", "plain_phantom"}
    assert not sources & set(meta["split"]["held_out"])
    with np.load(out / "synth_0000000.npz") as z:
        assert z["labels"].max() < 13 and z["images"].shape == (3, 1, 32, 32, 32)
    assert synth.next_shard_start(out) == 6


@needs_maps
def test_evaluate_multiclass_reads_classes_split_and_preprocessing_from_the_checkpoint(tmp_path):
    torch = pytest.importorskip("torch")
    from training import evaluate_multiclass as em
    from training.torch_vnet import TorchVNet

    net = TorchVNet(width=0.125, num_classes=13)
    ck = tmp_path / "latest.pt"
    torch.save(
        {
            "model": net.state_dict(),
            "iter": 7,
            "width": 0.125,
            "model_shape": [32, 32, 32],
            "preprocess": {"hepascreen_preprocess": "spacing", "hepascreen_spacing_mm": "12,12,12"},
            "class_names": list(classes.CLASS_NAMES),
            "split": synth.split_of("neighbours_heldout"),
        },
        ck,
    )
    predict = em.torch_predictor(ck)
    assert predict.iteration == 7 and predict.class_names[12] == "colon"
    assert predict.spec.model_shape == (32, 32, 32)
    cases = em.heldout_anatomy_cases(["totalseg_s0328"], 1)
    assert cases[0][0].startswith("totalseg_s0328_6000000")
    rows = em.evaluate(predict, cases)
    row = next(iter(rows.values()))
    assert set(classes.CLASS_NAMES[1:]) <= set(row)
    assert all(np.isnan(v) or 0.0 <= v <= 1.0 for k, v in row.items() if k != "seconds")
    mean = em.summarise(rows, predict.class_names)
    assert mean["liver"] == row["liver"] or np.isnan(row["liver"])


def test_the_class_table_is_what_the_client_reads():
    """The served model will declare training/classes.py's table as hepascreen_classes:
    the client parses it, liver and spleen keep 1 and 2, and the contrast phase finds
    its vessels and kidneys by these names."""
    from client.core import contract
    from client.serving.triton import model_classes
    from postprocess.phase import evidence_classes

    assert classes.METADATA_KEY == contract.CLASSES_PARAM
    cfg = {"parameters": {contract.CLASSES_PARAM: {"string_value": classes.classes_parameter()}}}
    got = model_classes(cfg)
    assert got == {n: v for v, n in classes.CLASSES if v}
    assert evidence_classes(got) == {
        "kidney": (classes.CLASS_INDEX["kidney"],),
        "aorta": (classes.CLASS_INDEX["aorta"],),
        "ivc": (classes.CLASS_INDEX["inferior_vena_cava"],),
        "portal_vein": (classes.CLASS_INDEX["portal_splenic_vein"],),
    }
