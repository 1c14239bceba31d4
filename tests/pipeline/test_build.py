"""`build` writes the layout of DESIGN.md atomically, with a manifest whose every claim is checkable."""

from __future__ import annotations

import hashlib
import json

import pytest
from helpers import make_tiny_model

from onerank_export.cli.main import main
from onerank_export.model.checkpoint import save_checkpoint

pytestmark = pytest.mark.slow  # whole `onerank-export build` runs, ~30 s on 2 cores


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return save_checkpoint(make_tiny_model(), tmp_path_factory.mktemp("ckpt") / "tiny")


def build(capsys, *argv):
    code = main(["build", *argv])
    return code, capsys.readouterr()


def test_build_writes_manifest_with_verified_artifacts(capsys, tiny_ckpt, tmp_path):
    out = tmp_path / "build"
    code, io = build(capsys, "--checkpoint", str(tiny_ckpt), "--out", str(out), "--precision", "none",
                     "--no-triton", "--engine", "skip", "--target", "cpu")
    assert code == 0, io.err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["passed"] is True
    # No repository (--no-triton): nothing to serve, so no target is resolved and no CPU rewrite is written.
    assert [s["name"] for s in manifest["stages"]] == ["checkpoint", "export fp32", "engine", "parity"]
    assert manifest["stages"][2]["verdict"] == "skipped: --engine skip"
    assert manifest["options"]["target"] == "cpu" and manifest["options"]["serving_profile"] == "latency"
    assert manifest["config"]["d_model"] == 16 and manifest["versions"]["onnxruntime"]
    for artifact in manifest["artifacts"]:
        data = (out / artifact["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == artifact["sha256"] and len(data) == artifact["bytes"]
    assert {a["path"] for a in manifest["artifacts"]} == {"onnx/onerank.fp32.onnx", "reports/parity.json",
                                                          "reports/junit.xml"}
    assert "skipped: --engine skip" in io.out
    # A second build replaces the first (it is ours) and leaves no temporary directories behind.
    code, _ = build(capsys, "--checkpoint", str(tiny_ckpt), "--out", str(out), "--precision", "none",
                    "--no-triton", "--engine", "skip")
    assert code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["build"]


def test_engine_auto_says_skipped_with_the_reason_and_exits_0(capsys, tiny_ckpt, tmp_path):
    from onerank_export.engine.tensorrt.availability import tensorrt_unavailable_reason

    reason = tensorrt_unavailable_reason()
    if reason is None:
        pytest.skip("TensorRT is available here")
    out = tmp_path / "b"
    code, io = build(capsys, "--checkpoint", str(tiny_ckpt), "--out", str(out), "--precision", "none",
                     "--no-triton", "--engine", "auto")
    assert code == 0, io.err
    assert f"skipped: {reason}" in io.out
    engine = next(s for s in json.loads((out / "manifest.json").read_text())["stages"] if s["name"] == "engine")
    assert engine["status"] == "skipped" and engine["verdict"] == f"skipped: {reason}"
    assert engine["artifacts"] == [] and not (out / "engines").exists()


def test_failed_parity_gate_exits_1_but_leaves_a_complete_report(capsys, tiny_ckpt, tmp_path):
    strict = tmp_path / "strict.json"
    strict.write_text(json.dumps({"fp32": {"atol": 0.0}}))
    out = tmp_path / "b"
    code, io = build(capsys, "--checkpoint", str(tiny_ckpt), "--out", str(out), "--precision", "none",
                     "--no-triton", "--engine", "skip", "--tolerances", str(strict))
    assert code == 1
    manifest = json.loads((out / "manifest.json").read_text())
    parity = next(s for s in manifest["stages"] if s["name"] == "parity")
    assert manifest["passed"] is False and parity["status"] == "failed"
    report = json.loads((out / "reports" / "parity.json").read_text())
    assert report["passed"] is False and report["counts"]["failed"] > 0
    assert "FAILED" in io.out


@pytest.mark.parametrize("target", ["cpu", "gpu"])
def test_the_repository_fits_its_target_and_the_manifest_says_why(capsys, tiny_ckpt, tmp_path, target):
    from onerank_export.serving.backend_rules import check_repository
    from onerank_export.serving.model_config import read_config

    out = tmp_path / "b"
    code, io = build(capsys, "--checkpoint", str(tiny_ckpt), "--out", str(out), "--precision", "none",
                     "--engine", "skip", "--target", target, "--serving-profile", "throughput")
    assert code == 0, io.err
    manifest = json.loads((out / "manifest.json").read_text())
    triton = next(s for s in manifest["stages"] if s["name"] == "triton")
    assert triton["metrics"]["target"] == target and triton["metrics"]["target_reason"] == f"--target {target}"
    assert triton["metrics"]["profile"] == "throughput" and triton["metrics"]["queue_delay_us"] == 200
    repo = out / "model_repository"
    assert check_repository(repo, target) == [] and not (out / "model_repository_cpu").exists()
    kinds = {p.parent.name: {g.kind for g in read_config(p).instance_group} for p in repo.glob("*/config.pbtxt")}
    assert all(len(k) == 1 for k in kinds.values()), kinds  # no model mixes GPU and CPU instances
    parity = json.loads((out / "reports" / "parity.json").read_text())
    served = [c for c in parity["cases"] if c["runner"] == "triton-ort:onerank_onnx_fp32"]
    if target == "cpu":
        assert sorted(kinds) == ["onerank", "onerank_onnx_fp32"]
        assert served and all(c["status"] == "passed" for c in served)  # the served file, loaded as the backend
        assert max(o["max_abs"] for c in served for o in c["outputs"]) <= 1e-5
    else:
        import onnxruntime

        assert sorted(kinds) == ["onerank_onnx_fp32"] and not (out / "onnx" / "onerank.fp32.cpu.onnx").exists()
        from onerank_export.host import cuda_device_present

        if cuda_device_present() and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            assert served and all(c["status"] == "passed" for c in served)
        else:
            assert served and all(c["status"] == "skipped" and "CUDA" in c["reason"] for c in served)
    cpu_onnx = next(s for s in manifest["stages"] if s["name"] == "cpu onnx")
    assert cpu_onnx["status"] == ("ok" if target == "cpu" else "skipped")


def test_user_cache_build_exports_checks_and_serves_the_halves(capsys, tiny_ckpt, tmp_path):
    from onerank_export.serving.backend_rules import check_repository
    from onerank_export.serving.model_config import read_config

    out = tmp_path / "uc"
    code, io = build(capsys, "--checkpoint", str(tiny_ckpt), "--out", str(out), "--precision", "none",
                     "--engine", "skip", "--target", "cpu", "--user-cache", "--user-cache-bytes", "64MiB")
    assert code == 0, io.err
    manifest = json.loads((out / "manifest.json").read_text())
    names = [s["name"] for s in manifest["stages"]]
    assert names[:3] == ["checkpoint", "export fp32", "user cache"]
    stage = manifest["stages"][2]
    assert stage["status"] == "ok" and stage["metrics"]["compose_max_abs"] <= 1e-6
    assert stage["metrics"]["cache_bytes"] == 64 << 20 and manifest["options"]["user_cache"] is True
    paths = {a["path"] for a in manifest["artifacts"]}
    assert {"onnx/onerank.user_encoder.fp32.onnx", "onnx/onerank.candidate_scorer.fp32.onnx",
            "model_repository/onerank/1/user_encoder.onnx", "model_repository/onerank/1/candidate_scorer.onnx"} <= paths
    repo = out / "model_repository"
    assert check_repository(repo, "cpu") == []
    assert not (repo / "onerank" / "1" / "model.onnx").exists()
    params = read_config(repo / "onerank" / "config.pbtxt").parameters
    assert params["user_cache_bytes"].string_value == str(64 << 20)
    parity = json.loads((out / "reports" / "parity.json").read_text())
    cached = [c for c in parity["cases"] if c["runner"] == "user-cache-fp32"]
    assert cached and all(c["status"] == "passed" for c in cached)
    assert max(o["max_abs"] for c in cached for o in c["outputs"]) <= 1e-6


def test_user_cache_on_a_gpu_target_serves_the_halves_through_bls(capsys, tiny_ckpt, tmp_path):
    from onerank_export.serving.backend_rules import check_repository
    from onerank_export.serving.model_config import read_config

    out = tmp_path / "uc-gpu"
    code, io = build(capsys, "--checkpoint", str(tiny_ckpt), "--out", str(out), "--precision", "none",
                     "--engine", "skip", "--target", "gpu", "--user-cache")
    assert code == 0, io.err
    repo = out / "model_repository"
    assert check_repository(repo, "gpu") == []
    models = sorted(p.parent.name for p in repo.glob("*/config.pbtxt"))
    assert models == ["onerank", "onerank_candidate_scorer_onnx_fp32", "onerank_onnx_fp32",
                      "onerank_user_encoder_onnx_fp32"]
    cfg = read_config(repo / "onerank" / "config.pbtxt")
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    assert params["onerank.user_encoder_model"] == "onerank_user_encoder_onnx_fp32"
    assert params["onerank.user_cache_identity"].startswith("onerank/")
    assert not cfg.model_warmup and [g.kind for g in cfg.instance_group] == [cfg.instance_group[0].KIND_CPU]
    # A BLS name that is not a model of the repository is a rule violation.
    cfg.parameters["onerank.candidate_scorer_model"].string_value = "nope"
    (repo / "onerank" / "config.pbtxt").write_text(__import__("onerank_export.serving.model_config",
                                                              fromlist=["to_text"]).to_text(cfg))
    assert any("[bls-model]" in line and "'nope'" in line for line in check_repository(repo, "gpu"))
