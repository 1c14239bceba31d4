"""On a GPU host with TensorRT: build the plugin, build each precision's engine from the demo
checkpoint's ONNX, run it through the TensorRT runner and compare with eager through the parity
suite. Everywhere else the `gpu` marker skips these with the reason (tests/conftest.py).

Nothing here has run yet: this machine has no GPU (docs/engine.md says what is fenced on the CPU).
"""

from __future__ import annotations

import json

import pytest

from onerank_export.engine.tensorrt.builder import build_engine
from onerank_export.engine.tensorrt.plan_metadata import optimization_profile, read_plan_metadata
from onerank_export.errors import RequestError
from onerank_export.io import sha256_file
from onerank_export.parity.cases import default_cases, invariance_case, shape_case
from onerank_export.parity.runners import EagerDenseRunner
from onerank_export.parity.suite import run_parity
from onerank_export.parity.tensorrt_runner import TensorRTRunner
from onerank_export.pipeline.stages.engine import EngineStage
from onerank_export.precision import DEFAULT_TOLERANCES, Precision

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="session")
def plugin_library(tmp_path_factory):
    from onerank_export.engine.plugin.build import build_plugin_library

    return build_plugin_library(tmp_path_factory.mktemp("plugins"), progress=print)


@pytest.fixture(scope="session")
def timing_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("timing") / "timing.cache"


@pytest.fixture(scope="session")
def precision_onnx(demo_fp32_onnx, calibrated):
    """precision -> ONNX: fp32 from the export, fp16 / int8 from the shared calibration (minmax)."""

    def get(precision: str):
        if Precision(precision) is Precision.FP32:
            return demo_fp32_onnx
        outcome = calibrated(precision, method="minmax")
        # A failed gate writes no model; these tests need one, so that is a failure here, never a skip.
        assert outcome.model_path is not None and outcome.model_path.is_file(), outcome.summary
        return outcome.model_path

    return get


@pytest.fixture(scope="session")
def engines(precision_onnx, plugin_library, demo_model, timing_cache, tmp_path_factory):
    built = {}

    def get(precision: str):
        if precision not in built:
            plan = tmp_path_factory.mktemp(f"engine-{precision}") / f"onerank.{precision}.plan"
            built[precision] = build_engine(precision_onnx(precision), plan, demo_model.cfg, precision,
                                            plugin_library=plugin_library, timing_cache=timing_cache, progress=print)
        return built[precision]

    return get


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_engine_matches_eager_through_the_parity_suite(precision, engines, plugin_library, demo_model):
    cfg = demo_model.cfg
    build = engines(precision)
    max_batch = shape_case(cfg, cfg.serving.max_batch_size, 64, 96, seed=1, name="max-batch")
    cases = [*default_cases(cfg, seed=0), max_batch]
    runner = TensorRTRunner(build.plan, plugin_library=plugin_library)
    report = run_parity(EagerDenseRunner(demo_model), [(runner, precision)], cases, DEFAULT_TOLERANCES,
                        invariance_case=invariance_case(cfg, 0))
    counts = report.counts()
    worst = max((o.max_abs for c in report.cases for o in c.outputs), default=float("nan"))
    assert counts["skipped"] == 0, [c.reason for c in report.cases if c.status == "skipped"][:1]
    assert report.passed, (f"{counts['failed']} failed, worst max_abs {worst:.3g} vs atol "
                           f"{DEFAULT_TOLERANCES[precision].atol}: {json.dumps(report.to_dict()['cases'][:1])}")
    assert len(report.cases) == len(cases) and len(report.invariances) == 3


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_plan_metadata_describes_the_build(precision, engines, precision_onnx, plugin_library, demo_model):
    import tensorrt as trt

    build = engines(precision)
    meta = read_plan_metadata(build.metadata)
    assert meta["precision"] == precision and meta["tensorrt_version"] == trt.__version__
    assert meta["plan_sha256"] == sha256_file(build.plan)
    assert meta["onnx"]["sha256"] == sha256_file(precision_onnx(precision))
    assert meta["plugin_library"]["sha256"] == sha256_file(plugin_library)
    assert meta["gpu"]["name"] and meta["gpu"]["compute_capability"].replace(".", "").isdigit()
    assert meta["profile"] == json.loads(json.dumps({n: {"min": list(a), "opt": list(b), "max": list(c)} for n, (
        a, b, c) in optimization_profile(demo_model.cfg).items()}))
    assert meta["plugin_layers"] >= 1 and meta["build_seconds"] > 0


def test_timing_cache_is_reused_by_the_next_build(engines, precision_onnx, plugin_library, demo_model,
                                                  timing_cache, tmp_path):
    engines("fp32")
    assert timing_cache.is_file() and timing_cache.stat().st_size > 0
    again = build_engine(precision_onnx("fp32"), tmp_path / "onerank.fp32.plan", demo_model.cfg, "fp32",
                         plugin_library=plugin_library, timing_cache=timing_cache)
    assert again.timing_cache_reused
    assert read_plan_metadata(again.metadata)["timing_cache"]["reused"] is True


def test_runner_rejects_shapes_outside_the_profile(engines, plugin_library, demo_model):
    cfg = demo_model.cfg
    too_big = shape_case(cfg, cfg.serving.max_batch_size + 1, 8, 8)  # shape_case bounds L and N, not B
    runner = TensorRTRunner(engines("fp32").plan, plugin_library=plugin_library)
    with runner, pytest.raises(RequestError, match="outside the engine's profile"):
        runner.infer(too_big.feed)


def test_engine_stage_require_lists_the_files_it_built(demo_fp32_onnx, plugin_library, demo_model, tmp_path):
    result = EngineStage("require", plugin_library).build({Precision.FP32: demo_fp32_onnx}, tmp_path, demo_model.cfg)
    assert result.status.value == "ok", result.verdict
    assert set(result.artifacts) == {"plugin_library", "engine_fp32", "plan_meta_fp32"}
    assert all(p.is_file() and tmp_path in p.parents for p in result.artifacts.values())
    assert result.artifacts["engine_fp32"] == tmp_path / "engines" / "onerank.fp32.plan"


# ----- the user-state cache's halves (issue 14): encoder plan -> states -> scorer plan ----------------


@pytest.fixture(scope="session")
def demo_halves(demo_model, tmp_path_factory):
    """The demo model's fp32 user encoder and candidate scorer ONNX (the fp16 / int8 halves come from the
    user-cache precision stage of `build`; the stage test below builds what a build hands it)."""
    from onerank_export.export.onnx_config import CANDIDATE_SCORER_ONNX_CONFIG, USER_ENCODER_ONNX_CONFIG
    from onerank_export.export.onnx_export import export_onnx

    out = tmp_path_factory.mktemp("demo-halves")
    paths = (out / "onerank.user_encoder.fp32.onnx", out / "onerank.candidate_scorer.fp32.onnx")
    for path, config in zip(paths, (USER_ENCODER_ONNX_CONFIG, CANDIDATE_SCORER_ONNX_CONFIG), strict=True):
        export_onnx(demo_model, path, export_config=config)
    return paths


def test_halves_engines_build_and_score_like_eager_miss_then_hit(demo_halves, demo_fp32_onnx, plugin_library,
                                                                demo_model, tmp_path):
    from onerank_export.engine.tensorrt.plan_metadata import plan_role
    from onerank_export.parity.user_cache_runner import TensorRTUserCacheRunner

    result = EngineStage("require", plugin_library).build({Precision.FP32: demo_fp32_onnx}, tmp_path,
                                                          demo_model.cfg, halves={Precision.FP32: demo_halves})
    assert result.status.value == "ok", result.verdict
    encoder, scorer = (result.artifacts[f"engine_{r}_fp32"] for r in ("user_encoder", "candidate_scorer"))
    encoder_meta = read_plan_metadata(result.artifacts["plan_meta_user_encoder_fp32"])
    scorer_meta = read_plan_metadata(result.artifacts["plan_meta_candidate_scorer_fp32"])
    assert plan_role(encoder_meta) == "user_encoder" and encoder_meta["plugin_library"] is None
    assert encoder_meta["plugin_layers"] == 0 and scorer_meta["plugin_layers"] == 1
    assert plan_role(scorer_meta) == "candidate_scorer"
    cfg = demo_model.cfg
    cases = [*default_cases(cfg, seed=0), shape_case(cfg, cfg.serving.max_batch_size, 64, 96, seed=1, name="max")]
    runner = TensorRTUserCacheRunner(encoder, scorer, cfg, plugin_library=plugin_library)
    report = run_parity(EagerDenseRunner(demo_model), [(runner, "fp32")], cases, DEFAULT_TOLERANCES)
    counts = report.counts()
    assert counts["skipped"] == 0 and report.passed, json.dumps(report.to_dict()["cases"][:1])


def test_a_scorer_state_outside_the_profile_is_refused(demo_halves, plugin_library, demo_model, tmp_path):
    from onerank_export.parity.tensorrt_runner import EngineSession
    from onerank_export.user_states import state_specs

    cfg = demo_model.cfg
    plan = tmp_path / "onerank.candidate_scorer.fp32.plan"
    build_engine(demo_halves[1], plan, cfg, "fp32", plugin_library=plugin_library, role="candidate_scorer")
    session = EngineSession(plan, plugin_library)
    session.open()
    import numpy as np

    too_long = {s.name: np.zeros(s.shape(cfg, 1, cfg.max_hist_len + 1), np.float32) for s in state_specs(cfg)}
    with pytest.raises(RequestError, match="outside the engine's profile"):
        session.infer(too_long)
    session.close()


# ----- split mode (issue 13): the store's lookup feeding the dense graph's plan ---------------------


def test_split_dense_engine_builds_and_scores_looked_up_rows_like_eager(demo_model, demo_checkpoint, plugin_library,
                                                                        tmp_path):
    from onerank_export.embeddings.store import write_store
    from onerank_export.engine.tensorrt.plan_metadata import plan_role
    from onerank_export.export.onnx_config import SPLIT_DENSE_ONNX_CONFIG
    from onerank_export.export.onnx_export import export_onnx
    from onerank_export.parity.targets import ParityTargets, build_runners

    dense = tmp_path / "onnx" / "onerank.dense.fp32.onnx"
    export_onnx(demo_model, dense, export_config=SPLIT_DENSE_ONNX_CONFIG)
    store = tmp_path / "embeddings"
    write_store(demo_checkpoint, store, "fp32")
    result = EngineStage("require", plugin_library).build({}, tmp_path, demo_model.cfg,
                                                          dense={Precision.FP32: dense})
    assert result.status.value == "ok", result.verdict
    meta = read_plan_metadata(result.artifacts["plan_meta_dense_fp32"])
    assert plan_role(meta) == "dense" and meta["plugin_layers"] == 1
    assert meta["io_dtypes"]["hist_item_rows"] == "float32"
    cfg = demo_model.cfg
    targets = ParityTargets(split=(dense, store), split_plans={Precision.FP32: result.artifacts["engine_dense_fp32"]},
                            plugin=plugin_library)
    runners = [(r, p) for r, p in build_runners(demo_model, targets) if r.name == "split-tensorrt-fp32"]
    cases = [*default_cases(cfg, seed=0), shape_case(cfg, cfg.serving.max_batch_size, 64, 96, seed=1, name="max")]
    report = run_parity(EagerDenseRunner(demo_model), runners, cases, DEFAULT_TOLERANCES)
    assert report.counts()["skipped"] == 0 and report.passed, json.dumps(report.to_dict()["cases"][:1])
