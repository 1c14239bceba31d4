"""`verify` checks the user encoder + candidate scorer pair as the cached path (miss then hit) against
eager, fails a tampered half, and refuses an incomplete or mixed pair with one line."""

from __future__ import annotations

import json

import onnx
import pytest
from helpers import make_tiny_model
from onnx import numpy_helper

from onerank_export.cli.main import main
from onerank_export.export.onnx_config import CANDIDATE_SCORER_ONNX_CONFIG, USER_ENCODER_ONNX_CONFIG
from onerank_export.export.onnx_export import export_onnx
from onerank_export.model.checkpoint import checkpoint_digest, save_checkpoint

pytestmark = pytest.mark.slow  # two ONNX exports and three verify runs, ~40 s on 2 cores


@pytest.fixture(scope="module")
def halves(tmp_path_factory):
    root = tmp_path_factory.mktemp("verify-halves")
    ckpt = save_checkpoint(make_tiny_model(seed=4), root / "ckpt")
    digest = checkpoint_digest(ckpt)
    enc, sc = root / "onerank.user_encoder.fp32.onnx", root / "onerank.candidate_scorer.fp32.onnx"
    export_onnx(make_tiny_model(seed=4), enc, checkpoint_sha256=digest, export_config=USER_ENCODER_ONNX_CONFIG)
    export_onnx(make_tiny_model(seed=4), sc, checkpoint_sha256=digest, export_config=CANDIDATE_SCORER_ONNX_CONFIG)
    return ckpt, enc, sc


def test_verify_checks_the_pair_as_the_cached_path(capsys, halves, tmp_path):
    ckpt, enc, sc = halves
    code = main(["verify", "--checkpoint", str(ckpt), "--onnx", str(enc), "--onnx", str(sc),
                 "--reports", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    report = json.loads((tmp_path / "parity.json").read_text())
    assert {c["runner"] for c in report["cases"]} == {"eager-serving", "user-cache-fp32"}
    cached = [c for c in report["cases"] if c["runner"] == "user-cache-fp32"]
    assert all(c["status"] == "passed" for c in cached)
    assert max(o["max_abs"] for c in cached for o in c["outputs"]) <= 1e-6


def test_verify_fails_a_tampered_scorer(capsys, halves, tmp_path):
    ckpt, enc, sc = halves
    proto = onnx.load(str(sc))
    init = next(i for i in proto.graph.initializer if i.name == "layers.1.ffn.down.weight_t")
    arr = numpy_helper.to_array(init).copy()
    arr[0, 0] += 0.05
    init.CopyFrom(numpy_helper.from_array(arr, init.name))
    bad = tmp_path / sc.name
    onnx.save_model(proto, str(bad))
    code = main(["verify", "--checkpoint", str(ckpt), "--onnx", str(enc), "--onnx", str(bad),
                 "--reports", str(tmp_path / "r")])
    capsys.readouterr()
    assert code == 1
    report = json.loads((tmp_path / "r" / "parity.json").read_text())
    assert any(c["status"] == "failed" for c in report["cases"] if c["runner"] == "user-cache-fp32")


def test_verify_refuses_an_encoder_without_its_scorer(capsys, halves, tmp_path):
    ckpt, enc, _ = halves
    code = main(["verify", "--checkpoint", str(ckpt), "--onnx", str(enc), "--reports", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1
    assert "1 fp32 user encoder(s) and 0 fp32 candidate scorer(s)" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "parity.json").exists()
