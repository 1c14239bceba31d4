"""The engine stage on a host without CUDA / TensorRT: the skip / require verdicts, and its bookkeeping
(which files it lists, how one failed precision is reported) with the TensorRT build and the plugin
build injected as stand-ins that write or fail."""

from __future__ import annotations

import dataclasses

import pytest
from helpers import TINY

from onerank_export.engine.tensorrt.availability import tensorrt_unavailable_reason
from onerank_export.engine.tensorrt.builder import EngineBuild
from onerank_export.engine.tensorrt.plan_metadata import metadata_path
from onerank_export.errors import StageError
from onerank_export.pipeline.manifest import build_manifest
from onerank_export.pipeline.options import BuildOptions
from onerank_export.pipeline.result import Status
from onerank_export.pipeline.stages.engine import EngineStage, EngineToolchain
from onerank_export.precision import Precision

REASON = tensorrt_unavailable_reason()
needs_no_tensorrt = pytest.mark.skipif(REASON is None, reason="TensorRT and CUDA are available here")
FP32, INT8 = Precision.FP32, Precision.INT8


def quiet(_message):
    pass


@needs_no_tensorrt
def test_auto_is_skipped_with_the_reason_and_writes_nothing(tmp_path):
    out = tmp_path / "build"
    out.mkdir()
    result = EngineStage("auto").build({FP32: tmp_path / "model.onnx"}, out, TINY)
    assert result.name == "engine" and result.status is Status.SKIPPED
    assert result.detail == REASON and result.verdict == f"skipped: {REASON}"
    assert result.artifacts == {} and list(out.iterdir()) == []


@needs_no_tensorrt
def test_require_is_a_one_line_error_with_the_reason_in_preflight(tmp_path):
    with pytest.raises(StageError) as err:
        EngineStage("require").preflight(BuildOptions(out=tmp_path / "b"), TINY)
    message = str(err.value)
    assert "\n" not in message and REASON in message and "--engine auto" in message
    assert list(tmp_path.iterdir()) == []


def test_skip_and_unknown_modes(tmp_path):
    assert EngineStage("skip").build({}, tmp_path, TINY).verdict == "skipped: --engine skip"
    with pytest.raises(StageError, match="'always'") as err:
        EngineStage("always")
    assert "\n" not in str(err.value) and "auto, require, skip" in str(err.value)


def test_a_missing_given_plugin_is_refused_in_preflight(tmp_path):
    stage = EngineStage("auto", tmp_path / "missing.so", toolchain=EngineToolchain(unavailable_reason=lambda: None))
    with pytest.raises(StageError, match=r"--plugin .*missing\.so: not a file"):
        stage.preflight(BuildOptions(out=tmp_path / "b"), TINY)


@pytest.fixture
def calls():
    return []


@pytest.fixture
def toolchain(calls):
    """TensorRT 'available', the build stood in for: fp32 builds, int8 fails with a one-line StageError."""

    def fake_build_engine(onnx_path, plan_path, config, precision, *, plugin_library, role="serving",
                          progress=None, **_):
        calls.append((precision, plugin_library) if role == "serving" else (role, precision, plugin_library,
                                                                            onnx_path.name, plan_path.name))
        if precision == "int8":
            raise StageError("onerank.int8.onnx: TensorRT's ONNX parser failed at node 7 'q' (QuantizeLinear): x")
        plan_path.parent.mkdir(parents=True, exist_ok=True)
        plan_path.write_bytes(b"plan")
        meta = metadata_path(plan_path)
        meta.write_text("{}")
        return EngineBuild(plan_path, meta, 1.5, "10.8.0.43", "8.6", 1, False)

    def no_plugin_build(out_dir, *, progress=None):
        raise AssertionError("the plugin must not be built when one is given")

    return EngineToolchain(unavailable_reason=lambda: None, build_engine=fake_build_engine,
                           build_plugin_library=no_plugin_build)


def test_one_failed_precision_fails_the_stage_and_lists_only_existing_files(toolchain, calls, tmp_path):
    given = tmp_path / "given.so"
    given.write_bytes(b"plugin")
    out = tmp_path / "out"
    onnx_files = {FP32: tmp_path / "a.onnx", INT8: tmp_path / "b.onnx"}
    result = EngineStage("require", given, toolchain=toolchain, progress=quiet).build(onnx_files, out, TINY)
    assert result.status is Status.FAILED and "\n" not in result.detail
    assert result.detail.startswith("1 of 2 engine(s) failed, first int8: ") and "built fp32" in result.detail
    assert set(result.artifacts) == {"plugin_library", "engine_fp32", "plan_meta_fp32"}
    assert result.artifacts["plugin_library"] == out / "plugins" / "libonerank_plugins.so"
    assert result.artifacts["plugin_library"].read_bytes() == b"plugin"
    assert [p for p, _ in calls] == ["fp32", "int8"]
    assert all(lib == out / "plugins" / "libonerank_plugins.so" for _, lib in calls)
    assert not (out / "engines" / "onerank.int8.plan").exists()
    manifest = build_manifest(out, TINY, {}, {}, [result])  # raises if a listed file does not exist
    assert {a["role"] for a in manifest["artifacts"]} == set(result.artifacts)


def test_all_precisions_built_is_ok_with_the_plugin_built_from_source(toolchain, calls, tmp_path):
    built = []

    def fake_build_plugin_library(out_dir, *, progress=None):
        out_dir.mkdir(parents=True, exist_ok=True)
        built.append(out_dir)
        (out_dir / "libonerank_plugins.so").write_bytes(b"built")
        return out_dir / "libonerank_plugins.so"

    with_build = dataclasses.replace(toolchain, build_plugin_library=fake_build_plugin_library)
    stage = EngineStage("auto", toolchain=with_build, progress=quiet)
    out = tmp_path / "out"
    result = stage.build({FP32: tmp_path / "a.onnx"}, out, TINY)
    assert result.status is Status.OK and built == [out / "plugins"]
    assert set(result.artifacts) == {"plugin_library", "engine_fp32", "plan_meta_fp32"}
    assert result.metrics["fp32"]["plugin_layers"] == 1 and result.metrics["tensorrt_version"] == "10.8.0.43"


def test_a_plugin_that_cannot_be_built_fails_the_stage_in_one_line(toolchain, calls, tmp_path):
    def failing(out_dir, *, progress=None):
        raise StageError("cmake: NvInfer.h not found; set TensorRT_ROOT to a TensorRT install with headers")

    stage = EngineStage("auto", toolchain=dataclasses.replace(toolchain, build_plugin_library=failing), progress=quiet)
    result = stage.build({FP32: tmp_path / "a.onnx"}, tmp_path / "out", TINY)
    assert result.status is Status.FAILED and result.artifacts == {}
    assert result.detail.startswith("plugin library: cmake: NvInfer.h not found")
    assert calls == []


@pytest.mark.parametrize("capability, refused", [("7.0", True), ("7.2", True), ("7.5", False), ("8.6", False),
                                                 ("10.0", False)])
def test_a_gpu_without_a_kernel_image_is_refused_in_preflight(tmp_path, capability, refused):
    toolchain = EngineToolchain(unavailable_reason=lambda: None, device=lambda: ("Tesla V100", capability))
    stage = EngineStage("auto", toolchain=toolchain)
    if not refused:
        stage.preflight(BuildOptions(out=tmp_path / "b"), TINY)
        return
    with pytest.raises(StageError) as err:
        stage.preflight(BuildOptions(out=tmp_path / "b"), TINY)
    message = str(err.value)
    assert f"compute capability {capability}" in message and "sm_75" in message and "--engine skip" in message
    assert "\n" not in message and list(tmp_path.iterdir()) == []


def test_halves_get_two_more_plans_per_precision_the_encoder_without_the_plugin(toolchain, calls, tmp_path):
    from onerank_export.pipeline.state import BuildState
    from onerank_export.serving.repository import UserCacheModels
    from onerank_export.serving.user_cache import CacheSettings

    given = tmp_path / "given.so"
    given.write_bytes(b"plugin")
    out = tmp_path / "out"
    fp16 = (tmp_path / "enc16.onnx", tmp_path / "sc16.onnx")
    state = BuildState(BuildOptions(out=tmp_path / "b"), tmp_path, out,
                       user_cache=UserCacheModels(tmp_path / "enc.onnx", tmp_path / "sc.onnx", CacheSettings()),
                       user_cache_variants={Precision.FP16: fp16})
    halves = state.user_cache_halves()
    assert halves == {FP32: (tmp_path / "enc.onnx", tmp_path / "sc.onnx"), Precision.FP16: fp16}
    stage = EngineStage("require", given, toolchain=toolchain, progress=quiet)
    result = stage.build({FP32: tmp_path / "a.onnx"}, out, TINY, state, halves=halves)
    assert result.status is Status.OK, result.detail
    lib = out / "plugins" / "libonerank_plugins.so"
    assert calls == [("fp32", lib),
                     ("user_encoder", "fp32", None, "enc.onnx", "onerank.user_encoder.fp32.plan"),
                     ("candidate_scorer", "fp32", lib, "sc.onnx", "onerank.candidate_scorer.fp32.plan"),
                     ("user_encoder", "fp16", None, "enc16.onnx", "onerank.user_encoder.fp16.plan"),
                     ("candidate_scorer", "fp16", lib, "sc16.onnx", "onerank.candidate_scorer.fp16.plan")]
    roles = {f"{kind}_{role}_{p}" for kind in ("engine", "plan_meta") for role in ("user_encoder", "candidate_scorer")
             for p in ("fp32", "fp16")}
    assert set(result.artifacts) == {"plugin_library", "engine_fp32", "plan_meta_fp32"} | roles
    assert result.detail.startswith("fp32, user encoder fp32, candidate scorer fp32, user encoder fp16, "
                                    "candidate scorer fp16 engine(s)")
    engines = out / "engines"
    assert state.engines == {FP32: engines / "onerank.fp32.plan"}  # the halves never pose as the single graph
    assert state.user_cache_engines == {
        p: (engines / f"onerank.user_encoder.{p}.plan", engines / f"onerank.candidate_scorer.{p}.plan")
        for p in (FP32, Precision.FP16)}
    build_manifest(out, TINY, {}, {}, [result])  # every listed file exists


def test_a_failed_half_is_one_line_and_its_pair_is_not_handed_on(toolchain, calls, tmp_path):
    from onerank_export.pipeline.state import BuildState

    def scorer_fails(onnx_path, plan_path, config, precision, *, plugin_library, role="serving", progress=None):
        if role == "candidate_scorer":
            raise StageError("sc.onnx has 1 MatchingScore node(s); a plugin library is needed to build it")
        return toolchain.build_engine(onnx_path, plan_path, config, precision, plugin_library=plugin_library,
                                      role=role)

    given = tmp_path / "given.so"
    given.write_bytes(b"plugin")
    state = BuildState(BuildOptions(out=tmp_path / "b"), tmp_path, tmp_path / "out")
    stage = EngineStage("require", given, toolchain=dataclasses.replace(toolchain, build_engine=scorer_fails),
                        progress=quiet)
    result = stage.build({FP32: tmp_path / "a.onnx"}, tmp_path / "out", TINY, state,
                         halves={FP32: (tmp_path / "enc.onnx", tmp_path / "sc.onnx")})
    assert result.status is Status.FAILED and "\n" not in result.detail
    assert result.detail == ("1 of 3 engine(s) failed, first candidate scorer fp32: sc.onnx has 1 MatchingScore "
                             "node(s); a plugin library is needed to build it; built fp32, user encoder fp32")
    assert state.user_cache_engines == {} and set(state.engines) == {FP32}


# ----- split mode (build --embeddings split): one plan per dense graph --------------------------


def _split_state(tmp_path, variants=()):
    from onerank_export.pipeline.state import BuildState
    from onerank_export.serving.repository import SplitModels

    state = BuildState(BuildOptions(out=tmp_path / "b", embeddings="split"), tmp_path, tmp_path / "out",
                       split=SplitModels(tmp_path / "onerank.dense.fp32.onnx", tmp_path / "embeddings"),
                       split_variants={p: tmp_path / f"onerank.dense.{p}.onnx" for p in variants})
    state.model = type("Loaded", (), {"cfg": TINY})()  # the stage reads state.config only
    return state


def test_split_mode_plans_the_engine_stage_after_the_precisions_and_before_triton(tmp_path):
    from onerank_export.pipeline.stages import plan_stages

    options = BuildOptions(out=tmp_path / "b", embeddings="split", precisions=("fp16", "int8"), target="cpu")
    names = [s.name for s in plan_stages(options, TINY)]
    assert names == ["checkpoint", "embeddings", "fp16", "int8", "engine", "triton", "parity"]
    no_repo = [s.name for s in plan_stages(dataclasses.replace(options, triton=False), TINY)]
    assert no_repo == ["checkpoint", "embeddings", "fp16", "int8", "engine", "parity"]


def test_split_mode_builds_one_dense_plan_per_precision_with_the_plugin(toolchain, calls, tmp_path):
    given = tmp_path / "given.so"
    given.write_bytes(b"plugin")
    state = _split_state(tmp_path, variants=(Precision.FP16,))
    assert list(state.split_dense()) == [FP32, Precision.FP16]
    result = EngineStage("require", given, toolchain=toolchain, progress=quiet).run(state)
    assert result.status is Status.OK, result.detail
    lib = state.work / "plugins" / "libonerank_plugins.so"
    assert calls == [("dense", "fp32", lib, "onerank.dense.fp32.onnx", "onerank.dense.fp32.plan"),
                     ("dense", "fp16", lib, "onerank.dense.fp16.onnx", "onerank.dense.fp16.plan")]
    assert set(result.artifacts) == {"plugin_library"} | {f"{kind}_dense_{p}" for kind in ("engine", "plan_meta")
                                                          for p in ("fp32", "fp16")}
    assert result.detail.startswith("dense fp32, dense fp16 engine(s) with the libonerank_plugins.so plugin")
    engines = state.work / "engines"
    assert state.split_engines == {p: engines / f"onerank.dense.{p}.plan" for p in (FP32, Precision.FP16)}
    assert state.engines == {} and state.plugin_library == lib  # no single graph in split mode
    build_manifest(state.work, TINY, {}, {}, [result])  # every listed file exists


def test_split_mode_a_failed_dense_precision_is_one_line_and_not_handed_on(toolchain, calls, tmp_path):
    given = tmp_path / "given.so"
    given.write_bytes(b"plugin")
    state = _split_state(tmp_path, variants=(INT8,))  # the stand-in fails every int8 build
    result = EngineStage("auto", given, toolchain=toolchain, progress=quiet).run(state)
    assert result.status is Status.FAILED and "\n" not in result.detail
    assert result.detail == ("1 of 2 engine(s) failed, first dense int8: onerank.int8.onnx: TensorRT's ONNX parser "
                             "failed at node 7 'q' (QuantizeLinear): x; built dense fp32")
    assert set(state.split_engines) == {FP32} and "engine_dense_int8" not in result.artifacts


@needs_no_tensorrt
def test_split_mode_auto_is_skipped_with_the_reason(tmp_path):
    state = _split_state(tmp_path)
    result = EngineStage("auto").run(state)
    assert result.verdict == f"skipped: {REASON}" and state.split_engines == {} and not state.work.exists()
