"""Run every runner on every parity case against the reference, plus invariance checks.

Invariances are properties the served model must keep whatever the backend: permuting
candidates permutes the scores; appending padded candidates or padding the history changes
no real score, and padded candidates score exactly 0. A backend can pass elementwise parity
on the seeded cases and still break these (e.g. a kernel reading past the real candidates).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from onerank_export.parity.cases import ParityCase
from onerank_export.parity.compare import OutputComparison, Tolerance, compare_outputs
from onerank_export.parity.runner import Runner, RunnerUnavailable

DEFAULT_TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(atol=1e-5),
    "fp16": Tolerance(atol=5e-3),
    "int8": Tolerance(atol=5e-2),
}


@dataclass
class CaseResult:
    runner: str
    precision: str
    case: str
    shape: dict[str, int]
    status: str  # passed | failed | skipped
    outputs: list[OutputComparison] = field(default_factory=list)
    reason: str = ""

    def to_dict(self) -> dict:
        return {"runner": self.runner, "precision": self.precision, "case": self.case, "shape": self.shape,
                "status": self.status, "reason": self.reason, "outputs": [o.to_dict() for o in self.outputs]}


@dataclass
class InvarianceResult:
    runner: str
    check: str
    status: str
    max_abs: float
    atol: float
    reason: str = ""

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class ParityReport:
    reference: str
    tolerances: dict[str, Tolerance]
    cases: list[CaseResult] = field(default_factory=list)
    invariances: list[InvarianceResult] = field(default_factory=list)

    @property
    def failures(self) -> list[CaseResult | InvarianceResult]:
        return [r for r in [*self.cases, *self.invariances] if r.status == "failed"]

    @property
    def passed(self) -> bool:
        return not self.failures

    def counts(self) -> dict[str, int]:
        rows = [*self.cases, *self.invariances]
        return {s: sum(r.status == s for r in rows) for s in ("passed", "failed", "skipped")}

    def to_dict(self) -> dict:
        return {
            "reference": self.reference,
            "passed": self.passed,
            "counts": self.counts(),
            "tolerances": {p: {"atol": t.atol, "rtol": t.rtol} for p, t in self.tolerances.items()},
            "cases": [c.to_dict() for c in self.cases],
            "invariances": [i.to_dict() for i in self.invariances],
        }

    def write_json(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, allow_nan=True) + "\n")
        return path


ProgressFn = Callable[[str], None]


def run_parity(reference: Runner, targets: Sequence[tuple[Runner, str]], cases: Sequence[ParityCase],
               tolerances: dict[str, Tolerance] | None = None, *, invariance_case: ParityCase | None = None,
               progress: ProgressFn | None = None) -> ParityReport:
    """Compare each (runner, precision) with `reference` on every case; never raises on a mismatch."""
    tolerances = {**DEFAULT_TOLERANCES, **(tolerances or {})}
    report = ParityReport(reference.name, tolerances)
    note = progress or (lambda _msg: None)
    with reference:
        expected = {c.name: reference.infer(c.feed) for c in cases}
        if invariance_case is not None:
            report.invariances += check_invariances(reference, invariance_case, tolerances["fp32"])
    for runner, precision in targets:
        tol = tolerances[precision]
        try:
            runner.activate()
        except RunnerUnavailable as exc:
            for c in cases:
                report.cases.append(CaseResult(runner.name, precision, c.name, c.shape, "skipped", reason=str(exc)))
            note(f"{runner.name}: skipped: {exc}")
            continue
        try:
            for c in cases:
                note(f"{runner.name} [{precision}] {c.name}")
                comparisons = compare_outputs(expected[c.name], runner.infer(c.feed), tol)
                status = "passed" if all(o.passed for o in comparisons) else "failed"
                report.cases.append(CaseResult(runner.name, precision, c.name, c.shape, status, comparisons))
            if invariance_case is not None:
                report.invariances += check_invariances(runner, invariance_case, tol)
        finally:
            runner.deactivate()
    return report


def check_invariances(runner: Runner, case: ParityCase, tol: Tolerance) -> list[InvarianceResult]:
    feed = case.feed
    base = runner.infer(feed)["scores"]
    results = []

    rng = np.random.default_rng(7)
    perm = rng.permutation(feed["cand_item_ids"].shape[1])
    permuted = {k: (v[:, perm] if k.startswith("cand_") else v) for k, v in feed.items()}
    results.append(_invariance(runner, "candidate-permutation", base[:, perm],
                               runner.infer(permuted)["scores"], tol))

    extra = 5
    padded = dict(feed)
    padded["cand_item_ids"] = np.pad(feed["cand_item_ids"], ((0, 0), (0, extra)))
    padded["cand_features"] = np.pad(feed["cand_features"], ((0, 0), (0, extra), (0, 0)))
    out = runner.infer(padded)["scores"]
    results.append(_invariance(runner, "candidate-padding", base, out[:, :-extra], tol,
                               extra_error=float(np.abs(out[:, -extra:]).max())))

    hist = dict(feed)
    for name in ("hist_item_ids", "hist_action_ids"):
        hist[name] = np.pad(feed[name], ((0, 0), (7, 0)))
    out = runner.infer(hist)["scores"]
    results.append(_invariance(runner, "history-padding", base, out, tol))
    return results


def _invariance(runner: Runner, check: str, expected: np.ndarray, got: np.ndarray, tol: Tolerance,
                extra_error: float = 0.0) -> InvarianceResult:
    err = float(np.abs(expected.astype(np.float64) - got).max(initial=0.0))
    if not np.isfinite(got).all():
        return InvarianceResult(runner.name, check, "failed", float("inf"), tol.atol, "non-finite scores")
    if extra_error > 0.0:
        return InvarianceResult(runner.name, check, "failed", err, tol.atol,
                                f"padded candidates scored {extra_error:.3g}, expected exactly 0")
    status = "passed" if err <= tol.atol else "failed"
    return InvarianceResult(runner.name, check, status, err, tol.atol)
