"""Bad input gets one line, exit 1, no traceback, and nothing half-written."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import make_tiny_model

from onerank_export.cli.main import main
from onerank_export.model.checkpoint import save_checkpoint


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return save_checkpoint(make_tiny_model(), tmp_path_factory.mktemp("ckpt") / "tiny")


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def test_missing_checkpoint_dir(capsys, tmp_path):
    code, _, err = run(capsys, "export", "--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "m.onnx"))
    assert_one_line_error(code, err, "does not exist")
    assert not (tmp_path / "m.onnx").exists()


def test_corrupt_safetensors(capsys, tmp_path, tiny_ckpt):
    bad = save_checkpoint(make_tiny_model(), tmp_path / "bad")
    (bad / "model.safetensors").write_bytes(b"not a safetensors file at all")
    code, _, err = run(capsys, "export", "--checkpoint", str(bad), "--out", str(tmp_path / "m.onnx"))
    assert_one_line_error(code, err, "model.safetensors", "not a readable safetensors file")
    assert list(tmp_path.glob("*.onnx")) == [] and list(tmp_path.glob(".m.onnx*")) == []


@pytest.mark.parametrize(("argv", "fragment"), [
    (["build", "--engine", "sometimes"], "'sometimes' is not one of"),
    (["build", "--precision", "int4"], "'int4' is not one of"),
    (["build", "--frobnicate"], "No such option '--frobnicate'"),
    (["verify", "--protocol", "smtp"], "'smtp' is not one of"),
    (["verify", "--shape", "2x3"], "expected BxLxN"),
    (["nonsense"], "No such command 'nonsense'"),
])
def test_unknown_options_and_values(capsys, argv, fragment):
    assert_one_line_error(*run(capsys, *argv)[::2], fragment)


def test_verify_shapes_beyond_the_configured_maxima(capsys, tiny_ckpt, tmp_path):
    code, _, err = run(capsys, "verify", "--checkpoint", str(tiny_ckpt), "--shape", "1x65x3",
                       "--reports", str(tmp_path / "r"))
    assert_one_line_error(code, err, "hist_len=65", "[1, 64]")
    code, _, err = run(capsys, "verify", "--checkpoint", str(tiny_ckpt), "--shape", "1x3x100",
                       "--reports", str(tmp_path / "r"))
    assert_one_line_error(code, err, "num_candidates=100", "[1, 64]")
    assert not (tmp_path / "r").exists()


def test_verify_onnx_from_a_checkpoint_with_another_config(capsys, tiny_ckpt, tmp_path):
    # The check reads the file's metadata only: a graph-less model that says what an export of a d=8
    # model says about itself (an export would cost ~7 s of the fast tier).
    import onnx

    from onerank_export.export.metadata import CONFIG_KEY

    other = tmp_path / "other.onnx"
    stub = onnx.helper.make_model(onnx.helper.make_graph([], "other", [], []))
    onnx.helper.set_model_props(stub, {CONFIG_KEY: make_tiny_model(d_model=8, n_heads=2).cfg.to_json()})
    onnx.save(stub, str(other))
    code, _, err = run(capsys, "verify", "--checkpoint", str(tiny_ckpt), "--onnx", str(other),
                       "--reports", str(tmp_path / "r"))
    assert_one_line_error(code, err, "another config", "d_model=8", "16")


def test_build_refuses_to_overwrite_a_directory_that_is_not_a_build(capsys, tiny_ckpt, tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("mine")
    code, _, err = run(capsys, "build", "--checkpoint", str(tiny_ckpt), "--out", str(precious))
    assert_one_line_error(code, err, "--force")
    assert (precious / "notes.txt").read_text() == "mine"


def test_engine_require_without_tensorrt_fails_before_any_work(capsys, tiny_ckpt, tmp_path):
    from onerank_export.engine.tensorrt.availability import tensorrt_unavailable_reason

    if tensorrt_unavailable_reason() is None:
        pytest.skip("TensorRT is available here")
    code, _, err = run(capsys, "build", "--checkpoint", str(tiny_ckpt), "--out", str(tmp_path / "b"),
                       "--engine", "require")
    assert_one_line_error(code, err, "--engine require", tensorrt_unavailable_reason())
    assert not (tmp_path / "b").exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv, needle", [
    (["--target", "gpu", "--threads", "2"], "--threads applies to CPU models only"),
    (["--target", "tpu"], "'tpu' is not one of"),
    (["--serving-profile", "fast"], "'fast' is not one of"),
    (["--instances", "0"], "--instances"),
])
def test_serving_options_are_checked_before_any_work(capsys, tiny_ckpt, tmp_path, argv, needle):
    code, _, err = run(capsys, "build", "--checkpoint", str(tiny_ckpt), "--out", str(tmp_path / "b"), *argv)
    assert_one_line_error(code, err, needle)
    assert list(tmp_path.iterdir()) == []


def test_real_process_exit_code_and_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "onerank_export.cli.main", "export", "--checkpoint",
                           str(tmp_path / "missing")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1
    assert "Traceback" not in proc.stderr
