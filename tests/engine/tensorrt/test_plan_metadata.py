"""The TensorRT builder's pure parts, the plan metadata and the TensorRT runner on a host without
CUDA / TensorRT: the optimisation profile the builder is given, the metadata written beside a plan,
the one-line parser errors, and the runner's skip verdict."""

from __future__ import annotations

import hashlib
import json

import onnx
import pytest
from helpers import TINY, make_tiny_model
from onnx import TensorProto, helper

from onerank_export import spec
from onerank_export.engine.tensorrt.availability import tensorrt_unavailable_reason
from onerank_export.engine.tensorrt.builder import default_timing_cache_path, onnx_facts, parser_error_line
from onerank_export.engine.tensorrt.plan_metadata import (
    metadata_path,
    optimization_profile,
    plan_file_name,
    plan_metadata,
    plan_role,
    profile_from_metadata,
    read_plan_metadata,
    write_plan_metadata,
)
from onerank_export.errors import StageError
from onerank_export.parity.cases import shape_case
from onerank_export.parity.runner import RunnerUnavailable
from onerank_export.parity.runners import EagerDenseRunner
from onerank_export.parity.suite import run_parity
from onerank_export.parity.tensorrt_runner import TensorRTRunner

REASON = tensorrt_unavailable_reason()
needs_no_tensorrt = pytest.mark.skipif(REASON is None, reason="TensorRT and CUDA are available here")


@needs_no_tensorrt
def test_tensorrt_runner_is_unavailable_with_the_reason(tmp_path):
    runner = TensorRTRunner(tmp_path / "onerank.fp32.plan")
    with pytest.raises(RunnerUnavailable) as err:
        runner.activate()
    assert str(err.value) == REASON and not runner.is_active
    # Through the parity suite: every case is recorded as skipped with that reason, none as passed.
    report = run_parity(EagerDenseRunner(make_tiny_model()), [(runner, "fp32")], [shape_case(TINY, 2, 5, 7)])
    assert [(c.status, c.reason) for c in report.cases] == [("skipped", REASON)]
    assert report.counts()["passed"] == 0


def test_runner_finds_the_plugin_in_a_build_layout(tmp_path):
    plan = tmp_path / "engines" / "onerank.fp16.plan"
    assert TensorRTRunner(plan).plugin_library is None
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "libonerank_plugins.so").write_bytes(b"\x7fELF")
    assert TensorRTRunner(plan).plugin_library == tmp_path / "plugins" / "libonerank_plugins.so"
    assert TensorRTRunner(plan, plugin_library=tmp_path / "x.so").plugin_library == tmp_path / "x.so"
    assert TensorRTRunner(plan).name == "tensorrt:onerank.fp16.plan"


def test_profile_covers_every_input_from_one_to_the_config_maxima():
    cfg = TINY.replace(max_hist_len=48, max_candidates=40)
    s = cfg.serving
    profile = optimization_profile(cfg)
    assert list(profile) == list(spec.INPUT_NAMES)
    b, f, c = (1, s.opt_batch_size, s.max_batch_size), cfg.num_cand_features, cfg.num_context_fields
    expected = {
        "hist_item_ids": ((1, 1), (b[1], s.opt_hist_len), (b[2], 48)),
        "hist_action_ids": ((1, 1), (b[1], s.opt_hist_len), (b[2], 48)),
        "context_ids": ((1, c), (b[1], c), (b[2], c)),
        "cand_item_ids": ((1, 1), (b[1], s.opt_candidates), (b[2], 40)),
        "cand_features": ((1, 1, f), (b[1], s.opt_candidates, f), (b[2], 40, f)),
    }
    assert profile == expected
    for name, (low, opt, high) in profile.items():
        assert all(lo <= o <= hi for lo, o, hi in zip(low, opt, high, strict=True)), name


def _files(tmp_path):
    plan = tmp_path / "onerank.int8.plan"
    plan.write_bytes(b"serialized engine bytes")
    model = tmp_path / "onerank.int8.onnx"
    model.write_bytes(b"onnx bytes")
    plugin = tmp_path / "libonerank_plugins.so"
    plugin.write_bytes(b"plugin bytes")
    return plan, model, plugin


def test_plan_metadata_round_trip(tmp_path):
    plan, model, plugin = _files(tmp_path)
    profile = optimization_profile(TINY)
    meta = plan_metadata(plan=plan, precision="int8", tensorrt_version="11.4.0.106", gpu_name="NVIDIA H100",
                         compute_capability="9.0", profile=profile, onnx=model, plugin_library=plugin,
                         build_seconds=12.34567, extra={"plugin_layers": 1})
    path = write_plan_metadata(metadata_path(plan), meta)
    assert path.name == "onerank.int8.plan.json" and not list(tmp_path.glob("*.tmp"))
    back = read_plan_metadata(path)
    assert back == json.loads(json.dumps(meta))
    assert back["plan_sha256"] == hashlib.sha256(b"serialized engine bytes").hexdigest()
    assert back["onnx"]["sha256"] == hashlib.sha256(b"onnx bytes").hexdigest()
    assert back["plugin_library"]["sha256"] == hashlib.sha256(b"plugin bytes").hexdigest()
    assert back["gpu"] == {"name": "NVIDIA H100", "compute_capability": "9.0"}
    assert back["build_seconds"] == 12.346 and back["plugin_layers"] == 1
    assert profile_from_metadata(back) == profile


def test_plan_metadata_rejects_what_is_not_plan_metadata(tmp_path):
    plan, model, _ = _files(tmp_path)
    meta = plan_metadata(plan=plan, precision="fp32", tensorrt_version="10.8.0.43", gpu_name="g",
                         compute_capability="8.0", profile=optimization_profile(TINY), onnx=model,
                         plugin_library=None, build_seconds=1.0)
    assert meta["plugin_library"] is None
    with pytest.raises(ValueError, match="profile"):
        write_plan_metadata(tmp_path / "m.json", {k: v for k, v in meta.items() if k != "profile"})
    bad = tmp_path / "bad.json"
    for content, match in (("{", "not readable"), ('{"format": "x"}', "format"), ("[]", "format")):
        bad.write_text(content)
        with pytest.raises(StageError, match=match):
            read_plan_metadata(bad)
    bad.write_text(json.dumps({k: v for k, v in meta.items() if k != "onnx"}))
    with pytest.raises(StageError, match="lacks 'onnx'"):
        read_plan_metadata(bad)


def test_plan_names_and_timing_cache_location(tmp_path, monkeypatch):
    assert [plan_file_name(p) for p in ("fp32", "fp16", "int8")] == [
        "onerank.fp32.plan", "onerank.fp16.plan", "onerank.int8.plan"]
    with pytest.raises(StageError, match="bf16"):
        plan_file_name("bf16")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = default_timing_cache_path("10.8.0.43", "8.6")
    assert path == tmp_path / "onerank-export" / "tensorrt" / "timing-trt10.8.0.43-sm8.6.cache"
    assert default_timing_cache_path("11.4.0.106", "8.6") != path != default_timing_cache_path("10.8.0.43", "9.0")


def test_parser_error_is_one_line_naming_the_node():
    line = parser_error_line("onerank.fp16.onnx", 0, 3, 41, "scorer/MatchingScore", "MatchingScore",
                             "Plugin not found,\n are the plugin name, version,\tand namespace correct?")
    assert line == ("onerank.fp16.onnx: TensorRT's ONNX parser failed at node 41 'scorer/MatchingScore' "
                    "(MatchingScore): Plugin not found, are the plugin name, version, and namespace correct? "
                    "(+2 more errors)")
    assert "the graph" in parser_error_line("m.onnx", 0, 1, -1, "", "", "bad model")


def test_custom_node_count(tmp_path):
    nodes = [helper.make_node("MatchingScore", ["z", "r", "v"], ["s"], domain="onerank", scale=0.1,
                              plugin_namespace="onerank"),
             helper.make_node("Identity", ["s"], ["out"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
                                           for n in ("z", "r", "v")],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20),
                                                      helper.make_opsetid("onerank", 1)]), path)
    assert onnx_facts(path)[1] == 1


def test_plan_metadata_records_the_role_and_names_the_halves_plans(tmp_path):
    plan, model, plugin = _files(tmp_path)
    scorer = plan_metadata(plan=plan, precision="fp16", tensorrt_version="10.8.0.43", gpu_name="g",
                           compute_capability="8.0", profile=optimization_profile(TINY, "candidate_scorer"),
                           onnx=model, plugin_library=plugin, build_seconds=1.0, role="candidate_scorer")
    back = read_plan_metadata(write_plan_metadata(metadata_path(plan), scorer))
    assert plan_role(back) == "candidate_scorer" and "user_key_mask" in back["profile"]
    # plans written before the cache carry no role: they are the single graph; a new one must say it
    assert plan_role({k: v for k, v in back.items() if k != "role"}) == "serving"
    with pytest.raises(ValueError, match="role"):
        write_plan_metadata(tmp_path / "m.json", {k: v for k, v in scorer.items() if k != "role"})
    assert [plan_file_name("int8", r) for r in ("serving", "user_encoder", "candidate_scorer")] == [
        "onerank.int8.plan", "onerank.user_encoder.int8.plan", "onerank.candidate_scorer.int8.plan"]
    with pytest.raises(StageError, match="unknown engine role 'encoder'"):
        plan_file_name("fp32", "encoder")
