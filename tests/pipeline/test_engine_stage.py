"""The engine stage, the TensorRT runner and the plan metadata, on a host without CUDA / TensorRT.

What runs TensorRT is fenced here by what can be checked without it: the skip / require verdicts,
the optimisation profile the builder is given, the metadata written beside a plan, and the stage's
bookkeeping (which files it lists, how one failed precision is reported) with the TensorRT build
replaced by a stand-in that writes or fails.
"""

from __future__ import annotations

import hashlib
import json
import sys
import types

import onnx
import pytest
from helpers import TINY, make_tiny_model
from onnx import TensorProto, helper

from onerank_export import spec
from onerank_export.engine.tensorrt.availability import tensorrt_unavailable_reason
from onerank_export.engine.tensorrt.builder import (
    EngineBuild,
    custom_node_count,
    default_timing_cache_path,
    parser_error_line,
)
from onerank_export.engine.tensorrt.plan_metadata import (
    metadata_path,
    optimization_profile,
    plan_file_name,
    plan_metadata,
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
from onerank_export.pipeline.manifest import build_manifest
from onerank_export.pipeline.result import Status
from onerank_export.pipeline.stages import engine as engine_stage

REASON = tensorrt_unavailable_reason()
needs_no_tensorrt = pytest.mark.skipif(REASON is None, reason="TensorRT and CUDA are available here")


@needs_no_tensorrt
def test_auto_is_skipped_with_the_reason_and_writes_nothing(tmp_path):
    out = tmp_path / "build"
    out.mkdir()
    result = engine_stage.run_engine_stage({"fp32": tmp_path / "model.onnx"}, out, TINY, "auto")
    assert result.name == "engine" and result.status is Status.SKIPPED
    assert result.detail == REASON and result.verdict == f"skipped: {REASON}"
    assert result.artifacts == {} and list(out.iterdir()) == []


@needs_no_tensorrt
def test_require_is_a_one_line_error_with_the_reason(tmp_path):
    with pytest.raises(StageError) as err:
        engine_stage.run_engine_stage({"fp32": tmp_path / "model.onnx"}, tmp_path, TINY, "require")
    message = str(err.value)
    assert "\n" not in message and REASON in message and "--engine auto" in message
    assert list(tmp_path.iterdir()) == []


def test_skip_and_unknown_modes(tmp_path):
    assert engine_stage.run_engine_stage({}, tmp_path, TINY, "skip").verdict == "skipped: --engine skip"
    with pytest.raises(StageError, match="'always'"):
        engine_stage.run_engine_stage({}, tmp_path, TINY, "always")


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
    assert custom_node_count(path) == 1


# ----- the stage's bookkeeping with TensorRT stood in for ----------------------------------------


@pytest.fixture
def available(monkeypatch):
    """TensorRT 'available', the build replaced: fp32 builds, int8 fails with a one-line StageError."""
    monkeypatch.setattr(engine_stage, "tensorrt_unavailable_reason", lambda: None)
    calls = []

    def fake_build_engine(onnx_path, plan_path, config, precision, *, plugin_library, progress=None, **_):
        calls.append((precision, plugin_library))
        if precision == "int8":
            raise StageError("onerank.int8.onnx: TensorRT's ONNX parser failed at node 7 'q' (QuantizeLinear): x")
        plan_path.parent.mkdir(parents=True, exist_ok=True)
        plan_path.write_bytes(b"plan")
        meta = metadata_path(plan_path)
        meta.write_text("{}")
        return EngineBuild(plan_path, meta, 1.5, "10.8.0.43", "8.6", 1, False)

    import onerank_export.engine.tensorrt.builder as builder

    monkeypatch.setattr(builder, "build_engine", fake_build_engine)
    return calls


def test_one_failed_precision_fails_the_stage_and_lists_only_existing_files(available, tmp_path):
    given = tmp_path / "given.so"
    given.write_bytes(b"plugin")
    out = tmp_path / "out"
    onnx_files = {"fp32": tmp_path / "a.onnx", "int8": tmp_path / "b.onnx"}
    result = engine_stage.run_engine_stage(onnx_files, out, TINY, "require", plugin_library=given,
                                           progress=lambda _m: None)
    assert result.status is Status.FAILED and "\n" not in result.detail
    assert result.detail.startswith("1 of 2 engine(s) failed, first int8: ") and "built fp32" in result.detail
    assert set(result.artifacts) == {"plugin_library", "engine_fp32", "plan_meta_fp32"}
    assert result.artifacts["plugin_library"] == out / "plugins" / "libonerank_plugins.so"
    assert result.artifacts["plugin_library"].read_bytes() == b"plugin"
    assert [p for p, _ in available] == ["fp32", "int8"]
    assert all(lib == out / "plugins" / "libonerank_plugins.so" for _, lib in available)
    assert not (out / "engines" / "onerank.int8.plan").exists()
    manifest = build_manifest(out, TINY, {}, {}, [result])  # raises if a listed file does not exist
    assert {a["role"] for a in manifest["artifacts"]} == set(result.artifacts)


def test_all_precisions_built_is_ok_with_the_plugin_built_from_source(available, tmp_path, monkeypatch):
    built = []

    def fake_build_plugin_library(out_dir, *, tensorrt_root=None, progress=None):
        out_dir.mkdir(parents=True, exist_ok=True)
        built.append(out_dir)
        (out_dir / "libonerank_plugins.so").write_bytes(b"built")
        return out_dir / "libonerank_plugins.so"

    fake = types.ModuleType("onerank_export.engine.plugin.build")
    fake.build_plugin_library = fake_build_plugin_library
    monkeypatch.setitem(sys.modules, "onerank_export.engine.plugin.build", fake)
    out = tmp_path / "out"
    result = engine_stage.run_engine_stage({"fp32": tmp_path / "a.onnx"}, out, TINY, "auto",
                                           progress=lambda _m: None)
    assert result.status is Status.OK and built == [out / "plugins"]
    assert set(result.artifacts) == {"plugin_library", "engine_fp32", "plan_meta_fp32"}
    assert result.metrics["fp32"]["plugin_layers"] == 1 and result.metrics["tensorrt_version"] == "10.8.0.43"


def test_a_plugin_that_cannot_be_built_fails_the_stage_in_one_line(available, tmp_path, monkeypatch):
    def failing(out_dir, *, tensorrt_root=None, progress=None):
        raise StageError("cmake: NvInfer.h not found; set TensorRT_ROOT to a TensorRT install with headers")

    fake = types.ModuleType("onerank_export.engine.plugin.build")
    fake.build_plugin_library = failing
    monkeypatch.setitem(sys.modules, "onerank_export.engine.plugin.build", fake)
    result = engine_stage.run_engine_stage({"fp32": tmp_path / "a.onnx"}, tmp_path / "out", TINY, "auto")
    assert result.status is Status.FAILED and result.artifacts == {}
    assert result.detail.startswith("plugin library: cmake: NvInfer.h not found")
    assert available == []
