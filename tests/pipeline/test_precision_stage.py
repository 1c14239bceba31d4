"""The precision stage of `build`: it writes the model and the report and lists them as artifacts; a
user error (a config the demo generator cannot serve) fails that stage, not the build."""

from __future__ import annotations

import json

import pytest
from helpers import make_tiny_model

from onerank_export.model.checkpoint import save_checkpoint
from onerank_export.pipeline.options import BuildOptions
from onerank_export.pipeline.result import Status
from onerank_export.pipeline.runner import build
from onerank_export.pipeline.stages.checkpoint import CheckpointStage
from onerank_export.pipeline.stages.export import ExportStage
from onerank_export.pipeline.stages.precision import PrecisionStage
from onerank_export.pipeline.state import BuildState
from onerank_export.precision import Precision


@pytest.mark.slow
def test_stage_writes_model_and_report_with_artifacts(tmp_path, demo_model, demo_fp32_onnx):
    options = BuildOptions(out=tmp_path / "unused", checkpoint=tmp_path / "not-the-demo")
    state = BuildState(options, tmp_path / "not-the-demo", tmp_path, model=demo_model,
                       onnx={Precision.FP32: demo_fp32_onnx})
    result = PrecisionStage("fp16").run(state)
    assert result.status is Status.OK and result.name == "fp16", result.detail
    assert result.artifacts["onnx_fp16"] == tmp_path / "onnx" / "onerank.fp16.onnx"
    assert state.onnx[Precision.FP16] == result.artifacts["onnx_fp16"]  # handed on to parity and engines
    assert all(p.is_file() for p in result.artifacts.values())
    assert set(result.artifacts) == {"onnx_fp16", "calibration_report", "calibration_plot"}
    assert result.metrics["passed"] and result.metrics["max_abs_error"] <= 5e-3
    assert result.metrics["top10_overlap_mean"] >= 0.95
    assert set(result.metrics["auc_change"]) == set(demo_model.cfg.tasks)
    assert "demo-generator requests" in result.detail  # calibrated on demo data, but not the demo checkpoint


def test_a_user_error_fails_the_stage_not_the_build(tmp_path):
    model = make_tiny_model(context_vocab_size=50)  # too small for the demo generator's context buckets
    ckpt = save_checkpoint(model, tmp_path / "ckpt")
    out = tmp_path / "b"
    outcome = build(BuildOptions(out=out, checkpoint=ckpt, precisions=("int8",)),
                    stages=[CheckpointStage(), ExportStage(), PrecisionStage("int8")])
    int8 = outcome.stages[-1]
    assert not outcome.passed and int8.name == "int8" and int8.status is Status.FAILED
    assert "context_vocab_size" in int8.detail and "\n" not in int8.detail
    assert not (out / "onnx" / "onerank.int8.onnx").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["status"] for s in manifest["stages"]] == ["ok", "ok", "failed"]
