"""The user-state cache's TensorRT models on a GPU target: one Triton model per half and precision
(onerank_user_encoder_trt_<p>, onerank_candidate_scorer_trt_<p>), dims from user_states, types from
the half's ONNX (recorded in the plan metadata), validated by Triton's schema and the backend rules.
The plans are stand-ins: no TensorRT here (docs/gpu-status.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import TINY

from onerank_export.engine.tensorrt.plan_metadata import metadata_path, optimization_profile, plan_metadata
from onerank_export.engine.tensorrt.profile import onnx_io_dtypes
from onerank_export.errors import StageError
from onerank_export.pipeline.options import BuildOptions
from onerank_export.pipeline.stages.triton import half_engines
from onerank_export.pipeline.state import BuildState
from onerank_export.precision import Precision
from onerank_export.serving.backend_rules import check_model, check_repository
from onerank_export.serving.model_config import read_config, to_text, user_cache_io
from onerank_export.serving.parameters import PLUGIN_PARAMETER, ROLE_PARAMETER
from onerank_export.serving.profiles import Target, serving_plan
from onerank_export.serving.repository import write_model_repository
from onerank_export.user_states import ENCODER_INPUTS, scorer_input_names, state_names

GPU = serving_plan(Target.GPU, "--target gpu", "throughput")


def _plan(directory, role, precision, onnx, dtypes):
    """A stand-in plan with the metadata a build writes, read back as the triton stage reads it."""
    plan = directory / f"onerank.{role}.{precision}.plan"
    plan.write_bytes(f"{role} {precision}".encode())
    meta = plan_metadata(plan=plan, precision=precision, tensorrt_version="10.8.0.43", gpu_name="g",
                         compute_capability="8.6", profile=optimization_profile(TINY, role), onnx=onnx,
                         plugin_library=None, build_seconds=1.0, role=role, extra={"io_dtypes": dtypes})
    metadata_path(plan).write_text(json.dumps(meta))
    return plan


def _engines(plans):
    state = BuildState(BuildOptions(out=Path("unused")), Path("."), Path("."),
                       user_cache_engines={Precision(p): pair for p, pair in plans.items()})
    return half_engines(state)


@pytest.fixture
def build(tmp_path, tiny_halves_onnx, tiny_fp32_onnx):
    _, encoder, scorer = tiny_halves_onnx
    out = tmp_path / "build"
    (out / "plugins").mkdir(parents=True)
    plugin = out / "plugins" / "libonerank_plugins.so"
    plugin.write_bytes(b"plugin")
    half = {n: "float16" for n in state_names(TINY)}  # an fp16 pair whose states are half precision
    engines = _engines({"fp32": (_plan(tmp_path, "user_encoder", "fp32", encoder, onnx_io_dtypes(encoder)),
                        _plan(tmp_path, "candidate_scorer", "fp32", scorer, onnx_io_dtypes(scorer))),
               "fp16": (_plan(tmp_path, "user_encoder", "fp16", encoder, {**onnx_io_dtypes(encoder), **half}),
                        _plan(tmp_path, "candidate_scorer", "fp16", scorer, {**onnx_io_dtypes(scorer), **half}))})
    return out, {"fp32": tiny_fp32_onnx[1]}, engines, plugin


def test_gpu_repository_serves_each_half_as_a_tensorrt_model_that_keeps_the_rules(build):
    out, onnx, engines, plugin = build
    repo = write_model_repository(out, TINY, GPU, onnx, {}, plugin, user_cache_engines=engines)
    halves = ["onerank_user_encoder_trt_fp16", "onerank_candidate_scorer_trt_fp16",
              "onerank_user_encoder_trt_fp32", "onerank_candidate_scorer_trt_fp32"]
    assert repo.models == [*halves, "onerank_onnx_fp32"]
    assert check_repository(repo.path, "gpu") == []
    heads, head_dim = TINY.n_heads, TINY.d_model // TINY.n_heads
    enc = read_config(repo.path / "onerank_user_encoder_trt_fp32" / "config.pbtxt")
    assert enc.platform == "tensorrt_plan" and enc.max_batch_size == TINY.serving.max_batch_size
    assert [i.name for i in enc.input] == list(ENCODER_INPUTS) and [list(i.dims) for i in enc.input] == [[-1], [-1]]
    assert [o.name for o in enc.output] == list(state_names(TINY))
    assert [list(o.dims) for o in enc.output] == [[1, -1, 1]] + [[heads, -1, head_dim]] * (2 * TINY.n_layers)
    assert PLUGIN_PARAMETER not in enc.parameters and enc.parameters[ROLE_PARAMETER].string_value == "user_encoder"
    sc = read_config(repo.path / "onerank_candidate_scorer_trt_fp32" / "config.pbtxt")
    assert [i.name for i in sc.input] == list(scorer_input_names(TINY)) and [o.name for o in sc.output] == ["scores"]
    assert sc.parameters[PLUGIN_PARAMETER].string_value == "plugins/libonerank_plugins.so"
    assert {i.data_type for i in sc.input if i.name in state_names(TINY)} == {11}  # TYPE_FP32
    sc16 = read_config(repo.path / "onerank_candidate_scorer_trt_fp16" / "config.pbtxt")
    assert {i.data_type for i in sc16.input if i.name in state_names(TINY)} == {10}  # TYPE_FP16: from the ONNX
    assert (repo.path / "onerank_candidate_scorer_trt_fp16" / "1" / "model.plan").read_bytes() == \
        b"candidate_scorer fp16"
    # a negative control: the rules read these configs (a misspelt TensorRT parameter is caught)
    model_dir = repo.path / "onerank_candidate_scorer_trt_fp32"
    sc.parameters["execution_context_allocation_strategyy"].string_value = "ON_PROFILE_CHANGE"
    (model_dir / "config.pbtxt").write_text(to_text(sc))
    assert [p.split(" [")[1].split("]")[0] for p in check_model(model_dir, "gpu")] == ["parameter-name"]


def test_refusals_are_one_line_and_write_nothing(build):
    out, onnx, engines, plugin = build
    cpu = serving_plan(Target.CPU, "--target cpu", "latency", cores=2)
    with pytest.raises(StageError, match="run on a GPU, not in a cpu-target repository"):
        write_model_repository(out, TINY, cpu, onnx, {}, None, cpu_onnx=onnx, user_cache_engines=engines)
    with pytest.raises(StageError, match="need the plugin library"):
        write_model_repository(out, TINY, GPU, onnx, {}, None, user_cache_engines=engines)
    assert not (out / "model_repository").exists()
    swapped = {"fp32": engines["fp32"][::-1]}
    with pytest.raises(StageError, match="is a candidate_scorer engine, not the user_encoder"):
        write_model_repository(out, TINY, GPU, onnx, {}, plugin, user_cache_engines=swapped)
    assert not (out / "model_repository").exists()


def test_io_of_the_halves_reads_user_states():
    ins, outs = user_cache_io(TINY, "candidate_scorer")
    assert [list(i.dims) for i in ins][:2] == [[1, -1, 1], [TINY.n_heads, -1, TINY.d_model // TINY.n_heads]]
    assert [list(o.dims) for o in outs] == [[-1, len(TINY.tasks)]]
    with pytest.raises(Exception, match="unknown user-cache model role 'encoder'"):
        user_cache_io(TINY, "encoder")
