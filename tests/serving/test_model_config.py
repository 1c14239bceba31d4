"""Triton configs: built through Triton's ModelConfig schema, consistent with the serving contract, one
instance kind per repository (its target), instances/threads/delay from the serving profile."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
from helpers import TINY

from onerank_export import spec
from onerank_export.config import OneRankConfig
from onerank_export.errors import ConfigError, StageError
from onerank_export.serving import model_config as mcfg
from onerank_export.serving.parameters import PLUGIN_PARAMETER
from onerank_export.serving.profiles import ServingPlan, Target, choose_target, serving_plan
from onerank_export.serving.repository import REPOSITORY_DIR, write_model_repository

GOLDEN = Path(__file__).with_name("golden") / "onerank_onnx_fp32.config.pbtxt"


def test_golden_onnxruntime_config():
    """One full config held verbatim: a change to what deployments receive shows up in review.
    Regenerate with ONERANK_UPDATE_GOLDEN=1 after checking the diff is intended."""
    plan = serving_plan(Target.CPU, "--target cpu", "latency", cores=2)
    cfg = mcfg.onnxruntime_config("onerank_onnx_fp32", OneRankConfig(), "fp32", plan,
                                  {t.name: t.name for t in spec.INPUTS})
    text = mcfg.to_text(cfg)
    if os.environ.get("ONERANK_UPDATE_GOLDEN"):
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()
    assert mcfg.parse_config(GOLDEN.read_text()) == cfg


def test_unknown_field_is_a_one_line_error():
    with pytest.raises(ConfigError) as err:
        mcfg.parse_config('name: "x"\nmax_batch_size: 8\ndynamic_batching { max_queue_delay: 5 }', "bad.pbtxt")
    assert "bad.pbtxt: not a valid Triton ModelConfig" in str(err.value) and "\n" not in str(err.value)


GPU = serving_plan(Target.GPU, "--target gpu", "throughput")
CPU = serving_plan(Target.CPU, "--target cpu", "throughput", cores=4)
KIND = {Target.GPU: mcfg.mc.ModelInstanceGroup.KIND_GPU, Target.CPU: mcfg.mc.ModelInstanceGroup.KIND_CPU}


def _write(out, plan: ServingPlan):
    """A repository for `plan.target` with every kind of model it holds: fp32/fp16 ONNX, and a
    TensorRT plan with its plugin (gpu) or the CPU-rewritten ONNX (cpu)."""
    for d in ("onnx", "engines", "plugins"):
        (out / d).mkdir(exist_ok=True)
    onnx = {p: out / "onnx" / f"onerank.{p}.onnx" for p in ("fp32", "fp16")}
    cpu_onnx = {p: out / "onnx" / f"onerank.{p}.cpu.onnx" for p in ("fp32", "fp16")}
    for p in onnx:
        onnx[p].write_bytes(f"onnx {p}".encode())
        cpu_onnx[p].write_bytes(f"cpu onnx {p}".encode())
    plan_file = out / "engines" / "onerank.fp16.plan"
    plan_file.write_bytes(b"plan bytes")
    plugin = out / "plugins" / "libonerank_plugins.so"
    plugin.write_bytes(b"plugin bytes")
    return write_model_repository(out, TINY, plan, onnx, {"fp16": plan_file}, plugin, cpu_onnx=cpu_onnx)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """The gpu-target repository (TensorRT plan + ONNX models)."""
    out = tmp_path_factory.mktemp("build")
    return out, _write(out, GPU)


@pytest.fixture(scope="module")
def written_cpu(tmp_path_factory):
    out = tmp_path_factory.mktemp("build-cpu")
    return out, _write(out, CPU)


@pytest.mark.parametrize("target", [Target.GPU, Target.CPU])
def test_every_written_config_parses_and_matches_the_spec(written, written_cpu, target):
    out, result = written if target is Target.GPU else written_cpu
    if target is Target.GPU:
        assert result.models == ["onerank_trt_fp16", "onerank_onnx_fp16", "onerank_onnx_fp32"]
        assert result.python_model is None and (result.tensorrt_models, result.onnx_models) == (1, 2)
    else:
        assert result.models == ["onerank_onnx_fp16", "onerank_onnx_fp32", "onerank"]
        assert result.python_model == "onerank" and (result.tensorrt_models, result.onnx_models) == (0, 2)
    assert result.path == out / REPOSITORY_DIR and not (out / "model_repository_cpu").exists()
    configs = sorted(out.glob("model_repository/*/config.pbtxt"))
    assert sorted(c.parent.name for c in configs) == sorted(result.models)
    for path in configs:
        cfg = mcfg.read_config(path)
        assert cfg.name == path.parent.name and cfg.max_batch_size == TINY.serving.max_batch_size
        assert [i.name for i in cfg.input] == list(spec.INPUT_NAMES)
        assert [o.name for o in cfg.output] == list(spec.OUTPUT_NAMES)
        dims = {i.name: list(i.dims) for i in [*cfg.input, *cfg.output]}
        assert dims == {"hist_item_ids": [-1], "hist_action_ids": [-1], "context_ids": [TINY.num_context_fields],
                        "cand_item_ids": [-1], "cand_features": [-1, TINY.num_cand_features],
                        "scores": [-1, TINY.num_tasks]}
        assert mcfg.config_from_parameters(cfg, str(path)) == TINY
        # One instance kind per model, the target's: never a GPU and a CPU group side by side.
        assert [(g.kind, g.count) for g in cfg.instance_group] == [(KIND[target], result.plan.instances)]
        assert cfg.dynamic_batching.max_queue_delay_microseconds == result.plan.queue_delay_us > 0
        # Every artifact the manifest records exists.
        assert all(Path(p).is_file() for p in result.artifacts.values())


def test_what_cannot_be_served_is_a_one_line_error_and_writes_nothing(tmp_path):
    onnx = tmp_path / "onerank.fp16.onnx"
    onnx.write_bytes(b"onnx")
    plan = tmp_path / "onerank.fp16.plan"
    with pytest.raises(StageError, match="no fp32 ONNX to serve"):
        write_model_repository(tmp_path, TINY, GPU, {"fp16": onnx}, {"fp16": plan}, tmp_path / "lib.so")
    with pytest.raises(StageError, match="needs the plugin library"):
        write_model_repository(tmp_path, TINY, GPU, {"fp32": onnx}, {"fp16": plan}, None)
    with pytest.raises(StageError, match="no CPU-rewritten ONNX for fp32"):
        write_model_repository(tmp_path, TINY, CPU, {"fp32": onnx}, {}, None, cpu_onnx={})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["onerank.fp16.onnx"]


def test_tensorrt_config_references_the_plan_and_the_plugin(written):
    out, _ = written
    model = out / REPOSITORY_DIR / "onerank_trt_fp16"
    cfg = mcfg.read_config(model / "config.pbtxt")
    assert cfg.platform == "tensorrt_plan" and cfg.default_model_filename == "model.plan"
    assert (model / "1" / "model.plan").read_bytes() == b"plan bytes"
    assert [g.kind for g in cfg.instance_group] == [mcfg.mc.ModelInstanceGroup.KIND_GPU]
    plugin = out / cfg.parameters[PLUGIN_PARAMETER].string_value
    assert plugin.read_bytes() == b"plugin bytes"
    assert cfg.parameters[PLUGIN_PARAMETER + ".sha256"].string_value == hashlib.sha256(b"plugin bytes").hexdigest()
    notes = (out / REPOSITORY_DIR / "README.md").read_text()
    assert "--backend-config=tensorrt,plugins=$PWD/plugins/libonerank_plugins.so" in notes
    onnx_cfg = mcfg.read_config(out / REPOSITORY_DIR / "onerank_onnx_fp32" / "config.pbtxt")
    assert onnx_cfg.platform == "onnxruntime_onnx"
    assert [g.kind for g in onnx_cfg.instance_group] == [mcfg.mc.ModelInstanceGroup.KIND_GPU]
    assert (out / REPOSITORY_DIR / "onerank_onnx_fp32" / "1" / "model.onnx").read_bytes() == b"onnx fp32"  # canonical
    assert mcfg.ORT_INTRA_OP_THREADS not in onnx_cfg.parameters  # the device computes


def test_cpu_repository_serves_the_rewritten_onnx_with_the_plans_threads(written_cpu):
    out, _ = written_cpu
    repo = out / REPOSITORY_DIR
    for p in ("fp32", "fp16"):
        cfg = mcfg.read_config(repo / f"onerank_onnx_{p}" / "config.pbtxt")
        assert (repo / f"onerank_onnx_{p}" / "1" / "model.onnx").read_bytes() == f"cpu onnx {p}".encode()
        assert cfg.parameters[mcfg.ORT_INTRA_OP_THREADS].string_value == str(CPU.threads) == "2"
        assert cfg.parameters[mcfg.ORT_INTER_OP_THREADS].string_value == "1"
    python = mcfg.read_config(repo / "onerank" / "config.pbtxt")
    assert python.backend == "python" and python.parameters["intra_op_threads"].string_value == "2"
    assert (repo / "onerank" / "1" / "model.onnx").read_bytes() == b"cpu onnx fp32"
    notes = (repo / "README.md").read_text()
    assert "target cpu" in notes and "--backend-config=tensorrt" not in notes


def test_profiles_and_overrides():
    latency = serving_plan(Target.CPU, "why", "latency", cores=8)
    assert (latency.instances, latency.threads, latency.queue_delay_us) == (1, 8, 0)
    throughput = serving_plan(Target.CPU, "why", "throughput", cores=8)
    assert (throughput.instances, throughput.threads, throughput.queue_delay_us) == (2, 4, 200)
    assert serving_plan(Target.CPU, "why", "throughput", cores=1).threads == 1
    explicit = serving_plan(Target.CPU, "why", "latency", instances=3, threads=5, cores=8)
    assert (explicit.instances, explicit.threads) == (3, 5)
    gpu = serving_plan(Target.GPU, "why", "latency")
    assert (gpu.instances, gpu.threads, gpu.queue_delay_us) == (1, 0, 0)
    assert serving_plan(Target.GPU, "why", "throughput").instances == 2
    with pytest.raises(ConfigError, match="--threads applies to CPU models only"):
        serving_plan(Target.GPU, "why", "latency", threads=2)
    with pytest.raises(ConfigError, match="--serving-profile 'fast'"):
        serving_plan(Target.CPU, "why", "fast")
    assert latency.describe()["target"] == "cpu"


def test_auto_target_is_what_the_host_has():
    assert choose_target("auto", cuda_device=False) == (Target.CPU, "--target auto: this host has no CUDA device")
    assert choose_target("auto", cuda_device=True) == (Target.GPU, "--target auto: this host has a CUDA device")
    assert choose_target("gpu", cuda_device=False) == (Target.GPU, "--target gpu")
    with pytest.raises(ConfigError, match="--target 'tpu'"):
        choose_target("tpu")


def test_a_plan_or_python_model_in_the_wrong_target_is_refused():
    with pytest.raises(ConfigError, match="runs on a GPU only"):
        mcfg.tensorrt_config("m", TINY, "fp16", CPU)
    with pytest.raises(ConfigError, match="runs on the CPU"):
        mcfg.python_onnx_config("m", TINY, GPU)


def test_warmup_data_is_a_valid_request_at_the_optimisation_shape(written_cpu):
    out, _ = written_cpu
    model = out / REPOSITORY_DIR / "onerank"
    cfg = mcfg.read_config(model / "config.pbtxt")
    (warm,) = cfg.model_warmup
    feed = {}
    for t in spec.INPUTS:
        w = warm.inputs[t.name]
        data = np.frombuffer((model / "warmup" / w.input_data_file).read_bytes(), dtype=t.np_dtype)
        feed[t.name] = data.reshape([warm.batch_size, *w.dims])
    dims = spec.validate_request(TINY, feed, max_batch=cfg.max_batch_size)
    assert dims == {"batch": 1, "hist_len": TINY.serving.opt_hist_len, "num_candidates": TINY.serving.opt_candidates}
    assert (feed["cand_item_ids"] > 0).any()  # realistic: real candidates, not an all-padding request
