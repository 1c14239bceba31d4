"""`build --embeddings inline` past the external-data threshold (lowered here so a tiny model takes the path a
9M-row checkpoint takes): every model with its .onnx.data, the repository's copies, the backend rules, parity,
byte-identical rebuilds, and the manifest's hashes, embeddings and memory records."""

from __future__ import annotations

import hashlib
import json

import pytest
from helpers import make_tiny_model

from onerank_export.cli.main import main
from onerank_export.export.onnx_files import EXTERNAL_DATA_ENV
from onerank_export.model.checkpoint import save_checkpoint

pytestmark = pytest.mark.slow  # whole builds with fp16 and int8 calibration


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("external-build")
    ckpt = save_checkpoint(make_tiny_model(seed=2), root / "ckpt")
    outs = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(EXTERNAL_DATA_ENV, "4096")
        for name, precisions in (("a", ("fp16", "int8")), ("b", ("none",))):
            out = root / name
            argv = ["build", "--checkpoint", str(ckpt), "--out", str(out), "--engine", "skip", "--target", "cpu",
                    "--embeddings", "inline"]
            assert main(argv + [a for p in precisions for a in ("--precision", p)]) == 0
            outs.append(out)
    return outs


def test_every_model_and_served_copy_has_its_data_file_hashed_in_the_manifest(built):
    out = built[0]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["passed"] and all(s["status"] == "ok" for s in manifest["stages"] if s["name"] != "engine")
    by_path = {a["path"]: a for a in manifest["artifacts"]}
    for model in ("onerank.fp32", "onerank.fp16", "onerank.int8", "onerank.fp32.cpu", "onerank.fp16.cpu",
                  "onerank.int8.cpu"):
        for suffix in (".onnx", ".onnx.data"):
            path = f"onnx/{model}{suffix}"
            data = (out / path).read_bytes()
            assert by_path[path]["sha256"] == hashlib.sha256(data).hexdigest(), path
    for model, served in (("onerank", "fp32"), ("onerank_onnx_fp16", "fp16"), ("onerank_onnx_int8", "int8")):
        copy = f"model_repository/{model}/1/onerank.{served}.cpu.onnx.data"
        assert by_path[copy]["sha256"] == by_path[f"onnx/onerank.{served}.cpu.onnx.data"]["sha256"], copy
    triton = next(s for s in manifest["stages"] if s["name"] == "triton")
    assert "backend's rules" in triton["verdict"]  # the external-data rules included, passed
    parity = next(s for s in manifest["stages"] if s["name"] == "parity")
    assert parity["status"] == "ok"  # every model within its precision's tolerance, the served copies included
    assert max(v for k, v in parity["metrics"]["max_abs"].items() if "fp32" in k) <= 1e-5


def test_the_manifest_records_the_mode_the_table_and_the_peak_memory(built):
    manifest = json.loads((built[0] / "manifest.json").read_text())
    assert manifest["options"]["embeddings"] == "inline"
    assert manifest["embeddings"] == {"mode": "inline", "reason": "--embeddings inline", "tables": {
        "item": {"rows": 300, "dim": 16, "dtype": "float32", "bytes": 19_200}}}
    memory = manifest["memory"]
    assert memory["table_bytes"] == {"item": 19_200}
    assert memory["peak_rss_bytes"] == max(memory["peak_rss_self_bytes"], memory["peak_rss_children_bytes"])
    assert 100 << 20 < memory["peak_rss_self_bytes"] < 64 << 30  # this process's, in bytes (not KiB)
    after = memory["peak_rss_after_stage"]  # a high-water mark: never falls, ends at the peak
    assert list(after) == [s["name"] for s in manifest["stages"]]
    assert list(after.values()) == sorted(after.values()) and after["parity"] <= memory["peak_rss_self_bytes"]


def test_a_rebuild_writes_the_same_fp32_model_and_data_bytes(built):
    a, b = built
    for path in ("onnx/onerank.fp32.onnx", "onnx/onerank.fp32.onnx.data", "onnx/onerank.fp32.cpu.onnx.data"):
        assert (a / path).read_bytes() == (b / path).read_bytes(), path
