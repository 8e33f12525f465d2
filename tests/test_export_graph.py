"""The served graph's tail: the labels' cast and the CONFIDENCE output, same labels.

TensorRT's documentation is inconsistent about a direct INT64 -> UINT8 cast
(training/export.py explains), so the export casts the ArgMax indices through
FLOAT. These tests check, with ONNX Runtime, that the rewritten graph gives
byte-identical labels to the graph with the direct cast and to NumPy's argmax of
the network's own scores, on phantoms and on the real CT.

The ``CONFIDENCE`` output (graph surgery on the scores ArgMax reads) is checked
against NumPy's round(255 x max softmax) of the network's own scores (float64,
within 1 count for float32 rounding), with the labels unchanged.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from client.core.contract import (  # noqa: E402
    CONFIDENCE_NAME,
    INPUT_NAME,
    LABEL_LIVER,
    LABEL_SPLEEN,
    NUM_CLASSES,
    OUTPUT_NAME,
)
from client.core.paths import SHIPPED_ONNX  # noqa: E402
from training.export import (  # noqa: E402
    add_confidence_file,
    add_confidence_output,
    cast_labels_via_float,
    main,
    recast_file,
)

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = SHIPPED_ONNX


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


def _run(model, x, names=None):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(names, {INPUT_NAME: x})


def _numpy_confidence(scores):
    """Independent reference: round-half-up(255 x max softmax over classes), float64."""
    z = scores.astype(np.float64)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    return np.floor(255.0 * p.max(axis=1) + 0.5).astype(np.int64)


def _only_labels(model):
    """A copy without CONFIDENCE: the LABELS output and only what it needs (no names assumed)."""
    m = copy.deepcopy(model)
    g = m.graph
    prod = _producers(g)
    need, stack = set(), [OUTPUT_NAME]
    while stack:
        name = stack.pop()
        node = prod.get(name)
        if name in need or node is None:
            need.add(name)
            continue
        need.add(name)
        stack.extend(i for i in node.input if i)
    keep = [n for n in g.node if any(o in need for o in n.output)]
    inits = [t for t in g.initializer if t.name in need]
    outs = [o for o in g.output if o.name == OUTPUT_NAME]
    for field, items in ((g.node, keep), (g.initializer, inits), (g.output, outs)):
        del field[:]
        field.extend(items)
    onnx.checker.check_model(m)
    return m


def _batch(shared_data, model_shape):
    """Two phantoms and the real CT, preprocessed as the client does."""
    from client.reading.io import read_scan
    from client.reading.preprocess import preprocess_scan
    from training.phantoms import make_phantom

    scans = [make_phantom(s, shape=(48, 96, 96)).to_scan() for s in (1, 2)]
    scans.append(read_scan(shared_data / "totalseg_example" / "ct.nii.gz"))
    # preprocess_scan gives (windows [n, 1, z, y, x], record); a model-shape tuple is
    # 'resize', one window per scan.
    return np.stack([preprocess_scan(s, model_shape)[0][0] for s in scans])


def _tiny_argmax_model(kind="identity", opset=17):
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
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


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
    inferred = onnx.shape_inference.infer_shapes(m).graph
    types = {vi.name: vi.type.tensor_type.elem_type for vi in inferred.value_info}
    casts = [n for n in m.graph.node if n.op_type == "Cast" and _cast_to(n) == TensorProto.UINT8]
    assert len(casts) == 2  # LABELS and CONFIDENCE
    for node in casts:  # no direct integer -> UINT8 cast anywhere in the graph
        assert types[node.input[0]] == TensorProto.FLOAT, node.name
    out = m.graph.output[0]
    assert out.name == OUTPUT_NAME and out.type.tensor_type.elem_type == TensorProto.UINT8


@pytest.mark.slow
def test_shipped_model_labels_unchanged_on_phantoms_and_real_ct(shared_data):
    model = onnx.load(str(SHIPPED))
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[2:]]
    x = _batch(shared_data, shape)
    new_labels, _, scores = _run(_with_scores(model), x)
    (old_labels,) = _run(_direct_cast(model), x, [OUTPUT_NAME])
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
    exported = onnx.load(str(path))
    assert _tail(exported)[0] == ["ArgMax", "Cast:FLOAT", "Cast:UINT8"]
    assert [o.name for o in exported.graph.output] == [OUTPUT_NAME, CONFIDENCE_NAME]
    res = check_export(net, path, (16, 16, 16), batches=(2,))
    assert res["batch2_dtype"] == "uint8" and res["batch2_label_agreement"] >= 0.9999, res
    assert res["batch2_confidence_max_abs_diff"] <= 1, res  # vs NumPy softmax of Paddle's logits
    plain = export_onnx(net, (16, 16, 16), tmp_path / "plain.onnx", confidence=False)
    assert [o.name for o in onnx.load(str(plain)).graph.output] == [OUTPUT_NAME]
    # The diagnostic float variant (float32 in, int32 out; not served) still exports.
    fpath = export_onnx(net, (16, 16, 16), tmp_path / "model_float.onnx", variant="float")
    res = check_export(net, fpath, (16, 16, 16), variant="float", batches=(2,))
    assert res["batch2_dtype"] == "int32" and res["batch2_label_agreement"] >= 0.9999, res


# --- the CONFIDENCE output -------------------------------------------------------------------
def _tiny_scores(rng, n=6):
    """Class scores with every kind of voxel: confident, near ties, exact ties, large values."""
    s = rng.normal(0, 3, size=(n, NUM_CLASSES, 4, 4, 4)).astype(np.float32)
    s[0] = rng.integers(0, 3, size=s[0].shape)  # exact ties (two or three classes)
    s[1] = 0
    s[1, 1] = 50  # saturated softmax: p = 1 -> 255
    s[2] = 0  # all three equal: p = 1/3 -> 85
    return s


@pytest.mark.parametrize("opset", [17, 18])
def test_confidence_on_a_tiny_graph_matches_numpy_softmax(opset):
    m = _tiny_argmax_model(opset=opset)
    assert cast_labels_via_float(m) is True
    before = copy.deepcopy(m)
    assert add_confidence_output(m) is True
    onnx.checker.check_model(m, full_check=True)
    assert [o.name for o in m.graph.output] == [OUTPUT_NAME, CONFIDENCE_NAME]
    lab, conf = m.graph.output
    assert conf.type.tensor_type.elem_type == TensorProto.UINT8
    assert conf.type.tensor_type.shape == lab.type.tensor_type.shape  # ["n", 4, 4, 4]
    # Only ops TensorRT 10's ONNX parser lists, and the labels' graph is untouched.
    assert {n.op_type for n in m.graph.node[len(before.graph.node) :]} == {
        "Softmax",
        "ReduceMax",
        "Mul",
        "Add",
        "Floor",
        "Clip",
        "Cast",
    }
    assert list(m.graph.node[: len(before.graph.node)]) == list(before.graph.node)
    assert add_confidence_output(m) is False  # idempotent
    assert len(m.graph.output) == 2

    s = _tiny_scores(np.random.default_rng(opset))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    got_labels, got_conf = sess.run(None, {"scores": s})
    assert got_conf.dtype == np.uint8 and got_conf.shape == got_labels.shape == (6, 4, 4, 4)
    assert np.array_equal(got_labels, np.argmax(s, axis=1).astype(np.uint8))
    ref = _numpy_confidence(s)
    assert np.abs(got_conf.astype(np.int64) - ref).max() <= 1
    assert (got_conf == ref).mean() > 0.99
    assert np.all(got_conf[1] == 255) and np.all(got_conf[2] == 85)
    assert got_conf.min() >= 85  # 3 classes: the winner has at least a third


def test_confidence_refuses_a_graph_it_does_not_understand():
    with pytest.raises(ValueError, match="from an ArgMax"):
        add_confidence_output(_tiny_argmax_model("not_argmax"))
    with pytest.raises(ValueError, match="expected a graph output 'NOPE'"):
        add_confidence_output(_tiny_argmax_model(), output_name="NOPE")
    with pytest.raises(ValueError, match="opset >= 13"):
        add_confidence_output(_tiny_argmax_model(opset=12))


def test_shipped_model_is_its_labels_graph_plus_the_confidence_branch():
    """The shipped file is exactly the surgery on its LABELS-only graph: the old nodes,
    weights and metadata as they were, the branch appended, CONFIDENCE declared like LABELS."""
    shipped = onnx.load(str(SHIPPED))
    old = _only_labels(shipped)
    assert len(old.graph.node) < len(shipped.graph.node)
    redone = copy.deepcopy(old)
    assert add_confidence_output(redone) is True
    assert list(redone.graph.node) == list(shipped.graph.node)
    assert list(redone.graph.initializer) == list(shipped.graph.initializer)
    assert list(redone.graph.output) == list(shipped.graph.output)
    lab, conf = shipped.graph.output
    assert (lab.name, conf.name) == (OUTPUT_NAME, CONFIDENCE_NAME)
    assert conf.type.tensor_type == lab.type.tensor_type  # uint8 ["batch", z, y, x]
    meta = {p.key: p.value for p in shipped.metadata_props}
    assert {"hepascreen_preprocess", "hepascreen_spacing_mm"} <= set(meta)
    assert add_confidence_output(shipped) is False


def test_add_confidence_only_cli_rewrites_a_file_in_place(tmp_path, capsys):
    shipped = onnx.load(str(SHIPPED))
    old = _only_labels(shipped)
    path = tmp_path / "model.onnx"
    onnx.save(old, str(path))
    path.chmod(0o644)
    assert main(["--add-confidence-only", str(path)]) == 0
    assert "CONFIDENCE added to" in capsys.readouterr().out
    new = onnx.load(str(path))
    assert [o.name for o in new.graph.output] == [OUTPUT_NAME, CONFIDENCE_NAME]
    assert path.stat().st_mode & 0o777 == 0o644
    assert list(new.metadata_props) == list(shipped.metadata_props)
    assert new.opset_import == shipped.opset_import and new.ir_version == shipped.ir_version
    w_old = {t.name: numpy_helper.to_array(t) for t in old.graph.initializer}
    w_new = {t.name: numpy_helper.to_array(t) for t in new.graph.initializer}
    assert all(np.array_equal(w_old[k], w_new[k]) for k in w_old)
    assert main(["--add-confidence-only", str(path)]) == 0
    assert "already present" in capsys.readouterr().out
    assert add_confidence_file(path) is False
    with pytest.raises(SystemExit):
        main(["--add-confidence-only", str(tmp_path / "missing.onnx")])
    with pytest.raises(SystemExit):
        main(["--add-confidence-only", str(path), "--recast-only", str(path)])


@pytest.mark.slow
def test_shipped_confidence_on_phantoms_and_real_ct(shared_data):
    """ONNX Runtime on the shipped model: LABELS byte-identical to the LABELS-only graph,
    CONFIDENCE equal to NumPy's round(255 x max softmax) of the network's scores (+-1)."""
    model = onnx.load(str(SHIPPED))
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[2:]]
    x = _batch(shared_data, shape)
    labels, conf, scores = _run(_with_scores(model), x)
    (old_labels,) = _run(_only_labels(model), x)
    assert labels.tobytes() == old_labels.tobytes()
    assert conf.dtype == np.uint8 and conf.shape == labels.shape
    diff = np.abs(conf.astype(np.int64) - _numpy_confidence(scores))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.999, (diff.max(), (diff > 0).sum())
    # A real comparison: confident inside the organs, less so somewhere (their borders).
    assert conf.min() >= 85 and conf.max() == 255
    assert np.median(conf[labels == LABEL_LIVER]) > 200 and (conf < 200).sum() > 100
