"""The model's own confidence in the segmentation gate (client side).

The served ``CONFIDENCE`` output is checked in tests/test_export_graph.py and
tests/test_model_repository.py; here: the client's reading of a model config (the
optional output, the per-model floors), the mean inside the measured organ piece against
a brute-force reference, the verdict a floor gives, and a whole screen through the real
bundled server whose row carries the confidence the model computed.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from client.core import contract
from client.serving.triton import check_model_config, model_confidence_floor, model_has_confidence
from postprocess import assess
from postprocess.assess import mean_confidence
from training.phantoms import make_phantom

ROOT = Path(__file__).resolve().parents[1]

BASE = {
    "name": "hepascreen_vnet",
    "max_batch_size": 4,
    "input": [{"name": "VOLUME", "data_type": "TYPE_UINT8", "dims": ["1", "8", "8", "8"]}],
    "output": [{"name": "LABELS", "data_type": "TYPE_UINT8", "dims": ["8", "8", "8"]}],
}
CONF = {"name": "CONFIDENCE", "data_type": "TYPE_UINT8", "dims": ["8", "8", "8"]}


def _cfg(outputs=(), floor=None):
    cfg = copy.deepcopy(BASE)
    cfg["output"] += [copy.deepcopy(o) for o in outputs]
    if floor is not None:
        cfg["parameters"] = {contract.CONFIDENCE_FLOOR_PARAM: {"string_value": floor}}
    return cfg


def test_config_with_and_without_the_confidence_output():
    assert check_model_config(_cfg()) == [] and not model_has_confidence(_cfg())
    assert check_model_config(_cfg([CONF])) == [] and model_has_confidence(_cfg([CONF]))
    wrong_dims = dict(CONF, dims=["8", "8", "4"])
    assert any("dims" in p for p in check_model_config(_cfg([wrong_dims])))
    wrong_type = dict(CONF, data_type="TYPE_FP32")
    assert any("dtype" in p for p in check_model_config(_cfg([wrong_type])))
    wrong_name = dict(CONF, name="PROBS")
    assert any("second output name" in p for p in check_model_config(_cfg([wrong_name])))
    assert "1 or 2 outputs" in check_model_config(_cfg([CONF, CONF]))[0]


def test_floor_parameter_is_parsed_and_checked():
    assert model_confidence_floor(_cfg([CONF])) is None
    assert model_confidence_floor(_cfg([CONF], "liver=0.93, spleen=0.955")) == {
        "liver": 0.93,
        "spleen": 0.955,
    }
    for bad in ("liver=1.2", "kidney=0.9", "liver:0.9", "liver=x"):
        problems = check_model_config(_cfg([CONF], bad))
        assert problems and contract.CONFIDENCE_FLOOR_PARAM in problems[0], bad
    # A floor without the output it reads is a config error, not a silent no-op.
    assert "no CONFIDENCE output" in check_model_config(_cfg([], "liver=0.9"))[0]


def test_mean_confidence_matches_brute_force():
    rng = np.random.default_rng(0)
    conf = rng.integers(85, 256, (20, 30, 40)).astype(np.uint8)
    mask = ndi.binary_dilation(rng.random((20, 30, 40)) > 0.995, iterations=2)
    ref = sum(int(conf[z, y, x]) for z, y, x in zip(*np.nonzero(mask))) / mask.sum() / 255
    assert mean_confidence(conf, mask) == pytest.approx(ref, abs=1e-12)
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(mask))
    assert mean_confidence(conf, mask, box) == pytest.approx(ref, abs=1e-12)
    assert np.isnan(mean_confidence(conf, np.zeros_like(mask)))


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(5, shape=(60, 120, 120), grade="mild")


def floored(p, conf):
    """The phantom assessed with ``conf`` and the shipped floors."""
    floor = {"liver": 0.93, "spleen": 0.95}
    return assess(
        p.hu, p.labels, p.spacing, direction=p.direction, confidence=conf, confidence_floor=floor
    )


def test_floor_makes_the_organ_doubtful_and_says_why(phantom):
    p = phantom
    conf = np.full(p.labels.shape, 252, np.uint8)
    # A confident model on a good mask: graded as without the map; the row reports it.
    plain = assess(p.hu, p.labels, p.spacing, direction=p.direction)
    a = floored(p, conf)
    assert a.grade == plain.grade == "mild" and a.flags == plain.flags
    assert a.to_row()["liver_confidence"] == a.to_row()["spleen_confidence"] == round(252 / 255, 3)
    # An unsure spleen (only its measured piece counts): indeterminate, the reason named.
    conf[p.labels == 2] = 235  # 0.922
    a = floored(p, conf)
    assert a.grade == "indeterminate"
    assert (
        "spleen_segmentation_doubtful" in a.flags and "liver_segmentation_doubtful" not in a.flags
    )
    assert any("confidence 0.922 is below its floor 0.950" in n for n in a.notes)
    # Without a floor the number is reported but decides nothing.
    a = assess(p.hu, p.labels, p.spacing, direction=p.direction, confidence=conf)
    assert a.grade == "mild" and a.spleen_confidence == pytest.approx(235 / 255)


def test_confidence_map_must_match_the_labels(phantom):
    from client.core.errors import MeasurementError

    p = phantom
    with pytest.raises(MeasurementError, match="confidence map"):
        assess(p.hu, p.labels, p.spacing, confidence=np.zeros((2, 2, 2), np.uint8))


@pytest.mark.server
def test_screen_through_the_bundled_server_reports_and_applies_the_confidence(
    tmp_path, shared_data
):
    """The real server, a copy of the shipped repository with a floor set: the row's
    confidence equals ONNX Runtime's map averaged by brute force over the measured pieces,
    and a floor above it makes the scan indeterminate, naming the reason."""
    import shutil

    import onnxruntime as ort

    from client.core.contract import CONFIDENCE_NAME, INPUT_NAME, OUTPUT_NAME
    from client.pipeline.screen import ScreenConfig, screen_scan
    from client.pipeline.segmenters import TritonSegmenter
    from client.reading.io import read_scan
    from client.reading.preprocess import preprocess_windows, to_scan_grid
    from postprocess.components import keep_largest
    from training.evaluate import onnx_spec

    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "model_repository" / "cpu", repo)
    cfg_path = repo / contract.MODEL_NAME / "config.pbtxt"
    ct = shared_data / "totalseg_example" / "ct.nii.gz"

    # Independent reference: ONNX Runtime on the same windows, mean by a plain loop.
    sess = ort.InferenceSession(
        str(repo / contract.MODEL_NAME / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    scan = read_scan(ct)
    x, rec = preprocess_windows(scan.array, scan.spacing, scan.direction, onnx_spec(sess))
    lab, conf = sess.run([OUTPUT_NAME, CONFIDENCE_NAME], {INPUT_NAME: x})
    lab, conf = to_scan_grid(lab, rec), to_scan_grid(conf, rec)
    kept = keep_largest(lab, (1, 2))
    ref = {
        o: float(conf[kept == k].astype(np.float64).mean() / 255)
        for k, o in ((1, "liver"), (2, "spleen"))
    }

    base = cfg_path.read_text()
    for floor, expect_doubt in ((None, False), (round(ref["spleen"] + 0.01, 3), True)):
        text = base
        if floor is not None:
            text += (
                f'parameters: {{\n  key: "{contract.CONFIDENCE_FLOOR_PARAM}"\n'
                f'  value: {{ string_value: "liver=0.5,spleen={floor}" }}\n}}\n'
            )
        cfg_path.write_text(text)
        with TritonSegmenter.bundled(repo, log_path=tmp_path / "server.log") as seg:
            res = screen_scan(ct, seg, ScreenConfig(out_dir=tmp_path / f"out{floor}"))
        row = res.row
        assert row["liver_confidence"] == pytest.approx(ref["liver"], abs=0.0015)
        assert row["spleen_confidence"] == pytest.approx(ref["spleen"], abs=0.0015)
        doubt = "spleen_segmentation_doubtful" in row["flags"]
        assert doubt == expect_doubt, row["flags"]
        if expect_doubt:
            assert row["grade"] == "indeterminate"
            assert f"below its floor {floor:.3f}" in row["notes"]
        else:
            assert row["grade"] == "normal"  # the shared CT (data README: ratio about 1.3)


def test_bench_confidence_counts_match_a_plain_loop():
    """The calibration table of benchmarks/bench_confidence.py against a brute-force count."""
    from benchmarks import bench_confidence as bc

    rng = np.random.default_rng(4)
    rows = []
    for i in range(60):
        d = {o: float(rng.uniform(0.0, 1.0)) for o in ("liver", "spleen")}
        c = {o: (None if i % 13 == 0 else float(rng.uniform(0.85, 1.0))) for o in d}
        rows.append(
            {
                "model": "m",
                "case": f"c{i}",
                "indeterminate_without_confidence": bool(i % 3),
                "grade_model_masks": ["normal", "mild", "indeterminate"][i % 3],
                "grade_reference_masks": ["normal", "mild"][i % 2],
                **{f"dice_{o}": d[o] for o in d},
                **{f"confidence_{o}": c[o] for o in c},
            }
        )
    table = bc.floor_table(rows)
    for organ in ("liver", "spleen"):
        for e in table[organ]["floors"]:
            f, bad, good, missed = e["floor"], 0, 0, 0
            for r in rows:
                c, d = r[f"confidence_{organ}"], r[f"dice_{organ}"]
                if c is None or c >= f:
                    continue
                bad += d < bc.BAD_BELOW
                good += d >= bc.GOOD_FROM
                missed += d < bc.BAD_BELOW and not r["indeterminate_without_confidence"]
            assert (e["bad_flagged"], e["good_flagged"], e["bad_flagged_gate_missed"]) == (
                bad,
                good,
                missed,
            )
    wrong = bc.wrong_grades(rows, {"liver": 0.93, "spleen": 0.95})
    expect = [
        r["case"]
        for r in rows
        if "indeterminate" not in (r["grade_model_masks"], r["grade_reference_masks"])
        and r["grade_model_masks"] != r["grade_reference_masks"]
    ]
    assert [w["case"] for w in wrong] == expect
