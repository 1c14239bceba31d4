"""Triton configs: built through Triton's ModelConfig schema, consistent with the serving contract."""

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
from onerank_export.serving.repository import CPU_DIR, PRODUCTION_DIR, write_model_repository
from onerank_export.serving.server import resolve_repository

GOLDEN = Path(__file__).with_name("golden") / "onerank_onnx_fp32.config.pbtxt"


def test_golden_onnxruntime_config():
    """One full config held verbatim: a change to what deployments receive shows up in review.
    Regenerate with ONERANK_UPDATE_GOLDEN=1 after checking the diff is intended."""
    cfg = mcfg.onnxruntime_config("onerank_onnx_fp32", OneRankConfig(), "fp32", {t.name: t.name for t in spec.INPUTS})
    text = mcfg.to_text(cfg)
    if os.environ.get("ONERANK_UPDATE_GOLDEN"):
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()
    assert mcfg.parse_config(GOLDEN.read_text()) == cfg


def test_unknown_field_is_a_one_line_error():
    with pytest.raises(ConfigError) as err:
        mcfg.parse_config('name: "x"\nmax_batch_size: 8\ndynamic_batching { max_queue_delay: 5 }', "bad.pbtxt")
    assert "bad.pbtxt: not a valid Triton ModelConfig" in str(err.value) and "\n" not in str(err.value)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """A repository with every kind of model: fp32/fp16 ONNX, a TensorRT plan and its plugin."""
    out = tmp_path_factory.mktemp("build")
    (out / "onnx").mkdir()
    (out / "engines").mkdir()
    (out / "plugins").mkdir()
    onnx = {p: out / "onnx" / f"onerank.{p}.onnx" for p in ("fp32", "fp16")}
    for p, path in onnx.items():
        path.write_bytes(f"onnx {p}".encode())
    plan = out / "engines" / "onerank.fp16.plan"
    plan.write_bytes(b"plan bytes")
    plugin = out / "plugins" / "libonerank_plugins.so"
    plugin.write_bytes(b"plugin bytes")
    result = write_model_repository(out, TINY, onnx, {"fp16": plan}, plugin)
    return out, result


def test_every_written_config_parses_and_matches_the_spec(written):
    out, result = written
    assert result.models == ["onerank_trt_fp16", "onerank_onnx_fp16", "onerank_onnx_fp32"]
    assert result.cpu_model == "onerank" and (result.tensorrt_models, result.onnx_models) == (1, 2)
    configs = sorted(out.glob("model_repository*/*/config.pbtxt"))
    assert [c.parent.name for c in configs] == ["onerank_onnx_fp16", "onerank_onnx_fp32", "onerank_trt_fp16",
                                                "onerank"]
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
        assert cfg.dynamic_batching.max_queue_delay_microseconds > 0
        # Every artifact the manifest records exists.
        assert all(Path(p).is_file() for p in result.artifacts.values())


def test_what_cannot_be_served_is_a_one_line_error_and_writes_nothing(tmp_path):
    onnx = tmp_path / "onerank.fp16.onnx"
    onnx.write_bytes(b"onnx")
    with pytest.raises(StageError, match="no fp32 ONNX to serve"):
        write_model_repository(tmp_path, TINY, {"fp16": onnx}, {}, None)
    with pytest.raises(StageError, match="needs the plugin library"):
        write_model_repository(tmp_path, TINY, {"fp32": onnx}, {"fp16": tmp_path / "onerank.fp16.plan"}, None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["onerank.fp16.onnx"]


def test_tensorrt_config_references_the_plan_and_the_plugin(written):
    out, _ = written
    model = out / PRODUCTION_DIR / "onerank_trt_fp16"
    cfg = mcfg.read_config(model / "config.pbtxt")
    assert cfg.platform == "tensorrt_plan" and cfg.default_model_filename == "model.plan"
    assert (model / "1" / "model.plan").read_bytes() == b"plan bytes"
    assert [g.kind for g in cfg.instance_group] == [mcfg.mc.ModelInstanceGroup.KIND_GPU]
    plugin = out / cfg.parameters[PLUGIN_PARAMETER].string_value
    assert plugin.read_bytes() == b"plugin bytes"
    assert cfg.parameters[PLUGIN_PARAMETER + ".sha256"].string_value == hashlib.sha256(b"plugin bytes").hexdigest()
    notes = (out / PRODUCTION_DIR / "README.md").read_text()
    assert "--backend-config=tensorrt,plugins=$PWD/plugins/libonerank_plugins.so" in notes
    onnx_cfg = mcfg.read_config(out / PRODUCTION_DIR / "onerank_onnx_fp32" / "config.pbtxt")
    assert onnx_cfg.platform == "onnxruntime_onnx"
    assert {g.kind for g in onnx_cfg.instance_group} == {mcfg.mc.ModelInstanceGroup.KIND_GPU,
                                                         mcfg.mc.ModelInstanceGroup.KIND_CPU}


def test_warmup_data_is_a_valid_request_at_the_optimisation_shape(written):
    out, _ = written
    model = out / CPU_DIR / "onerank"
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


def test_serve_resolves_a_build_dir_and_refuses_backends_it_lacks(written):
    out, _ = written
    (out / "manifest.json").write_text("{}")
    assert resolve_repository(out) == out / CPU_DIR
    with pytest.raises(StageError) as err:
        resolve_repository(out / PRODUCTION_DIR)
    assert "needs the onnxruntime_onnx backend" in str(err.value) and "model_repository_cpu" in str(err.value)
