"""Shared pytest set-up: the `gpu` marker skips with a reason where CUDA + TensorRT are absent."""

from __future__ import annotations

import pytest

from onerank_export.engine.tensorrt.availability import tensorrt_unavailable_reason


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items:
        return
    reason = tensorrt_unavailable_reason()
    if reason is None:
        return
    for item in gpu_items:
        item.add_marker(pytest.mark.skip(reason=f"gpu test: {reason}"))


# ----- shared fixtures -------------------------------------------------------------------------


@pytest.fixture
def tiny_model():
    from helpers import make_tiny_model

    return make_tiny_model()


@pytest.fixture(scope="session")
def demo_checkpoint():
    """The trained demo checkpoint (cached; trained once, ~2 min, if the cache is empty)."""
    from onerank_export.model.demo_checkpoint import ensure_demo_checkpoint

    return ensure_demo_checkpoint()


@pytest.fixture(scope="session")
def demo_model(demo_checkpoint):
    from onerank_export.model.checkpoint import load_checkpoint

    return load_checkpoint(demo_checkpoint)


@pytest.fixture(scope="session")
def demo_fp32_onnx(demo_model, tmp_path_factory):
    """The demo checkpoint exported once per test session."""
    from onerank_export.export.onnx_export import export_onnx

    path = tmp_path_factory.mktemp("onnx") / "onerank.fp32.onnx"
    export_onnx(demo_model, path)
    return path
