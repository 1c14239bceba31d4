"""INT8: explicit Q/DQ that TensorRT takes as it is, the custom op intact, accuracy gates on the
demo checkpoint, per-node error localisation, node overrides."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, numpy_helper

from onerank_export.calibration.checks import check_int8
from onerank_export.calibration.data import prepare_data
from onerank_export.calibration.graph import tensor_types
from onerank_export.calibration.histogram import entropy_threshold
from onerank_export.calibration.int8 import quantize_int8
from onerank_export.calibration.settings import CalibrationSettings
from onerank_export.errors import ConfigError
from onerank_export.precision import Precision


@pytest.fixture(scope="module")
def int8_run(calibrated, demo_fp32_onnx):
    outcome = calibrated(Precision.INT8)
    assert outcome.model_path is not None, outcome.summary
    return outcome, onnx.load(str(outcome.model_path)), onnx.load(str(demo_fp32_onnx))


@pytest.fixture(scope="module")
def small_sets(demo_model):
    return prepare_data(demo_model.cfg, CalibrationSettings("int8", num_requests=64, eval_requests=64))


@pytest.mark.slow  # the shared demo calibration (`calibrated`) takes ~20 s on 2 cores
def test_int8_structure_is_what_tensorrt_explicit_quantization_takes(int8_run):
    _, model, fp32 = int8_run
    onnx.checker.check_model(model, full_check=True)
    g = model.graph
    consts = {i.name: i for i in g.initializer}
    made_by = {o: n for n in g.node for o in n.output}
    qs = [n for n in g.node if n.op_type == "QuantizeLinear"]
    assert len(qs) >= 20
    for q in qs:  # symmetric int8 activations: zero point 0 of type INT8, one scale
        zp = consts[q.input[2]]
        assert zp.data_type == TensorProto.INT8 and not numpy_helper.to_array(zp).any()
        assert numpy_helper.to_array(consts[q.input[1]]).size == 1
    weights = [n for n in g.node if n.op_type == "DequantizeLinear" and n.input[0] in consts]
    assert weights
    for dq in weights:  # per-channel on the output channel: MatMul B [K, N] axis 1, Gemm transB [N, K] axis 0
        w = consts[dq.input[0]]
        axis = next(a.i for a in dq.attribute if a.name == "axis")
        user = next(n for n in g.node if dq.output[0] in n.input)
        transposed = user.op_type == "Gemm" and any(a.name == "transB" and a.i for a in user.attribute)
        assert w.data_type == TensorProto.INT8 and axis == (0 if transposed else len(w.dims) - 1), dq.name
        assert numpy_helper.to_array(consts[dq.input[1]]).shape == (w.dims[axis],)
        assert not numpy_helper.to_array(consts[dq.input[2]]).any()
    for node in g.node:  # nothing quantized on integer inputs (ids, Gather indices)
        if node.op_type == "Gather":
            assert node.input[1] not in made_by or made_by[node.input[1]].op_type != "DequantizeLinear"
    scorer = [n for n in g.node if n.domain == "onerank"]
    assert len(scorer) == 1 and scorer[0].op_type == "MatchingScore"
    assert [f.SerializeToString() for f in model.functions] == [f.SerializeToString() for f in fp32.functions]
    types = tensor_types(model)  # the mask stays int32: no BOOL/UINT8 plugin input, no Q/DQ on it
    assert [types[x] for x in scorer[0].input] == [TensorProto.FLOAT, TensorProto.FLOAT, TensorProto.INT32]
    for x in scorer[0].input[:2]:  # the scorer reads float, never a dequantized tensor
        node = made_by[x]
        while node.op_type in ("Reshape", "Slice", "Squeeze", "Unsqueeze", "Transpose"):
            node = made_by[node.input[0]]
        assert node.op_type == "LayerNormalization"
    meta = {p.key: p.value for p in model.metadata_props}
    fp32_meta = {p.key: p.value for p in fp32.metadata_props}
    assert meta["onerank.precision"] == "int8" and meta["onerank.config"] == fp32_meta["onerank.config"]
    assert meta["onerank.calibration.method"] == "minmax"
    assert {(o.domain, o.version) for o in model.opset_import} == {(o.domain, o.version) for o in fp32.opset_import}


@pytest.mark.slow  # the shared demo calibration (`calibrated`) takes ~20 s on 2 cores
def test_int8_runs_in_onnxruntime_and_passes_the_gates_on_the_demo(int8_run):
    outcome, model, _ = int8_run
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["scores"]
    report = json.loads(outcome.report_path.read_text())
    entry = report["precisions"]["int8"]
    assert outcome.passed and entry["passed"] and entry["model"]["written"]
    for task, m in entry["accuracy"]["tasks"].items():
        assert abs(m["auc_change"]) <= 0.002, task
        assert m["auc_fp32"] > 0.7  # a trained model: the comparison means something
    assert entry["accuracy"]["topk_overlap"]["mean"] >= 0.95
    assert entry["accuracy"]["spearman"]["mean"] > 0.98
    assert entry["data"]["disjoint"] and entry["data"]["evaluation_requests"] == 1000
    assert all(c["passed"] for c in entry["structure"])
    # The report format (onerank-calibration/1): the keys readers rely on, in order.
    assert list(entry) == ["passed", "model", "settings", "gates_config", "data", "nodes", "structure", "accuracy",
                           "gates", "quantized_nodes", "timings_detail", "localization", "seconds"]
    assert all(list(g) == ["name", "value", "limit", "passed", "detail"] for g in entry["gates"])  # as before
    assert all(list(c) == ["name", "passed", "detail"] for c in entry["structure"])
    assert list(entry["accuracy"]) == ["tasks", "score_abs_error", "score_abs_error_max_per_task",
                                       "score_abs_error_curve", "topk", "topk_overlap", "topk_overlap_per_task",
                                       "topk_overlap_histogram", "spearman", "padded_candidates_nonzero",
                                       "nonfinite_scores", "fp32_onnxruntime_max_abs_error"]
    assert list(entry["accuracy"]["score_abs_error"]) == ["p50", "p90", "p99", "p99.9", "max", "mean"]
    assert set(entry["model"]) == {"path", "written", "sha256"} and entry["settings"]["precision"] == "int8"
    assert entry == json.loads(json.dumps(outcome.entry.to_dict()))
    assert outcome.plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow  # the shared demo calibration (`calibrated`) takes ~20 s on 2 cores
def test_localisation_ranks_every_quantized_node(int8_run):
    outcome, _, _ = int8_run
    details = outcome.entry.details
    loc = details.localization
    errors = [r.mean_abs_error for r in loc.nodes]
    assert sorted(r.node for r in loc.nodes) == sorted(details.quantized_nodes)
    assert errors == sorted(errors, reverse=True) and errors[0] > 0
    assert loc.float_vs_fp32_onnx < 1e-5  # the probe with flags off is the float model
    assert loc.all_quantized_mean_abs_error > errors[0]
    # The report's JSON says the same.
    entry = json.loads(outcome.report_path.read_text())["precisions"]["int8"]
    assert [r["node"] for r in entry["localization"]["nodes"]] == [r.node for r in loc.nodes]
    assert entry["localization"]["probe_fidelity"]["float_vs_fp32_onnx"] == loc.float_vs_fp32_onnx
    assert entry["quantized_nodes"] == list(details.quantized_nodes)


@pytest.mark.slow  # the shared demo calibration (`calibrated`) takes ~20 s on 2 cores
def test_structure_checks_catch_what_tensorrt_rejects(int8_run):
    from onerank_export.calibration.selection import int8_plan

    _, model, fp32 = int8_run
    plan = int8_plan(fp32)
    assert all(c.passed for c in check_int8(model, fp32, plan))
    broken = onnx.ModelProto()
    broken.CopyFrom(model)
    q = next(n for n in broken.graph.node if n.op_type == "QuantizeLinear")
    zp = next(i for i in broken.graph.initializer if i.name == q.input[2])
    zp.CopyFrom(numpy_helper.from_array(np.array(3, dtype=np.int8), zp.name))  # asymmetric
    dq = next(n for n in broken.graph.node if n.op_type == "DequantizeLinear" and
              any(i.name == n.input[0] for i in broken.graph.initializer))
    next(a for a in dq.attribute if a.name == "axis").i = 0  # per-channel on the input axis
    pair = next(n for n in broken.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == q.output[0])
    other = next(n for n in broken.graph.node if n.op_type == "QuantizeLinear" and n.input[1] != q.input[1])
    pair.input[1] = other.input[1]  # DQ with another tensor's scale
    failed = {c.name for c in check_int8(broken, fp32, plan) if not c.passed}
    assert failed == {"q_zero_point_int8_zero", "qdq_symmetric_pairs", "weights_per_channel"}


def test_keep_float_and_force_low_precision_overrides(demo_fp32_onnx, small_sets):
    batches = small_sets.calibration.batches(32)
    kept = quantize_int8(demo_fp32_onnx, batches, method="minmax", keep_float=["layers.1.*", "Gemm"])
    assert not any(n.startswith("layers.1.") for n in kept.quantized_nodes)
    assert all(c.reason.startswith("--keep-float") for c in kept.plan if c.name.startswith("layers.1."))
    dq_out = dq_of(kept.proto.graph)
    assert not [n.name for n in kept.proto.graph.node if n.op_type == "Gemm" and set(n.input) & dq_out]
    # The user and candidate paths share each layer's weights: keeping one path's matmul in float
    # must not hand it the other path's int8-rounded weight.
    shared = quantize_int8(demo_fp32_onnx, batches, method="minmax", keep_float=["layers.0.ffn.down/linear_8/MatMul"])
    g = shared.proto.graph
    kept_node = next(n for n in g.node if n.name == "layers.0.ffn.down/linear_8/MatMul")
    twin = next(n for n in g.node if n.name == "layers.0.ffn.down/linear_6/MatMul")
    assert "layers.0.ffn.down/linear_6/MatMul" in shared.quantized_nodes
    assert kept_node.input[1] == "layers.0.ffn.down.weight_t" and not set(kept_node.input) & dq_of(g)
    assert set(twin.input) & dq_of(g)
    fp32 = onnx.load(str(demo_fp32_onnx))
    assert all(c.passed for c in check_int8(shared.proto, fp32, shared.plan))
    forced = quantize_int8(demo_fp32_onnx, batches, method="minmax", force_low=["encoder.0/matmul_3/MatMul"])
    assert "encoder.0/matmul_3/MatMul" in forced.quantized_nodes
    with pytest.raises(ConfigError, match="matches no node"):
        quantize_int8(demo_fp32_onnx, batches, method="minmax", keep_float=["layers.9.*"])
    with pytest.raises(ConfigError, match="cannot be quantized"):
        quantize_int8(demo_fp32_onnx, batches, method="minmax", force_low=["MatchingScore"])
    # The candidates' score GEMM reads the key mask as a key column: refused, whatever the method.
    with pytest.raises(ConfigError, match="carries the attention key mask"):
        quantize_int8(demo_fp32_onnx, batches, method="entropy", force_low=["encoder.0/matmul_2/MatMul"])


def dq_of(graph: onnx.GraphProto) -> set[str]:
    return {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}


def test_quantization_is_deterministic(demo_fp32_onnx, small_sets):
    batches = small_sets.calibration.batches(32)
    a = quantize_int8(demo_fp32_onnx, batches, method="percentile")
    b = quantize_int8(demo_fp32_onnx, batches, method="percentile")
    assert a.proto.SerializeToString() == b.proto.SerializeToString()


def test_entropy_search_returns_onnxruntimes_thresholds():
    from onnxruntime.quantization.calibrate import HistogramCollector

    collector = HistogramCollector("entropy", True, 2048, 128, None, None)
    rng = np.random.default_rng(0)
    for name, data in {"gauss": rng.normal(size=20000), "heavy": rng.standard_t(2, size=20000),
                       "skewed": np.abs(rng.normal(size=20000)) ** 3}.items():
        collector.collect({name: [data.astype(np.float32)]})
    for name, hist in collector.histogram_dict.items():
        ours = entropy_threshold(hist, 128)
        theirs = collector.get_entropy_threshold(hist, 128)
        assert (float(ours[0]), float(ours[1])) == (float(theirs[0]), float(theirs[1])), name
