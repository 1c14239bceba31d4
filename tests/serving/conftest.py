"""Build directories for the tests that start a real tritonserver.

The repository is written here from serving/model_config and serving/repository's pieces, not by
`write_model_repository`, so these tests pin what `serve` must handle (a cpu-target repository: the
python-backend model it runs plus an `onnxruntime_onnx` model it must skip) independently of how a
build lays its repository out.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers import TINY, make_tiny_model

from onerank_export.serving import model_config as mcfg
from onerank_export.serving.profiles import Target, serving_plan
from onerank_export.serving.repository import PYTHON_MODEL_SOURCE, warmup_request, write_warmup

PYTHON_MODEL = "onerank"
ONNX_MODEL = "onerank_onnx_fp32"


def write_model(repository: Path, cfg, files: dict[str, Path]) -> None:
    """One model directory: config.pbtxt (checked to round-trip through the schema) and 1/<files>."""
    (repository / cfg.name / "1").mkdir(parents=True, exist_ok=True)
    for target, source in files.items():
        shutil.copyfile(source, repository / cfg.name / "1" / target)
    text = mcfg.to_text(cfg)
    assert mcfg.parse_config(text) == cfg
    (repository / cfg.name / "config.pbtxt").write_text(text)


def write_cpu_repository(repository: Path, onnx: Path | None = None) -> Path:
    """A cpu-target repository: the python-backend model and an ONNX Runtime backend model, both KIND_CPU.
    Without `onnx` only the configs are written (enough for what reads configs, not for a server)."""
    plan = serving_plan(Target.CPU, "tests", "throughput")
    warm = warmup_request(TINY)
    python_files = {"model.onnx": onnx, "model.py": PYTHON_MODEL_SOURCE} if onnx else {}
    write_model(repository, mcfg.python_onnx_config(PYTHON_MODEL, TINY, plan,
                                                    write_warmup(repository / PYTHON_MODEL, warm)), python_files)
    write_model(repository, mcfg.onnxruntime_config(ONNX_MODEL, TINY, "fp32", plan,
                                                    write_warmup(repository / ONNX_MODEL, warm)),
                {"model.onnx": onnx} if onnx else {})
    return repository


def write_gpu_repository(repository: Path) -> Path:
    """The configs of a gpu-target repository (TensorRT + ONNX Runtime on KIND_GPU); no model files."""
    plan = serving_plan(Target.GPU, "tests", "latency")
    write_model(repository, mcfg.tensorrt_config("onerank_trt_fp16", TINY, "fp16", plan), {})
    write_model(repository, mcfg.onnxruntime_config(ONNX_MODEL, TINY, "fp32", plan), {})
    return repository


def write_cpu_build(out: Path) -> Path:
    """`out` laid out as a cpu-target build: checkpoint/, onnx/, manifest.json and model_repository/."""
    from onerank_export.export.onnx_export import export_onnx
    from onerank_export.model.checkpoint import save_checkpoint

    model = make_tiny_model()
    save_checkpoint(model, out / "checkpoint")
    (out / "onnx").mkdir()
    onnx = out / "onnx" / "onerank.fp32.onnx"
    export_onnx(model, onnx)
    write_cpu_repository(out / "model_repository", onnx)
    (out / "manifest.json").write_text("{}")
    return out


@pytest.fixture(scope="module")
def cpu_build(tmp_path_factory) -> Path:
    """A cpu-target build directory, written once per test module."""
    return write_cpu_build(tmp_path_factory.mktemp("build"))


@pytest.fixture
def cpu_repository(tmp_path) -> Path:
    """The configs of a cpu-target repository in tmp_path/model_repository (no model files)."""
    return write_cpu_repository(tmp_path / "model_repository")


@pytest.fixture
def gpu_repository(tmp_path) -> Path:
    """The configs of a gpu-target repository in tmp_path/model_repository (no model files)."""
    return write_gpu_repository(tmp_path / "model_repository")


@pytest.fixture(scope="session")
def redis_url(redis_server) -> str:
    return redis_server.url
