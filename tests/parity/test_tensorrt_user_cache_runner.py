"""The cached path on TensorRT (user encoder plan -> states -> candidate scorer plan), fenced on the CPU:
the runner is listed by the one runner factory, refuses a swapped plan pair from the plans' metadata,
is skipped with the reason where TensorRT cannot run, and, with each engine stood in for by an ONNX
Runtime session on the ONNX it was built from, scores miss then hit through CachedUserScorer and
matches eager. The engines themselves run only in tests/engine/tensorrt/test_engine_gpu.py."""

from __future__ import annotations

import json
from typing import ClassVar

import pytest

from onerank_export.engine.tensorrt.availability import tensorrt_unavailable_reason
from onerank_export.engine.tensorrt.plan_metadata import metadata_path, optimization_profile, plan_metadata
from onerank_export.errors import StageError
from onerank_export.export.ort_session import cpu_session
from onerank_export.io import sha256_file
from onerank_export.parity import tensorrt_runner
from onerank_export.parity.cases import default_cases
from onerank_export.parity.runners import EagerDenseRunner
from onerank_export.parity.suite import run_parity
from onerank_export.parity.targets import ParityTargets, build_runners
from onerank_export.parity.user_cache_runner import TensorRTUserCacheRunner
from onerank_export.precision import DEFAULT_TOLERANCES, Precision

REASON = tensorrt_unavailable_reason()


def _plan(tmp_path, cfg, role, onnx, precision="fp32"):
    """A stand-in plan file with the metadata a build writes beside it."""
    plan = tmp_path / f"onerank.{role}.{precision}.plan"
    plan.write_bytes(f"{role} engine".encode())
    meta = plan_metadata(plan=plan, precision=precision, tensorrt_version="10.8.0.43", gpu_name="g",
                         compute_capability="8.6", profile=optimization_profile(cfg, role), onnx=onnx,
                         plugin_library=None, build_seconds=1.0, role=role)
    metadata_path(plan).write_text(json.dumps(meta))
    return plan


@pytest.fixture
def plans(tiny_halves_onnx, tmp_path):
    model, encoder, scorer = tiny_halves_onnx
    return model, {_plan(tmp_path, model.cfg, "user_encoder", encoder): encoder,
                   _plan(tmp_path, model.cfg, "candidate_scorer", scorer): scorer}


def test_the_factory_lists_one_runner_per_precision(plans, tmp_path):
    model, files = plans
    enc, sc = files
    runners = build_runners(model, ParityTargets(user_cache_plans={Precision.FP16: (enc, sc)}))
    (runner, precision), = [(r, p) for r, p in runners if r.name.startswith("user-cache")]
    assert runner.name == "user-cache-tensorrt-fp16" and precision is Precision.FP16
    assert isinstance(runner, TensorRTUserCacheRunner) and (runner.encoder_path, runner.scorer_path) == (enc, sc)
    assert not ParityTargets(user_cache_plans={Precision.FP32: (enc, sc)}).empty


def test_a_swapped_pair_is_refused_in_one_line_before_anything_loads(plans):
    model, files = plans
    enc, sc = files
    runner = TensorRTUserCacheRunner(sc, enc, model.cfg)
    with pytest.raises(StageError) as err:
        runner.activate()
    assert str(err.value) == ("onerank.candidate_scorer.fp32.plan is a candidate_scorer engine (its .json says so), "
                              "not the user_encoder; pass the user encoder plan first, then the candidate scorer plan")


@pytest.mark.skipif(REASON is None, reason="TensorRT and CUDA are available here")
def test_without_tensorrt_the_rows_are_skipped_with_the_reason(plans):
    model, files = plans
    runner = TensorRTUserCacheRunner(*files, model.cfg, name="user-cache-tensorrt-fp32")
    report = run_parity(EagerDenseRunner(model), [(runner, "fp32")], default_cases(model.cfg, 0)[:2])
    assert report.counts()["passed"] == 0 and report.counts()["skipped"] >= 2
    assert {c.reason for c in report.cases} == {REASON}


class OrtEngine:
    """An engine stood in for by an ONNX Runtime session on its ONNX: EngineSession's interface."""

    opened: ClassVar[list] = []
    onnx_of: ClassVar[dict] = {}

    def __init__(self, plan, plugin_library=None):
        self.plan, self.plugin_library, self.calls = plan, plugin_library, 0

    def open(self):
        self.session = cpu_session(str(self.onnx_of[self.plan]), 1)
        self.outputs = [o.name for o in self.session.get_outputs()]
        OrtEngine.opened.append(self)

    def run(self, output_names, feed):
        self.calls += 1
        return self.session.run(output_names or self.outputs, dict(feed))

    def close(self):
        self.session = None


def test_miss_then_hit_through_cached_user_scorer_matches_eager(plans, monkeypatch):
    model, files = plans
    enc, sc = files
    OrtEngine.onnx_of, OrtEngine.opened = files, []
    monkeypatch.setattr(tensorrt_runner, "EngineSession", OrtEngine)
    runner = TensorRTUserCacheRunner(enc, sc, model.cfg, plugin_library=sc.parent / "lib.so",
                                     name="user-cache-tensorrt-fp32")
    cases = default_cases(model.cfg, 0)
    report = run_parity(EagerDenseRunner(model), [(runner, "fp32")], cases, DEFAULT_TOLERANCES)
    assert report.passed and report.counts()["passed"] == len(cases), report.failures[:1]
    encoder, scorer = OrtEngine.opened
    assert (encoder.plan, encoder.plugin_library) == (enc, None)  # the encoder never loads the plugin
    assert (scorer.plan, scorer.plugin_library) == (sc, sc.parent / "lib.so")
    # each case: a miss (encoder + scorer) then a hit (scorer only); distinct histories, one encoder run each
    assert encoder.calls == len(cases) and scorer.calls == 2 * len(cases)
    with TensorRTUserCacheRunner(enc, sc, model.cfg) as again:  # a rebuilt encoder plan is a new identity
        assert again.scorer.identity == f"onerank/tensorrt/fp32/{sha256_file(enc)}"
