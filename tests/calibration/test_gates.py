"""Accuracy gates as verdicts: every gate reported, NaN never passes, the one-phrase wording of a
failed gate, and the report's JSON form of gates and structure checks."""

from __future__ import annotations

import math

import pytest

from onerank_export.calibration.accuracy import apply_gates, describe_gate
from onerank_export.calibration.result import Accuracy, ScoreError, Spearman, TaskAccuracy, TopkOverlap
from onerank_export.calibration.settings import AccuracyGates, CalibrationSettings
from onerank_export.errors import ConfigError
from onerank_export.precision import Precision
from onerank_export.verdict import Verdict


def accuracy(auc_change: float | None = 0.001, overlap: float = 0.99, max_error: float = 1e-3,
             nonfinite: int = 0) -> Accuracy:
    tasks = {t: TaskAccuracy(0.8, None if auc_change is None else 0.8 + auc_change, auc_change, 0.7, 0.7, 0.0, 10)
             for t in ("click", "like")}
    return Accuracy(
        tasks=tasks,
        score_error=ScoreError({0.5: 1e-4, 0.9: 2e-4, 0.99: 5e-4, 0.999: 8e-4, 1.0: max_error}, 1e-4,
                               {"click": max_error, "like": max_error / 2}, (0.0, 1.0), (0.0, max_error)),
        topk_overlap=TopkOverlap(10, overlap, overlap, overlap, {"click": overlap, "like": overlap},
                                 ("<0.5", "1"), (0, 4)),
        spearman=Spearman(0.99, 0.95, 0), padded_candidates_nonzero=0, nonfinite_scores=nonfinite,
        fp32_onnxruntime_max_abs_error=1e-6)


def test_gates_pass_and_fail_with_their_values():
    checks = [Verdict.check("dq_reads_int8", True, "ok"), Verdict.check("weights_per_channel", False, "axis 0")]
    gates = apply_gates(Precision.FP16, accuracy(auc_change=-0.003, max_error=0.01), AccuracyGates(), checks)
    by_name = {g.name: g for g in gates}
    assert list(by_name) == ["auc_change[click]", "auc_change[like]", "top10_overlap_mean", "max_abs_error",
                             "finite_scores", "structure"]
    assert by_name["auc_change[click]"].failed and by_name["auc_change[click]"].value == pytest.approx(0.003)
    assert by_name["top10_overlap_mean"].passed and by_name["max_abs_error"].failed
    assert by_name["structure"].failed and by_name["structure"].detail == "weights_per_channel: axis 0"
    assert describe_gate(by_name["auc_change[click]"]) == "auc_change[click] 0.003 (gate <= 0.002)"
    low = apply_gates(Precision.INT8, accuracy(overlap=0.9), AccuracyGates(), [])
    overlap = next(g for g in low if g.name == "top10_overlap_mean")
    assert overlap.failed and describe_gate(overlap) == "top10_overlap_mean 0.9 (gate >= 0.95)"
    assert "max_abs_error" not in {g.name for g in low}  # the fp16 error bound is not an int8 gate
    assert next(g for g in low if g.name == "structure").detail == "0 checks passed"


def test_undefined_auc_and_nonfinite_scores_never_pass():
    gates = apply_gates(Precision.INT8, accuracy(auc_change=None, nonfinite=3),
                        AccuracyGates(max_gauc_change=0.01), [])
    auc = next(g for g in gates if g.name == "auc_change[click]")
    assert auc.failed and math.isnan(auc.value) and "one class" in auc.detail
    assert auc.to_dict() == {"name": "auc_change[click]", "passed": False, "detail": auc.detail, "value": None,
                             "limit": 0.002}  # JSON has no NaN
    assert {g.name for g in gates} >= {"gauc_change[click]", "gauc_change[like]"}
    finite = next(g for g in gates if g.name == "finite_scores")
    assert finite.failed and finite.to_dict() == {"name": "finite_scores", "passed": False, "detail": "",
                                                  "value": 3.0, "limit": 0}
    assert Verdict.check("q_scale_per_tensor", True, "ok").to_dict() == {"name": "q_scale_per_tensor",
                                                                         "passed": True, "detail": "ok"}


def test_settings_take_a_reduced_precision():
    assert CalibrationSettings("int8").precision is Precision.INT8
    assert CalibrationSettings(Precision.FP16).to_dict()["precision"] == "fp16"
    with pytest.raises(ConfigError, match="precision 'fp32' is not one of fp16, int8"):
        CalibrationSettings("fp32")
    with pytest.raises(ConfigError, match="calibration method 'max' is not one of"):
        CalibrationSettings("int8", method="max")
