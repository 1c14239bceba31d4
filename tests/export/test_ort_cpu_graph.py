"""The ONNX Runtime CPU rewrite: LayerNormalization as InstanceNormalization, gamma/beta folded
into the following linear layer. It must compute the same function, node for node."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from helpers import request
from onnx import TensorProto, helper, numpy_helper

from onerank_export.export import ort_cpu_graph
from onerank_export.export.ort_cpu_graph import rewrite_for_ort_cpu
from onerank_export.parity.runners import OnnxRuntimeRunner


def _run(model: onnx.ModelProto, feed: dict) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(None, feed)


def _ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def test_every_layer_norm_of_the_demo_is_rewritten_and_scores_do_not_move(demo_fp32_onnx, demo_model):
    original = onnx.load(str(demo_fp32_onnx))
    rewritten = rewrite_for_ort_cpu(original)
    onnx.checker.check_model(rewritten, full_check=True)
    n_ln = _ops(original).count("LayerNormalization")
    assert n_ln > 0
    assert "LayerNormalization" not in _ops(rewritten)
    assert _ops(rewritten).count("InstanceNormalization") == n_ln
    # The attention and FFN norms feed linear layers: their gamma/beta live in the weights now.
    folded = [n for n in rewritten.graph.node if n.op_type == "MatMul" and n.input[1].endswith("/folded")]
    assert len(folded) >= 2 * demo_model.cfg.n_layers
    unfolded = [n for n in rewritten.graph.node if n.name.endswith("/Mul_gamma")]
    assert 0 < len(unfolded) < n_ln
    # Each norm: Shape, Shape, Concat, Reshape, InstanceNormalization, Reshape (+ Mul, Add if unfolded).
    assert len(rewritten.graph.node) == len(original.graph.node) + 5 * n_ln + 2 * len(unfolded)
    for b, length, n, full in [(1, 1, 1, False), (2, 37, 13, False), (3, 64, 5, True)]:
        feed = request(demo_model.cfg, b, length, n, seed=n, full=full)
        (ours,) = _run(rewritten, feed)
        (plain,) = _run(original, feed)
        with torch.no_grad():
            ref = demo_model(**{k: torch.from_numpy(v) for k, v in feed.items()}).scores.numpy()
        assert np.abs(ours - plain).max() <= 2e-6
        assert np.abs(ours - ref).max() <= 1e-5


def _layer_norm_graph() -> onnx.ModelProto:
    """x -> LN_a -> MatMul+Add (foldable); x -> LN_b -> Relu (not); x -> LN_c over axis 1 (left alone)."""
    rng = np.random.default_rng(0)
    d, m = 8, 5
    consts = {"g_a": rng.normal(size=d), "b_a": rng.normal(size=d), "w": rng.normal(size=(d, m)),
              "bias": rng.normal(size=m), "g_b": rng.normal(size=d), "b_b": rng.normal(size=d),
              "g_c": rng.normal(size=(4, d)), "b_c": rng.normal(size=(4, d))}
    nodes = [
        helper.make_node("LayerNormalization", ["x", "g_a", "b_a"], ["n_a"], name="ln_a", epsilon=1e-3),
        helper.make_node("MatMul", ["n_a", "w"], ["mm"], name="mm"),
        helper.make_node("Add", ["mm", "bias"], ["y_a"], name="add"),
        helper.make_node("LayerNormalization", ["x", "g_b", "b_b"], ["n_b"], name="ln_b", axis=-1),
        helper.make_node("Relu", ["n_b"], ["y_b"], name="relu"),
        helper.make_node("LayerNormalization", ["x", "g_c", "b_c"], ["y_c"], name="ln_c", axis=1),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 4, d])],
        [helper.make_tensor_value_info(y, TensorProto.FLOAT, ["B", 4, w])
         for y, w in (("y_a", m), ("y_b", d), ("y_c", d))],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in consts.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_fold_where_a_linear_follows_keep_gamma_beta_elsewhere_and_leave_other_axes_alone():
    original = _layer_norm_graph()
    rewritten = rewrite_for_ort_cpu(original)
    onnx.checker.check_model(rewritten, full_check=True)
    names = {n.name for n in rewritten.graph.node}
    assert "ln_c" in names  # normalises over the last two axes: not a per-row norm, untouched
    assert not any(n.startswith("ln_a/Mul") for n in names)  # folded into the MatMul
    assert {"ln_b/Mul_gamma", "ln_b/Add_beta"} <= names
    assert {"w", "bias"}.isdisjoint(i.name for i in rewritten.graph.initializer)  # no stale copy left
    x = np.random.default_rng(1).normal(3.0, 2.0, size=(3, 4, 8)).astype(np.float32)
    for ours, plain in zip(_run(rewritten, {"x": x}), _run(original, {"x": x}), strict=True):
        assert np.abs(ours - plain).max() <= 1e-5


def test_a_model_without_layer_norm_comes_back_unchanged():
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph)
    assert rewrite_for_ort_cpu(model).SerializeToString() == model.SerializeToString()


def test_the_parity_runner_checks_the_rewritten_model_triton_serves(demo_fp32_onnx, demo_model, monkeypatch):
    calls = []
    real = ort_cpu_graph.rewrite_for_ort_cpu
    monkeypatch.setattr(ort_cpu_graph, "rewrite_for_ort_cpu", lambda m, **kw: calls.append(m) or real(m, **kw))
    runner = OnnxRuntimeRunner(demo_fp32_onnx, threads=1)
    with runner:
        out = runner.infer(request(demo_model.cfg, 1, 9, 4, seed=2))
    assert len(calls) == 1
    assert out["scores"].shape == (1, 4, demo_model.cfg.num_tasks)


def _one_norm_model(x_shape, gamma, consumer: str, *, gamma_is_input: bool = False) -> onnx.ModelProto:
    rng = np.random.default_rng(2)
    d = x_shape[-1]
    consts = {"g": np.asarray(gamma, np.float32), "b": np.full(len(gamma), 0.3, np.float32),
              "w": rng.normal(size=(d, 3)).astype(np.float32), "bias": rng.normal(size=3).astype(np.float32)}
    nodes = [helper.make_node("LayerNormalization", ["x", "g", "b"], ["n"], name="ln")]
    if consumer == "linear":
        nodes += [helper.make_node("MatMul", ["n", "w"], ["m"], name="mm"),
                  helper.make_node("Add", ["m", "bias"], ["y"])]
        y_shape = [*x_shape[:-1], 3]
    else:
        nodes.append(helper.make_node("Relu", ["n"], ["y"]))
        y_shape = list(x_shape)
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))]
    if gamma_is_input:
        inputs.append(helper.make_tensor_value_info("g", TensorProto.FLOAT, [len(gamma)]))
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
                              [numpy_helper.from_array(v, k) for k, v in consts.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("consumer", ["linear", "relu"])
def test_a_broadcast_gamma_of_one_entry_keeps_its_meaning(consumer):
    model = _one_norm_model((2, 5, 8), [1.7], consumer)
    x = np.random.default_rng(3).normal(size=(2, 5, 8)).astype(np.float32)
    (plain,), (ours,) = _run(model, {"x": x}), _run(rewrite_for_ort_cpu(model), {"x": x})
    assert np.abs(ours - plain).max() <= 1e-5


def test_zero_size_rows_and_an_overridable_gamma():
    model = _one_norm_model((2, 0, 8), list(range(1, 9)), "linear")
    (out,) = _run(rewrite_for_ort_cpu(model), {"x": np.zeros((2, 0, 8), np.float32)})
    assert out.shape == (2, 0, 3)
    # An initializer that is also a graph input can be fed: it is not a constant to fold.
    model = _one_norm_model((2, 5, 8), list(range(1, 9)), "linear", gamma_is_input=True)
    feed = {"x": np.random.default_rng(4).normal(size=(2, 5, 8)).astype(np.float32),
            "g": np.linspace(-1, 1, 8).astype(np.float32)}
    assert np.abs(_run(rewrite_for_ort_cpu(model), feed)[0] - _run(model, feed)[0]).max() <= 1e-5


def test_models_with_subgraphs_are_left_alone_and_new_names_do_not_collide():
    model = _one_norm_model((2, 5, 8), list(range(1, 9)), "relu")
    branch = helper.make_graph([helper.make_node("Identity", ["y"], ["z"])], "then", [],
                               [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)])
    with_if = onnx.ModelProto()
    with_if.CopyFrom(model)
    with_if.graph.initializer.append(numpy_helper.from_array(np.array(True), "cond"))
    with_if.graph.node.append(helper.make_node("If", ["cond"], ["out"], then_branch=branch, else_branch=branch))
    assert rewrite_for_ort_cpu(with_if).SerializeToString() == with_if.SerializeToString()
    twice = _one_norm_model((2, 5, 8), list(range(1, 9)), "relu")
    # A node and a tensor already named like the ones the rewrite derives from "ln" and "n".
    twice.graph.node.append(helper.make_node("Relu", ["x"], ["n/x_shape"], name="ln/Shape"))
    twice.graph.output.append(helper.make_tensor_value_info("n/x_shape", TensorProto.FLOAT, [2, 5, 8]))
    x = np.random.default_rng(5).normal(size=(2, 5, 8)).astype(np.float32)
    for ours, plain in zip(_run(rewrite_for_ort_cpu(twice), {"x": x}), _run(twice, {"x": x}), strict=True):
        assert np.abs(ours - plain).max() <= 1e-5
