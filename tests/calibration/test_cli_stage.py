"""The `calibrate` command and the build stage: a failed gate exits 1 after writing the report and
writes no model; the stage returns its artifacts and never crashes the build on a user error."""

from __future__ import annotations

import json

from helpers import make_tiny_model

from onerank_export.cli.main import main
from onerank_export.pipeline.result import Status
from onerank_export.pipeline.stages.precision import run_precision_stage


def test_failed_gate_exits_1_after_writing_the_report(capsys, tmp_path, demo_checkpoint, demo_fp32_onnx):
    out, reports = tmp_path / "m.fp16.onnx", tmp_path / "reports"
    code = main(["calibrate", "--checkpoint", str(demo_checkpoint), "--onnx", str(demo_fp32_onnx), "--precision",
                 "fp16", "--num-requests", "32", "--eval-requests", "200", "--max-fp16-abs-error", "1e-9",
                 "--out", str(out), "--report", str(reports)])
    io = capsys.readouterr()
    lines = io.err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "failed gate max_abs_error" in lines[0], io.err
    assert not out.exists() and not list(tmp_path.glob(".m.fp16.onnx*"))
    report = json.loads((reports / "calibration.json").read_text())
    entry = report["precisions"]["fp16"]
    assert report["passed"] is False and entry["passed"] is False and entry["model"]["written"] is False
    gate = next(g for g in entry["gates"] if g["name"] == "max_abs_error")
    assert gate["passed"] is False and gate["value"] > 1e-9
    assert (reports / "calibration.png").is_file()


def test_calibrate_refuses_a_reduced_precision_input(capsys, tmp_path, demo_checkpoint, demo_fp32_onnx):
    import onnx

    model = onnx.load(str(demo_fp32_onnx))
    next(p for p in model.metadata_props if p.key == "onerank.precision").value = "fp16"
    onnx.save(model, str(tmp_path / "x.onnx"))
    code = main(["calibrate", "--checkpoint", str(demo_checkpoint), "--onnx", str(tmp_path / "x.onnx"),
                 "--precision", "int8", "--out", str(tmp_path / "y.onnx"), "--report", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 1 and "calibrate from the fp32 export" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.onnx"]


def test_stage_writes_model_and_report_with_artifacts(tmp_path, demo_model, demo_fp32_onnx):
    result = run_precision_stage("fp16", demo_fp32_onnx, demo_model, tmp_path, method="minmax", seed=0)
    assert result.status is Status.OK and result.name == "fp16", result.detail
    assert result.artifacts["onnx_fp16"] == tmp_path / "onnx" / "onerank.fp16.onnx"
    assert all(p.is_file() for p in result.artifacts.values())
    assert set(result.artifacts) == {"onnx_fp16", "calibration_report", "calibration_plot"}
    assert result.metrics["passed"] and result.metrics["max_abs_error"] <= 5e-3
    assert "demo-generator requests" in result.detail  # this fp32 ONNX carries no demo checkpoint digest


def test_stage_reports_a_user_error_as_failed_not_a_crash(tmp_path):
    model = make_tiny_model(context_vocab_size=50)  # too small for the demo generator's context buckets
    result = run_precision_stage("int8", tmp_path / "unused.onnx", model, tmp_path, method="minmax", seed=0)
    assert result.status is Status.FAILED and "context_vocab_size" in result.detail
    assert not (tmp_path / "onnx").exists()
