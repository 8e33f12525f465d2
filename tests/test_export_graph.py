"""The served graph's final cast: ArgMax -> Cast(FLOAT) -> Cast(UINT8), same labels.

TensorRT's documentation is inconsistent about a direct INT64 -> UINT8 cast
(training/export.py explains), so the export casts the ArgMax indices through
FLOAT. These tests check, with ONNX Runtime, that the rewritten graph gives
byte-identical labels to the graph with the direct cast and to NumPy's argmax of
the network's own scores, on phantoms and on the real CT.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from client.contract import INPUT_NAME, LABEL_LIVER, LABEL_SPLEEN, OUTPUT_NAME  # noqa: E402
from training.export import cast_labels_via_float, main, recast_file  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "model_repository" / "cpu" / "hepascreen_vnet" / "1" / "model.onnx"


# --- helpers ----------------------------------------------------------------------------
def _producers(g):
    return {o: n for n in g.node for o in n.output}


def _cast_to(node):
    return next(a.i for a in node.attribute if a.name == "to")


def _tail(model, name=OUTPUT_NAME):
    """Op types (with Cast targets) from the output back to the ArgMax, Identity skipped."""
    prod = _producers(model.graph)
    chain, node = [], prod[name]
    while True:
        if node.op_type != "Identity":
            chain.append(
                f"Cast:{TensorProto.DataType.Name(_cast_to(node))}"
                if node.op_type == "Cast"
                else node.op_type
            )
        if node.op_type == "ArgMax":
            return chain[::-1], node
        node = prod[node.input[0]]


def _direct_cast(model):
    """The graph as exported before the fix: ArgMax -> (Identity) -> Cast(UINT8) only."""
    m = copy.deepcopy(model)
    prod = _producers(m.graph)
    last = prod[OUTPUT_NAME]
    first = prod[last.input[0]]
    assert first.op_type == "Cast" and _cast_to(first) == TensorProto.FLOAT
    for a in first.attribute:
        if a.name == "to":
            a.i = TensorProto.UINT8
    first.output[0] = OUTPUT_NAME
    m.graph.node.remove(last)
    onnx.checker.check_model(m)
    return m


def _with_scores(model):
    """A copy that also outputs the tensor ArgMax reads (the network's class scores)."""
    m = copy.deepcopy(model)
    _, argmax = _tail(m)
    m.graph.output.append(helper.make_tensor_value_info(argmax.input[0], TensorProto.FLOAT, None))
    return m


def _run(model, x):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {INPUT_NAME: x})


def _batch(shared_data, model_shape):
    """Two phantoms and the real CT, preprocessed as the client does."""
    from client.io import read_scan
    from client.preprocess import preprocess_scan
    from training.phantoms import make_phantom

    scans = [make_phantom(s, shape=(48, 96, 96)).to_scan() for s in (1, 2)]
    scans.append(read_scan(shared_data / "totalseg_example" / "ct.nii.gz"))
    # preprocess_scan gives (windows [n, 1, z, y, x], record); a model-shape tuple is
    # 'resize', one window per scan.
    return np.stack([preprocess_scan(s, model_shape)[0][0] for s in scans])


def _tiny_argmax_model(kind="identity"):
    """scores [N, 3, 4, 4, 4] -> ArgMax -> (Identity) -> Cast(UINT8) -> LABELS."""
    nodes = [helper.make_node("ArgMax", ["scores"], ["idx"], axis=1, keepdims=0, name="am")]
    src = "idx"
    if kind == "identity":
        nodes.append(helper.make_node("Identity", ["idx"], ["idx2"], name="id"))
        src = "idx2"
    elif kind == "not_argmax":
        nodes = [helper.make_node("ReduceMax", ["scores"], ["idx"], axes=[1], keepdims=0)]
    nodes.append(helper.make_node("Cast", [src], [OUTPUT_NAME], to=TensorProto.UINT8, name="c"))
    g = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["n", 3, 4, 4, 4])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.UINT8, ["n", 4, 4, 4])],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


# --- the rewrite on a hand-built graph ------------------------------------------------------
def test_rewrite_on_a_tiny_graph_matches_numpy_argmax():
    m = _tiny_argmax_model()
    assert cast_labels_via_float(m) is True
    onnx.checker.check_model(m, full_check=True)
    assert _tail(m)[0] == ["ArgMax", "Cast:FLOAT", "Cast:UINT8"]
    assert cast_labels_via_float(m) is False  # idempotent
    assert len(m.graph.node) == 4
    # Scores with exact ties too: ArgMax keeps the first maximum, as np.argmax does.
    rng = np.random.default_rng(0)
    s = rng.integers(0, 3, size=(5, 3, 4, 4, 4)).astype(np.float32)
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {"scores": s})
    assert got.dtype == np.uint8
    assert np.array_equal(got, np.argmax(s, axis=1).astype(np.uint8))


def test_rewrite_refuses_a_graph_it_does_not_understand():
    with pytest.raises(ValueError, match="read an ArgMax"):
        cast_labels_via_float(_tiny_argmax_model("not_argmax"))
    m = _tiny_argmax_model()
    with pytest.raises(ValueError, match="expected output 'NOPE'"):
        cast_labels_via_float(m, output_name="NOPE")


def test_recast_only_cli_rewrites_a_file_in_place_keeping_the_weights(tmp_path, capsys):
    src = onnx.load(str(SHIPPED))
    old = _direct_cast(src)
    path = tmp_path / "model.onnx"
    onnx.save(old, str(path))
    path.chmod(0o644)
    assert main(["--recast-only", str(path)]) == 0
    assert "rewrote" in capsys.readouterr().out
    new = onnx.load(str(path))
    assert _tail(new)[0] == ["ArgMax", "Cast:FLOAT", "Cast:UINT8"]
    assert path.stat().st_mode & 0o777 == 0o644
    w_old = {t.name: numpy_helper.to_array(t) for t in old.graph.initializer}
    w_new = {t.name: numpy_helper.to_array(t) for t in new.graph.initializer}
    assert w_old.keys() == w_new.keys()
    assert all(np.array_equal(w_old[k], w_new[k]) for k in w_old)
    assert recast_file(path) is False
    with pytest.raises(SystemExit):
        main(["--recast-only", str(tmp_path / "missing.onnx")])


# --- the shipped CPU model ------------------------------------------------------------------
def test_shipped_model_casts_argmax_through_float_only():
    m = onnx.load(str(SHIPPED))
    assert _tail(m)[0] == ["ArgMax", "Cast:FLOAT", "Cast:UINT8"]
    prod = _producers(m.graph)
    for node in m.graph.node:  # no direct integer -> UINT8 cast anywhere in the graph
        if node.op_type == "Cast" and _cast_to(node) == TensorProto.UINT8:
            src = prod[node.input[0]]
            assert src.op_type == "Cast" and _cast_to(src) == TensorProto.FLOAT, node.name
    out = m.graph.output[0]
    assert out.name == OUTPUT_NAME and out.type.tensor_type.elem_type == TensorProto.UINT8


@pytest.mark.slow
def test_shipped_model_labels_unchanged_on_phantoms_and_real_ct(shared_data):
    model = onnx.load(str(SHIPPED))
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[2:]]
    x = _batch(shared_data, shape)
    new_labels, scores = _run(_with_scores(model), x)
    (old_labels,) = _run(_direct_cast(model), x)
    assert new_labels.dtype == old_labels.dtype == np.uint8
    assert new_labels.shape == (3, *shape)
    assert new_labels.tobytes() == old_labels.tobytes()
    # Independent reference: NumPy's argmax of the network's own scores.
    assert np.array_equal(new_labels, np.argmax(scores, axis=1).astype(np.uint8))
    # The comparison means something: each volume has liver and spleen voxels.
    for lab in new_labels:
        assert (lab == LABEL_LIVER).sum() > 100 and (lab == LABEL_SPLEEN).sum() > 20


# --- a fresh export goes through the same rewrite ---------------------------------------------
@pytest.mark.slow
def test_fresh_export_ends_with_the_float_cast(tmp_path):
    paddle = pytest.importorskip("paddle")
    pytest.importorskip("paddle2onnx")
    from training.export import check_export, export_onnx
    from training.vnet import VNet

    paddle.seed(0)
    net = VNet(width=0.125)
    net.eval()
    path = export_onnx(net, (16, 16, 16), tmp_path / "model.onnx")
    assert _tail(onnx.load(str(path)))[0] == ["ArgMax", "Cast:FLOAT", "Cast:UINT8"]
    res = check_export(net, path, (16, 16, 16), batches=(2,))
    assert res["batch2_dtype"] == "uint8" and res["batch2_label_agreement"] >= 0.9999, res
    # The diagnostic float variant (float32 in, int32 out; not served) still exports.
    fpath = export_onnx(net, (16, 16, 16), tmp_path / "model_float.onnx", variant="float")
    res = check_export(net, fpath, (16, 16, 16), variant="float", batches=(2,))
    assert res["batch2_dtype"] == "int32" and res["batch2_label_agreement"] >= 0.9999, res
