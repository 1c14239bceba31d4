"""What `serve` loads from a repository, what it skips and what it refuses (configs only, no server)."""

from __future__ import annotations

import pytest

from onerank_export.cli.main import main
from onerank_export.errors import StageError
from onerank_export.serving.server import TritonServer, resolve_repository, servable_models

PYTHON_MODEL, ONNX_MODEL = "onerank", "onerank_onnx_fp32"  # the names tests/serving/conftest.py writes
SKIP_REASON = ("platform onnxruntime_onnx: the bundled tritonserver has the python backend only; "
               "serve this repository with NVIDIA's Triton container to load it")


def test_a_cpu_target_repository_loads_the_python_model_and_skips_the_onnxruntime_one(cpu_repository):
    assert servable_models(cpu_repository) == ([PYTHON_MODEL], [(ONNX_MODEL, SKIP_REASON)])


def test_a_gpu_target_repository_is_a_one_line_error_naming_the_target_and_the_way_out(gpu_repository):
    with pytest.raises(StageError) as err:
        servable_models(gpu_repository)
    message = str(err.value)
    assert "\n" not in message
    assert "a gpu-target repository (models " in message and "run on KIND_GPU)" in message
    assert "onerank_trt_fp16 (platform tensorrt_plan)" in message
    assert f"{ONNX_MODEL} (platform onnxruntime_onnx)" in message
    assert "NVIDIA's Triton container" in message and "--target cpu" in message


def test_a_gpu_target_repository_with_a_python_helper_is_refused_too(gpu_repository, tmp_path):
    """A gpu split build's lookup (python, KIND_CPU) must not make serve start and load it alone."""
    from helpers import TINY

    from onerank_export.serving import model_config as mcfg
    from onerank_export.serving.profiles import Target, serving_plan

    helper = mcfg.python_onnx_config(PYTHON_MODEL, TINY, serving_plan(Target.CPU, "tests", "latency", cores=2))
    (gpu_repository / PYTHON_MODEL).mkdir()
    (gpu_repository / PYTHON_MODEL / "config.pbtxt").write_text(mcfg.to_text(helper))
    with pytest.raises(StageError) as err:
        servable_models(gpu_repository)
    assert "a gpu-target repository (models " in str(err.value) and PYTHON_MODEL + " (" not in str(err.value)


def test_serve_refuses_a_gpu_target_build_in_one_line_before_starting_anything(gpu_repository, capsys):
    (gpu_repository.parent / "manifest.json").write_text("{}")
    code = main(["serve", "--repository", str(gpu_repository.parent)])
    out = capsys.readouterr()
    assert code == 1 and out.err.count("\n") == 1 and "gpu-target repository" in out.err
    assert "starting tritonserver" not in out.out


def test_a_build_dir_serves_its_model_repository_and_a_repository_serves_itself(cpu_repository, tmp_path):
    repo = cpu_repository
    with pytest.raises(StageError, match="model directories"):  # not a build dir yet, and no models at its top
        resolve_repository(tmp_path)
    (tmp_path / "manifest.json").write_text("{}")
    assert resolve_repository(tmp_path) == repo
    assert resolve_repository(repo) == repo
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "manifest.json").write_text("{}")
    with pytest.raises(StageError, match="build directory without model_repository/"):
        resolve_repository(tmp_path / "elsewhere")


def test_the_server_refuses_an_empty_model_list(tmp_path):
    with pytest.raises(StageError, match="no model to load"):
        TritonServer(tmp_path, models=[])
