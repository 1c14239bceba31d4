"""Split mode's fp16 / int8 dense graphs: made by the precision stages on the store's rows, judged by
the same gates, checked by parity and `verify` (issue 13, Build 2)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from helpers import TINY, make_tiny_model, request

from onerank_export.calibration.settings import AccuracyGates, CalibrationSettings
from onerank_export.cli.main import main
from onerank_export.model.checkpoint import save_checkpoint
from onerank_export.parity.runners import OnnxRuntimeRunner
from onerank_export.parity.split_runner import SplitRunner
from onerank_export.parity.targets import loosest, split_runner_name
from onerank_export.pipeline.stages.precision import PrecisionStage
from onerank_export.precision import Precision


def _build(capsys, ckpt, out, *extra):
    code = main(["build", "--checkpoint", str(ckpt), "--out", str(out), "--target", "cpu", "--engine", "skip",
                 "--no-triton", *extra])
    return code, capsys.readouterr()


def _stages(out):
    return {s["name"]: s for s in json.loads((out / "manifest.json").read_text())["stages"]}


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    """The same tiny checkpoint built split (fp32 and int8 stores) and inline, fp16 + int8 each."""
    tmp = tmp_path_factory.mktemp("split-precision")
    ckpt = save_checkpoint(make_tiny_model(seed=3), tmp / "ckpt")
    for name, extra in {"split": ("--embeddings", "split"),
                        "split-int8-store": ("--embeddings", "split", "--embedding-dtype", "int8"),
                        "inline": ("--embeddings", "inline")}.items():
        code = main(["build", "--checkpoint", str(ckpt), "--out", str(tmp / name), "--target", "cpu",
                     "--engine", "skip", "--no-triton", *extra])
        assert code == 0, name
    return ckpt, tmp


def test_runner_names_say_the_dense_precision_and_a_reduced_store():
    assert split_runner_name(Precision.FP32, Precision.FP32) == "split-fp32"
    assert split_runner_name(Precision.FP16, Precision.FP32) == "split-fp16"
    assert split_runner_name(Precision.FP32, Precision.INT8) == "split-fp32-store-int8"
    assert split_runner_name(Precision.INT8, Precision.FP16) == "split-int8-store-fp16"
    # A chain is held to the tolerance of its loosest part, whichever part that is.
    assert loosest(Precision.FP32, Precision.FP16) is Precision.FP16
    assert loosest(Precision.INT8, Precision.FP16) is Precision.INT8
    assert loosest(Precision.FP32, Precision.FP32) is Precision.FP32


@pytest.mark.slow  # three tiny builds with fp16 + int8 (~50 s, module fixture)
def test_split_builds_reduced_dense_graphs_that_take_rows_and_hold_no_table(builds):
    _, tmp = builds
    out = tmp / "split"
    stages = _stages(out)
    for p in ("fp16", "int8"):
        stage = stages[p]
        assert stage["status"] == "ok", stage["verdict"]
        assert stage["verdict"].startswith("ok: dense graph: ")
        path = out / "onnx" / f"onerank.dense.{p}.onnx"
        paths = {a["role"]: a["path"] for a in stage["artifacts"]}
        assert paths[f"onnx_dense_{p}"] == f"onnx/onerank.dense.{p}.onnx"
        proto = onnx.load(str(path))
        assert [i.name for i in proto.graph.input][-2:] == ["hist_item_rows", "cand_item_rows"]
        assert not [i.name for i in proto.graph.initializer if TINY.item_vocab_size in i.dims]
        assert stage["metrics"]["gates_failed"] == []
    assert not (out / "onnx" / "onerank.fp16.onnx").exists()  # no inline graph in split mode
    report = json.loads((out / "reports" / "calibration.json").read_text())
    assert set(report["precisions"]) == {"fp16", "int8"} and report["passed"]
    assert report["fp32_onnx"].endswith("onerank.dense.fp32.onnx")


@pytest.mark.slow  # module fixture
def test_parity_checks_every_dense_precision_through_the_lookup(builds):
    _, tmp = builds
    worst = _stages(tmp / "split")["parity"]["metrics"]["max_abs"]
    assert set(worst) >= {"split-fp32[fp32]", "split-fp16[fp16]", "split-int8[int8]"}
    assert worst["split-fp32[fp32]"] <= 1e-6
    assert 0 < worst["split-fp16[fp16]"] <= 5e-3 and 0 < worst["split-int8[int8]"] <= 5e-2
    # With an int8 store the chain is named by both parts and held to int8's tolerance.
    stages = _stages(tmp / "split-int8-store")
    assert set(stages["parity"]["metrics"]["max_abs"]) >= {
        "split-fp32-store-int8[int8]", "split-fp16-store-int8[int8]", "split-int8-store-int8[int8]"}
    assert stages["fp16"]["verdict"].startswith("ok: dense graph on rows of the int8 store: ")


@pytest.mark.slow  # module fixture
def test_split_reduced_graphs_score_like_the_inline_ones(builds):
    """Same checkpoint, same calibration requests: the split chain computes what the inline model does
    (int8: the same Q/DQ placement and ranges; fp16: the inline graph rounds its table to fp16, the split
    dense graph takes fp32 rows, so they differ by a fraction of fp16's tolerance)."""
    _, tmp = builds
    for p, bound in (("fp32", 1e-6), ("fp16", 1e-3), ("int8", 1e-6)):
        split = SplitRunner(tmp / "split" / "onnx" / f"onerank.dense.{p}.onnx", tmp / "split" / "embeddings")
        inline = OnnxRuntimeRunner(tmp / "inline" / "onnx" / f"onerank.{p}.onnx")
        split.activate()
        inline.activate()
        for seed, (b, hist, n) in enumerate([(2, 9, 5), (1, 1, 1), (3, 40, 17)]):
            feed = request(TINY, b, hist, n, seed=seed)
            diff = np.abs(split.infer_impl(feed)["scores"] - inline.infer_impl(feed)["scores"]).max()
            assert diff <= bound, (p, diff)


@pytest.mark.slow  # module fixture + two verify runs
def test_verify_checks_several_dense_graphs_with_one_store_and_refuses_two_of_a_precision(capsys, builds, tmp_path):
    ckpt, tmp = builds
    onnx_dir = tmp / "split" / "onnx"
    code = main(["verify", "--checkpoint", str(ckpt), "--onnx", str(onnx_dir / "onerank.dense.fp32.onnx"),
                 "--onnx", str(onnx_dir / "onerank.dense.int8.onnx"), "--embeddings", str(tmp / "split"),
                 "--reports", str(tmp_path / "r")])
    io = capsys.readouterr()
    assert code == 0, io.err
    runners = {c["runner"] for c in json.loads((tmp_path / "r" / "parity.json").read_text())["cases"]}
    assert {"split-fp32", "split-int8"} <= runners
    copy = tmp_path / "copy.onnx"
    copy.write_bytes((onnx_dir / "onerank.dense.int8.onnx").read_bytes())
    code = main(["verify", "--checkpoint", str(ckpt), "--onnx", str(onnx_dir / "onerank.dense.int8.onnx"),
                 "--onnx", str(copy), "--embeddings", str(tmp / "split"), "--reports", str(tmp_path / "r2")])
    io = capsys.readouterr()
    lines = [line for line in io.err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1, io.err
    assert lines[0] == ("error: --onnx has two int8 split dense graphs (onerank.dense.int8.onnx, copy.onnx); give one "
                        "per precision with their --embeddings store")
    assert not (tmp_path / "r2").exists()


@pytest.mark.slow  # a tiny split build (~20 s)
def test_a_failed_gate_keeps_the_dense_graph_out_and_fails_the_stage(capsys, tmp_path, monkeypatch):
    def strict(self, options):  # fp16 cannot be exact: its max error gate at 1e-12 must fail
        return CalibrationSettings(self.precision, seed=options.seed, eval_requests=64,
                                   gates=AccuracyGates(max_fp16_abs_error=1e-12))

    monkeypatch.setattr(PrecisionStage, "settings", strict)
    ckpt = save_checkpoint(make_tiny_model(seed=3), tmp_path / "ckpt")
    code, _ = _build(capsys, ckpt, tmp_path / "b", "--embeddings", "split", "--precision", "fp16")
    assert code == 1
    failed = tmp_path / "b"
    stage = _stages(failed)["fp16"]
    assert stage["status"] == "failed"
    assert stage["verdict"].startswith("failed: dense graph: gate failed: max_abs_error ")
    assert not (failed / "onnx" / "onerank.dense.fp16.onnx").exists()
    assert "onnx_dense_fp16" not in {a["role"] for a in stage["artifacts"]}
    assert not any(c["runner"].startswith("split-fp16")
                   for c in json.loads((failed / "reports" / "parity.json").read_text())["cases"])
