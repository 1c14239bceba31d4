"""The `calibrate` command: a failed gate exits 1 after writing the report and writes no model; a
reduced-precision input is refused."""

from __future__ import annotations

import json

from onerank_export.cli.main import main


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
