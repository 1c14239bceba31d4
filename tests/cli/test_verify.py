"""`verify` passes a correct ONNX, fails a wrong one, and always leaves JSON + JUnit reports."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import onnx
import pytest
from helpers import make_tiny_model
from onnx import numpy_helper

from onerank_export.cli.main import main
from onerank_export.export.onnx_export import export_onnx
from onerank_export.model.checkpoint import checkpoint_digest, save_checkpoint


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("verify")
    ckpt = save_checkpoint(make_tiny_model(seed=4), root / "ckpt")
    path = root / "tiny.fp32.onnx"
    export_onnx(make_tiny_model(seed=4), path, checkpoint_sha256=checkpoint_digest(ckpt))
    return ckpt, path


def test_verify_passes_a_faithful_export_and_writes_reports(capsys, tiny, tmp_path):
    ckpt, path = tiny
    code = main(["verify", "--checkpoint", str(ckpt), "--onnx", str(path), "--shape", "3x41x17",
                 "--reports", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    report = json.loads((tmp_path / "parity.json").read_text())
    assert report["passed"] and report["counts"]["failed"] == 0
    assert {c["case"] for c in report["cases"]} >= {"b3-l41-n17", "b2-empty-history", "b3-all-padding-row"}
    runners = {c["runner"] for c in report["cases"]}
    # One naming scheme with `build`: backend and precision; the file name only when two targets share them.
    assert runners == {"eager-serving", "onnxruntime-fp32", "onnxruntime-fp32-canonical"}
    assert all(o["max_abs"] <= 1e-5 for c in report["cases"] for o in c["outputs"])
    suite = ET.parse(tmp_path / "junit.xml").getroot()
    assert suite.get("failures") == "0"
    # 6 cases for each of 3 runners; 3 invariances for the reference and each runner.
    assert int(suite.get("tests")) == len(report["cases"]) + len(report["invariances"]) == 18 + 12
    # The keys users and CI read, exactly; the raw run results are not written by default.
    assert list(report) == ["reference", "passed", "counts", "tolerances", "cases", "invariances"]
    assert list(report["counts"]) == ["passed", "failed", "skipped"]
    assert list(report["tolerances"]) == ["fp32", "fp16", "int8"]
    assert list(report["cases"][0]) == ["runner", "precision", "case", "shape", "status", "reason", "provider",
                                        "outputs"]
    assert list(report["invariances"][0]) == ["runner", "check", "status", "max_abs", "atol", "reason"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junit.xml", "parity.json"]


def test_verify_fails_an_onnx_whose_weights_were_altered(capsys, tiny, tmp_path):
    ckpt, path = tiny
    proto = onnx.load(str(path))
    for init in proto.graph.initializer:
        if init.name == "layers.1.ffn.down.weight_t":
            arr = numpy_helper.to_array(init).copy()
            arr[0, 0] += 0.05  # one weight, small change: exactly what a broken converter does
            init.CopyFrom(numpy_helper.from_array(arr, init.name))
    bad = tmp_path / "altered.onnx"
    onnx.save(proto, str(bad))
    code = main(["verify", "--checkpoint", str(ckpt), "--onnx", str(bad), "--reports", str(tmp_path / "r")])
    captured = capsys.readouterr()
    assert code == 1
    assert "parity failed" in captured.err and len(captured.err.strip().splitlines()) == 1
    report = json.loads((tmp_path / "r" / "parity.json").read_text())
    failed = [c for c in report["cases"] if c["status"] == "failed"]
    assert failed and all(c["runner"].startswith("onnxruntime") for c in failed)


def test_verify_reads_a_plans_precision_from_its_metadata_and_refuses_a_plan_without(capsys, tiny, tmp_path):
    ckpt, _ = tiny
    plan = tmp_path / "onerank.fp16.plan"
    plan.write_bytes(b"engine")
    code = main(["verify", "--checkpoint", str(ckpt), "--engine", str(plan), "--reports", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1
    assert str(plan) in err and "onerank.fp16.plan.json" in err and "rebuild the engine" in err
    assert not (tmp_path / "r").exists()


def test_verify_rejects_a_shape_outside_the_model_before_any_work(capsys, tiny, tmp_path):
    ckpt, _ = tiny
    code = main(["verify", "--checkpoint", str(ckpt), "--shape", "2x9999x3", "--reports", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "hist_len=9999" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("shape, message", [("2x9999x3", "hist_len=9999"), ("2x3", "expected BxLxN")])
def test_a_bad_shape_is_rejected_before_the_demo_checkpoint_is_trained(capsys, tmp_path, monkeypatch, shape, message):
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("ONERANK_EXPORT_CACHE", str(cache))  # an empty cache: the demo would be trained
    code = main(["verify", "--shape", shape, "--reports", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and message in err, err
    assert list(cache.iterdir()) == [] and not (tmp_path / "r").exists()
