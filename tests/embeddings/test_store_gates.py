"""A reduced embedding store goes through the precision stage's accuracy gates (issue 13, Build 3)."""

from __future__ import annotations

import json

import pytest
from helpers import make_tiny_model

from onerank_export.calibration.settings import AccuracyGates, CalibrationSettings
from onerank_export.cli.main import main
from onerank_export.model.checkpoint import save_checkpoint
from onerank_export.pipeline.memory_plan import initializer_bytes
from onerank_export.pipeline.stages.embeddings import EmbeddingsStage


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return save_checkpoint(make_tiny_model(seed=3), tmp_path_factory.mktemp("ckpt") / "tiny")


def _build(capsys, ckpt, out, dtype, *extra):
    code = main(["build", "--checkpoint", str(ckpt), "--out", str(out), "--embeddings", "split",
                 "--embedding-dtype", dtype, "--target", "cpu", "--engine", "skip", "--precision", "none",
                 "--no-triton", *extra])
    return code, capsys.readouterr()


@pytest.mark.slow  # the dense export alone is ~15 s on 2 cores (torch.export)
def test_a_failed_store_gate_stops_the_build_naming_the_gate_and_leaves_nothing(capsys, tiny_ckpt, tmp_path,
                                                                                monkeypatch):
    def strict(self, options):  # an fp16 store cannot be exact: its max error gate at 1e-12 must fail
        return CalibrationSettings("fp16", seed=options.seed, eval_requests=64,
                                   gates=AccuracyGates(max_fp16_abs_error=1e-12))

    monkeypatch.setattr(EmbeddingsStage, "settings", strict)
    out = tmp_path / "build"
    code, io = _build(capsys, tiny_ckpt, out, "fp16")
    assert code == 1
    error = [line for line in io.err.splitlines() if line.strip()]
    assert len(error) == 1, io.err
    assert error[0].startswith("error: fp16 embedding store failed 1 accuracy gate(s) against fp32 eager, "
                               "first: max_abs_error ")
    assert error[0].endswith("(gate <= 1e-12); build with --embedding-dtype fp16 or fp32")
    # Nothing half-written: no --out, no temporary build directory with a store or dense ONNX in it.
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # a whole split build with parity, ~15 s
def test_a_passing_store_records_the_gate_numbers(capsys, tiny_ckpt, tmp_path, monkeypatch):
    def small(self, options):  # the stage's own settings with fewer held-out requests (fast tier)
        return CalibrationSettings(options.embedding_dtype, seed=options.seed, eval_requests=64)

    monkeypatch.setattr(EmbeddingsStage, "settings", small)
    out = tmp_path / "build"
    code, io = _build(capsys, tiny_ckpt, out, "int8")
    assert code == 0, io.err
    manifest = json.loads((out / "manifest.json").read_text())
    stage = next(s for s in manifest["stages"] if s["name"] == "embeddings")
    acc = stage["metrics"]["accuracy"]
    assert set(acc["tasks"]) == set(make_tiny_model().cfg.tasks)
    assert all(abs(t["auc_change"]) <= 0.002 for t in acc["tasks"].values())
    assert 0.95 <= acc["top10_overlap"]["mean"] <= 1.0
    assert 0 < acc["max_abs_error"] < 0.05  # int8 rows differ from fp32 rows: never exactly zero
    assert "top10_overlap_mean" in stage["metrics"]["gates"] and "accuracy gates passed" in stage["verdict"]
    # The memory plan agrees with the files the build wrote: the int8 store (rows + scales), the dense ONNX.
    plan = manifest["memory_plan"]
    store = out / "embeddings"
    assert plan["mode"] == "split" and plan["store_dtype"] == "int8"
    assert plan["store_bytes"] == sum(f.stat().st_size for f in store.glob("item.int8*.bin"))
    assert plan["per_triton_instance"]["onerank_lookup"] == {
        "private_bytes": 0, "shared_bytes": plan["store_bytes"],
        "holds": "memory-maps the store: one page cache shared by every instance"}
    dense_bytes = initializer_bytes(out / "onnx" / "onerank.dense.fp32.onnx")
    assert plan["dense_model_bytes"] == dense_bytes == plan["per_triton_instance"]["onerank_dense"]["private_bytes"]
    assert 0 < dense_bytes < (out / "onnx" / "onerank.dense.fp32.onnx").stat().st_size


@pytest.mark.slow  # the demo checkpoint's split build, ~40 s
def test_the_int8_store_passes_the_accuracy_gates_on_the_demo(capsys, demo_checkpoint, tmp_path):
    out = tmp_path / "demo"
    code, io = _build(capsys, demo_checkpoint, out, "int8")
    assert code == 0, io.err
    stage = next(s for s in json.loads((out / "manifest.json").read_text())["stages"] if s["name"] == "embeddings")
    assert stage["status"] == "ok" and stage["metrics"]["store_dtype"] == "int8"
    # The precision stage's default gates (calibration/settings.py AccuracyGates), every one passed.
    assert set(stage["metrics"]["gates"]) == {"auc_change[click]", "auc_change[cart]", "auc_change[order]",
                                              "top10_overlap_mean", "finite_scores", "structure"}
    acc = stage["metrics"]["accuracy"]
    assert max(abs(t["auc_change"]) for t in acc["tasks"].values()) <= 0.002
    assert acc["top10_overlap"]["mean"] >= 0.95 and acc["max_abs_error"] < 0.05
