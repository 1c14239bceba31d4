"""FP16: strongly typed with fp32 islands (block list + data-driven range check), casts only where
types change, the serving contract's fp32 I/O, fp16 z/r into the intact scorer, error bound."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onerank_export.calibration.data import prepare_data
from onerank_export.calibration.fp16 import activation_ranges, convert_fp16, range_blocked_nodes
from onerank_export.calibration.graph import tensor_types
from onerank_export.calibration.settings import CalibrationSettings
from onerank_export.precision import Precision


@pytest.fixture(scope="module")
def fp16_run(calibrated, demo_fp32_onnx):
    outcome = calibrated(Precision.FP16)
    assert outcome.model_path is not None, outcome.summary
    return outcome, onnx.load(str(outcome.model_path)), onnx.load(str(demo_fp32_onnx))


@pytest.mark.slow  # the shared demo calibration (`calibrated`) takes ~20 s on 2 cores
def test_fp16_structure(fp16_run):
    _, model, fp32 = fp16_run
    onnx.checker.check_model(model, full_check=True)
    types = tensor_types(model)
    io = [(v.name, v.type.tensor_type.elem_type) for v in (*model.graph.input, *model.graph.output)]
    assert io == [(v.name, v.type.tensor_type.elem_type) for v in (*fp32.graph.input, *fp32.graph.output)]
    assert dict(io)["cand_features"] == TensorProto.FLOAT and dict(io)["scores"] == TensorProto.FLOAT
    (scorer,) = [n for n in model.graph.node if n.domain == "onerank"]
    assert [types[x] for x in scorer.input] == [TensorProto.FLOAT16, TensorProto.FLOAT16, TensorProto.INT32]
    assert [f.SerializeToString() for f in model.functions] == [f.SerializeToString() for f in fp32.functions]
    for node in model.graph.node:
        floats = {types[x] for x in (*node.input, *node.output) if x and types.get(x) in (1, 10)}
        if node.op_type in ("LayerNormalization", "Softmax", "Exp", "ReduceSum"):
            assert floats == {TensorProto.FLOAT}, node.name  # the fp32 islands
        elif node.op_type in ("MatMul", "Gemm", "Gelu", "Add") and floats:  # integer Adds have none
            assert floats == {TensorProto.FLOAT16}, node.name
    weights = {i.name: i.data_type for i in model.graph.initializer}
    assert weights["layers.0.qkv.weight_t"] == TensorProto.FLOAT16
    casts = [n for n in model.graph.node if n.op_type == "Cast"]
    made_by = {o: n for n in model.graph.node for o in n.output}
    sources = [(c.input[0], c.attribute[0].i) for c in casts]
    assert len(sources) == len(set(sources))  # one cast per tensor and direction
    for c in casts:
        assert types.get(c.input[0]) != c.attribute[0].i  # every cast changes the type
        before = made_by.get(c.input[0])
        if before is not None and before.op_type == "Cast":  # no round trip fp16 -> fp32 -> fp16
            assert types.get(before.input[0]) != types[c.output[0]]
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["onerank.precision"] == "fp16" and "onerank.config" in meta


@pytest.mark.slow  # the shared demo calibration (`calibrated`) takes ~20 s on 2 cores
def test_fp16_error_bound_and_gates_on_the_demo(fp16_run):
    outcome, _, _ = fp16_run
    acc = outcome.entry.accuracy
    assert outcome.passed and acc.max_abs_error <= 5e-3
    assert all(abs(m.auc_change) <= 0.002 for m in acc.tasks.values())
    assert acc.topk_overlap.mean >= 0.95 and acc.padded_candidates_nonzero == 0
    assert {g.name for g in outcome.entry.gates} >= {"max_abs_error", "top10_overlap_mean", "structure"}
    # The report's JSON says the same as the typed entry.
    entry = json.loads(outcome.report_path.read_text())["precisions"]["fp16"]
    assert entry == json.loads(json.dumps(outcome.entry.to_dict()))
    assert entry["accuracy"]["score_abs_error"]["max"] == acc.max_abs_error
    assert {g["name"] for g in entry["gates"]} >= {"max_abs_error", "top10_overlap_mean", "structure"}
    assert list(entry) == ["passed", "model", "settings", "gates_config", "data", "nodes", "structure", "accuracy",
                           "gates", "casts", "range_check", "seconds"]
    assert entry["settings"]["method"] is None and list(entry["range_check"]) == [
        "data_max", "fp16_max", "largest_activations", "flushed_to_zero_in_fp16"]


def test_range_check_blocks_nodes_whose_activations_exceed_the_limit():
    # x [n, 2] -> Mul by 300 -> Add 1 -> y ; values reach ~900 when |x| ~ 3
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "k"], ["big"], name="scale"),
         helper.make_node("Add", ["big", "one"], ["y"], name="shift"),
         helper.make_node("Relu", ["x"], ["small"], name="relu")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2]),
         helper.make_tensor_value_info("small", TensorProto.FLOAT, ["n", 2])],
        [numpy_helper.from_array(np.array(300.0, np.float32), "k"), numpy_helper.from_array(np.array(1.0, np.float32),
                                                                                           "one")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    batches = [{"x": np.array([[3.0, -1.0], [0.5, 2.0]], np.float32)}]
    ranges = activation_ranges(model, batches)
    assert ranges["big"]["absmax"] == pytest.approx(900.0)
    assert set(range_blocked_nodes(model, ranges, 512.0)) == {"scale", "shift"}
    assert range_blocked_nodes(model, ranges, 1000.0) == {}


def test_data_driven_blocks_on_the_demo_model_stay_fp32(demo_model, demo_fp32_onnx):
    sets = prepare_data(demo_model.cfg, CalibrationSettings("fp16", num_requests=32, eval_requests=32))
    fp32 = onnx.load(str(demo_fp32_onnx))
    result = convert_fp16(fp32, sets.calibration.batches(32), data_max=20.0)
    blocked = {c.name: c.reason for c in result.plan if not c.low_precision and "calibration data" in c.reason}
    assert "encoder.1/matmul_6/MatMul" in blocked  # attention scores reach ~100 on the demo
    types = tensor_types(result.proto)
    node = next(n for n in result.proto.graph.node if n.name == "encoder.1/matmul_6/MatMul")
    assert {types[x] for x in (*node.input, *node.output)} == {TensorProto.FLOAT}
