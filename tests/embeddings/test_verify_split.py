"""`verify --onnx <dense ONNX> --embeddings <store or build dir>`: lookup + dense graph against eager."""

from __future__ import annotations

import json

import onnx
import pytest
from helpers import make_tiny_model

from onerank_export.cli.main import main
from onerank_export.embeddings.store import write_store
from onerank_export.export.metadata import CHECKPOINT_KEY, GRAPH_KEY
from onerank_export.model.checkpoint import checkpoint_digest, save_checkpoint


def _verify(capsys, *argv):
    code = main(["verify", *argv])
    return code, capsys.readouterr()


def _one_error_line(io) -> str:
    lines = [line for line in io.err.splitlines() if line.strip()]
    assert len(lines) == 1, io.err
    return lines[0]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ckpts")
    return save_checkpoint(make_tiny_model(seed=5), tmp / "a"), save_checkpoint(make_tiny_model(seed=6), tmp / "b")


def _dense_stub(path, digest):
    """A file that says what a split dense export says about itself (the checks read only metadata)."""
    model = onnx.helper.make_model(onnx.helper.make_graph([], "dense", [], []))
    onnx.helper.set_model_props(model, {GRAPH_KEY: "dense", CHECKPOINT_KEY: digest})
    onnx.save(model, path)
    return path


def test_a_dense_graph_without_its_store_is_refused_in_one_line(capsys, ckpts, tmp_path):
    dense = _dense_stub(tmp_path / "onerank.dense.fp32.onnx", checkpoint_digest(ckpts[0]))
    code, io = _verify(capsys, "--checkpoint", str(ckpts[0]), "--onnx", str(dense), "--reports", str(tmp_path / "r"))
    assert code == 1
    assert _one_error_line(io) == (f"error: {dense}: a split dense graph takes looked-up item rows; give its "
                                   "embedding store with --embeddings (the build's embeddings/ directory or the "
                                   "build directory)")
    assert not (tmp_path / "r").exists()


def test_a_store_of_another_checkpoint_is_refused_in_one_line(capsys, ckpts, tmp_path):
    a, b = ckpts
    dense = _dense_stub(tmp_path / "onerank.dense.fp32.onnx", checkpoint_digest(a))
    write_store(b, tmp_path / "build" / "embeddings", "fp32")
    code, io = _verify(capsys, "--checkpoint", str(a), "--onnx", str(dense), "--embeddings", str(tmp_path / "build"),
                       "--reports", str(tmp_path / "r"))
    assert code == 1
    assert _one_error_line(io) == (f"error: {tmp_path / 'build' / 'embeddings'}: embedding store was written from "
                                   f"checkpoint {checkpoint_digest(b)[:12]}, not the checkpoint verified against "
                                   f"({checkpoint_digest(a)[:12]}); give the store of the same build")
    assert not (tmp_path / "r").exists()


def test_a_store_without_a_dense_graph_is_refused_in_one_line(capsys, ckpts, tmp_path):
    write_store(ckpts[0], tmp_path / "emb", "fp32")
    code, io = _verify(capsys, "--checkpoint", str(ckpts[0]), "--embeddings", str(tmp_path / "emb"))
    assert code == 1
    assert _one_error_line(io) == (f"error: --embeddings {tmp_path / 'emb'}: no split dense graph among --onnx; "
                                   "give the build's onnx/onerank.dense.fp32.onnx with it")


@pytest.mark.slow  # a real dense export (~15 s) and two verify runs
def test_verify_runs_the_lookup_and_dense_graph_within_the_store_tolerance(capsys, ckpts, tmp_path):
    from onerank_export.export.onnx_config import SPLIT_DENSE_ONNX_CONFIG
    from onerank_export.export.onnx_export import export_onnx
    from onerank_export.model.checkpoint import load_checkpoint

    ckpt = ckpts[0]
    dense = export_onnx(load_checkpoint(ckpt), tmp_path / "onerank.dense.fp32.onnx",
                        checkpoint_sha256=checkpoint_digest(ckpt), export_config=SPLIT_DENSE_ONNX_CONFIG).path
    for dtype, runner, bound in (("fp32", "split-fp32", 1e-6), ("int8", "split-fp32-store-int8", 0.05)):
        build = tmp_path / dtype
        write_store(ckpt, build / "embeddings", dtype)
        code, io = _verify(capsys, "--checkpoint", str(ckpt), "--onnx", str(dense), "--embeddings", str(build),
                           "--reports", str(tmp_path / f"r-{dtype}"))
        assert code == 0, io.err
        report = json.loads((tmp_path / f"r-{dtype}" / "parity.json").read_text())
        cases = [c for c in report["cases"] if c["runner"] == runner]
        assert cases and all(c["status"] == "passed" for c in cases)
        worst = max(o["max_abs"] for c in cases for o in c["outputs"])
        assert worst <= bound, (dtype, worst)
        print(f"verify {runner}: max_abs {worst:.3g}")
        if dtype == "int8":
            assert worst > 1e-6  # the int8 rows are not the fp32 rows: the runner really used the store
        assert f"{runner}" in io.out
