"""The exported ONNX: the custom op with its reference body, dynamic axes, determinism, parity."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from helpers import make_tiny_model, request

from onerank_export import spec
from onerank_export.calibration.graph import tensor_types
from onerank_export.export.custom_op import MATCHING_SCORE
from onerank_export.export.onnx_config import EXAMPLE_DIMS, OPSET
from onerank_export.export.onnx_export import export_onnx


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    model = make_tiny_model(seed=11)
    path = tmp_path_factory.mktemp("export") / "tiny.onnx"
    export_onnx(model, path)
    return model, path


def test_model_has_exactly_one_matching_score_node_with_its_function(demo_fp32_onnx):
    proto = onnx.load(str(demo_fp32_onnx))
    onnx.checker.check_model(proto, full_check=True)
    custom = [n for n in proto.graph.node if n.domain == MATCHING_SCORE.domain]
    assert [n.op_type for n in custom] == [MATCHING_SCORE.op_type]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in custom[0].attribute}
    assert attrs["plugin_namespace"] == b"onerank"
    assert attrs["scale"] == pytest.approx(64**-0.5)
    assert len(custom[0].input) == 3 and len(custom[0].output) == 1
    (fn,) = proto.functions
    assert (fn.domain, fn.name) == (MATCHING_SCORE.domain, MATCHING_SCORE.op_type)
    assert set(fn.attribute) == {"scale", "plugin_namespace", "plugin_version"}
    assert attrs["plugin_version"] == b"2"
    assert {(o.domain, o.version) for o in proto.opset_import} == {("", OPSET), ("onerank", 2)}
    # The mask is int32 (TensorRT plugins take no BOOL): the demo file, as the tiny one in test_matching_score_mask.
    types = tensor_types(proto)
    assert [types[x] for x in custom[0].input] == [onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT,
                                                   onnx.TensorProto.INT32]
    assert [(o.domain, o.version) for o in fn.opset_import] == [("", OPSET)]


def test_inputs_outputs_and_dynamic_axes_follow_the_spec(demo_fp32_onnx):
    graph = onnx.load(str(demo_fp32_onnx)).graph
    dtype = {"int64": onnx.TensorProto.INT64, "float32": onnx.TensorProto.FLOAT}
    for value, s in zip([*graph.input, *graph.output], [*spec.INPUTS, *spec.OUTPUTS], strict=True):
        assert value.name == s.name
        assert value.type.tensor_type.elem_type == dtype[s.dtype]
        dims = value.type.tensor_type.shape.dim
        for d, axis in zip(dims, s.axes, strict=True):
            if axis in spec.DYNAMIC_AXES:
                assert d.dim_param == axis, (s.name, axis)
            else:
                assert d.dim_value > 0


def test_nodes_have_readable_unique_names(demo_fp32_onnx):
    names = [n.name for n in onnx.load(str(demo_fp32_onnx)).graph.node]
    assert len(set(names)) == len(names)
    assert any(n.startswith("layers.0.qkv/") for n in names)
    assert not any(n.startswith("node_") for n in names)


def test_export_is_byte_identical_for_the_same_checkpoint(tiny_onnx, tmp_path):
    model, path = tiny_onnx
    again = tmp_path / "again.onnx"
    export_onnx(model, again)
    assert again.read_bytes() == path.read_bytes()


def test_onnxruntime_matches_eager_on_shapes_other_than_the_export_example(tiny_onnx):
    model, path = tiny_onnx
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    example = (EXAMPLE_DIMS["batch"], EXAMPLE_DIMS["hist_len"], EXAMPLE_DIMS["num_candidates"])
    for b, length, n in [(1, 1, 1), (5, 63, 64), (3, 8, 31)]:
        assert (b, length, n) != example
        feed = request(model.cfg, b, length, n, seed=n)
        (ours,) = session.run(None, feed)
        with torch.no_grad():
            ref = model(**{k: torch.from_numpy(v) for k, v in feed.items()}).scores.numpy()
        assert ours.shape == (b, n, 3)
        assert np.abs(ours - ref).max() <= 1e-5


def test_onnx_keeps_padding_and_permutation_invariance(tiny_onnx):
    model, path = tiny_onnx
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = request(model.cfg, 2, 20, 13, seed=3)
    (base,) = session.run(None, feed)
    perm = np.random.default_rng(1).permutation(13)
    (permuted,) = session.run(None, {k: (v[:, perm] if k.startswith("cand_") else v) for k, v in feed.items()})
    assert np.abs(permuted - base[:, perm]).max() <= 1e-6
    padded = dict(feed, cand_item_ids=np.pad(feed["cand_item_ids"], ((0, 0), (0, 4))),
                  cand_features=np.pad(feed["cand_features"], ((0, 0), (0, 4), (0, 0))),
                  hist_item_ids=np.pad(feed["hist_item_ids"], ((0, 0), (6, 0))),
                  hist_action_ids=np.pad(feed["hist_action_ids"], ((0, 0), (6, 0))))
    (out,) = session.run(None, padded)
    assert np.abs(out[:, :13] - base).max() <= 1e-6
    assert not out[:, 13:].any()


def test_reference_function_alone_matches_the_eager_scorer(tmp_path):
    """The FunctionProto body is what ORT runs for the custom node: check it in isolation too."""
    from onnx import TensorProto, helper

    from onerank_export.export.custom_op import node_attributes, reference_function
    from onerank_export.model.scorer import matching_score

    node = helper.make_node("MatchingScore", ["z", "r", "valid"], ["scores"], domain="onerank",
                            **node_attributes(0.37))
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("z", TensorProto.FLOAT16, ["B", 3, "D"]),
         helper.make_tensor_value_info("r", TensorProto.FLOAT16, ["B", "N", 3, "D"]),
         helper.make_tensor_value_info("valid", TensorProto.INT32, ["B", "N"])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["B", "N", 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("onerank", 2)],
                              functions=[reference_function(OPSET)])
    onnx.checker.check_model(model, full_check=True)
    rng = np.random.default_rng(0)
    z = rng.normal(size=(2, 3, 24)).astype(np.float16)
    r = rng.normal(size=(2, 5, 3, 24)).astype(np.float16)
    valid = (rng.random((2, 5)) < 0.7).astype(np.int32)
    (out,) = ort.InferenceSession(model.SerializeToString()).run(None, {"z": z, "r": r, "valid": valid})
    ref = matching_score(torch.from_numpy(z), torch.from_numpy(r), torch.from_numpy(valid != 0), 0.37).numpy()
    assert out.dtype == np.float32
    assert np.abs(out - ref).max() <= 1e-6
    assert not out[valid == 0].any()
