"""The parity suite catches wrong backends: small offsets, padding leaks, unavailable runners."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import numpy as np
from helpers import Missing, make_tiny_model

from onerank_export.parity.cases import default_cases, invariance_case
from onerank_export.parity.report import write_junit
from onerank_export.parity.runner import Runner
from onerank_export.parity.runners import EagerDenseRunner, EagerServingRunner
from onerank_export.parity.suite import run_parity
from onerank_export.verdict import Outcome, Verdict


class Tampered(Runner):
    """Wraps a correct runner and corrupts its output the way real backend bugs do."""

    def __init__(self, inner: Runner, mode: str) -> None:
        super().__init__(f"tampered-{mode}")
        self.inner, self.mode = inner, mode

    def activate_impl(self):
        self.inner.activate()

    def infer_impl(self, feed):
        scores = self.inner.infer(feed)["scores"].copy()
        if self.mode == "offset":
            scores[..., 0] += 3e-5  # just above the fp32 tolerance
        elif self.mode == "padding-leak":
            scores[feed["cand_item_ids"] == 0] = 0.5  # ignores the mask: still exact on real candidates
        return {"scores": scores}


def _run(targets):
    model = make_tiny_model(seed=2)
    cfg = model.cfg
    return run_parity(EagerDenseRunner(model), [(t(model), p) for t, p in targets], default_cases(cfg),
                      invariance_case=invariance_case(cfg, 0))


def test_correct_backend_passes_every_case_and_invariance():
    report = _run([(EagerServingRunner, "fp32")])
    assert report.passed
    assert {c.case for c in report.cases} >= {"b3-l1-n1-min", "b2-empty-history", "b3-all-padding-row"}
    assert {i.check for i in report.invariances} == {"candidate-permutation", "candidate-padding", "history-padding"}
    # One verdict type for cases and invariances; the status strings are its outcomes.
    rows = [*report.cases, *report.invariances]
    assert all(isinstance(r.verdict, Verdict) and r.status is r.verdict.outcome is Outcome.PASSED for r in rows)
    assert {c["status"] for c in report.to_dict()["cases"]} == {"passed"}


def test_an_offset_just_above_tolerance_fails_and_reports_the_needed_tolerance():
    report = _run([(lambda m: Tampered(EagerServingRunner(m), "offset"), "fp32")])
    assert not report.passed
    failed = [c for c in report.cases if c.status == "failed"]
    assert failed and all(2.9e-5 < c.outputs[0].required_atol < 3.2e-5 for c in failed)


def test_a_backend_that_scores_padded_candidates_fails_even_when_real_scores_match():
    report = _run([(lambda m: Tampered(EagerServingRunner(m), "padding-leak"), "fp32")])
    assert not report.passed
    failed_invariances = {i.check for i in report.invariances if i.status == "failed"}
    assert "candidate-padding" in failed_invariances


def test_unavailable_backend_is_skipped_with_its_reason_never_passed(tmp_path):
    report = _run([(lambda m: Missing("tensorrt"), "fp16")])
    rows = [c for c in report.cases if c.runner == "tensorrt"]
    assert rows and all(c.status == "skipped" and c.reason == "no CUDA device" for c in rows)
    assert report.counts()["passed"] == 3  # only the reference's own invariance checks
    junit = write_junit(report, tmp_path / "junit.xml").read_text()
    assert junit.count("<skipped") == len(rows)
    report.write_json(tmp_path / "parity.json")
    assert json.loads((tmp_path / "parity.json").read_text())["counts"]["skipped"] == len(rows)


def test_junit_carries_failures_with_numbers(tmp_path):
    report = _run([(lambda m: Tampered(EagerServingRunner(m), "offset"), "fp32")])
    suite = ET.parse(write_junit(report, tmp_path / "junit.xml")).getroot()
    failures = suite.findall("testcase/failure")
    assert int(suite.get("failures")) == len(failures) > 0
    mismatch = [f for f in failures if f.get("type") == "ParityMismatch"]
    assert mismatch and "needs atol>=3" in mismatch[0].get("message")
    assert not np.isnan(report.cases[0].outputs[0].max_abs)
