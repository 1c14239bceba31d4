"""The compare half of the parity suite, and the report it makes.

`compare_runs` judges kept outputs (`results.RunResults`) against the reference's, per case and
precision tolerance, plus the invariance checks (`invariance.py`); it never raises on a mismatch
and never downgrades one. `run_parity` is run + compare in one call.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onerank_export.export.onnx_config import ONERANK_ONNX_CONFIG
from onerank_export.io import write_json
from onerank_export.parity.cases import ParityCase
from onerank_export.parity.compare import OutputComparison, compare_outputs
from onerank_export.parity.invariance import InvarianceResult, check_invariances
from onerank_export.parity.results import RunResults
from onerank_export.parity.run import ProgressFn, run_runners
from onerank_export.parity.runner import Runner
from onerank_export.precision import Precision, Tolerance
from onerank_export.verdict import Outcome, Verdict, counts

Tolerances = Mapping[Precision | str, Tolerance]


@dataclass(frozen=True)
class CaseResult:
    runner: str
    precision: Precision
    case: str
    shape: dict[str, int]
    verdict: Verdict  # value: the smallest atol that would have passed; limit: the atol; detail: why skipped
    outputs: list[OutputComparison] = field(default_factory=list)
    provider: str | None = None  # the execution provider that ran, for ONNX Runtime runners

    @property
    def status(self) -> Outcome:
        return self.verdict.outcome

    @property
    def reason(self) -> str:
        return self.verdict.detail

    def to_dict(self) -> dict[str, Any]:
        return {"runner": self.runner, "precision": Precision(self.precision).value, "case": self.case,
                "shape": self.shape, "status": self.status.value, "reason": self.reason,
                "provider": self.provider, "outputs": [o.to_dict() for o in self.outputs]}


@dataclass
class ParityReport:
    reference: str
    tolerances: dict[Precision, Tolerance]
    cases: list[CaseResult] = field(default_factory=list)
    invariances: list[InvarianceResult] = field(default_factory=list)
    run_results: RunResults | None = None  # the outputs judged here, to recompare (never serialised)

    @property
    def verdicts(self) -> list[Verdict]:
        return [r.verdict for r in [*self.cases, *self.invariances]]

    @property
    def failures(self) -> list[CaseResult | InvarianceResult]:
        return [r for r in [*self.cases, *self.invariances] if r.status is Outcome.FAILED]

    @property
    def passed(self) -> bool:
        return not self.failures

    def counts(self) -> dict[str, int]:
        return counts(self.verdicts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "passed": self.passed,
            "counts": self.counts(),
            "tolerances": {Precision(p).value: t.to_dict() for p, t in self.tolerances.items()},
            "cases": [c.to_dict() for c in self.cases],
            "invariances": [i.to_dict() for i in self.invariances],
        }

    def write_json(self, path: Path) -> Path:
        return write_json(path, self.to_dict(), allow_nan=True)


def merged_tolerances(tolerances: Tolerances | None = None) -> dict[Precision, Tolerance]:
    """The defaults, overridden per precision by `tolerances`."""
    return {**ONERANK_ONNX_CONFIG.tolerances, **{Precision(p): t for p, t in (tolerances or {}).items()}}


def compare_runs(results: RunResults, tolerances: Tolerances | None = None) -> ParityReport:
    """Judge every target's outputs against the reference's; no runner is needed."""
    tols = merged_tolerances(tolerances)
    report = ParityReport(results.reference.name, tols, run_results=results)
    ref = results.reference
    if results.invariance is not None:
        report.invariances += check_invariances(ref.name, ref.invariance, results.invariance, tols[Precision.FP32])
    for run in results.targets:
        tol = tols[run.precision]
        for case, shape in results.cases.items():
            name = f"{run.precision}:{case}"
            if run.skipped:
                report.cases.append(CaseResult(run.name, run.precision, case, shape,
                                               Verdict.skipped(name, run.skip_reason)))
                continue
            comparisons = compare_outputs(ref.cases[case], run.cases[case], tol)
            needed = max((o.required_atol for o in comparisons), default=0.0)
            verdict = Verdict.check(name, all(o.passed for o in comparisons), value=needed, limit=tol.atol)
            report.cases.append(CaseResult(run.name, run.precision, case, shape, verdict, comparisons,
                                           run.provider))
        if results.invariance is not None and not run.skipped:
            report.invariances += check_invariances(run.name, run.invariance, results.invariance, tol)
    return report


def run_parity(reference: Runner, targets: Sequence[tuple[Runner, Precision | str]], cases: Sequence[ParityCase],
               tolerances: Tolerances | None = None, *, invariance_case: ParityCase | None = None,
               progress: ProgressFn | None = None) -> ParityReport:
    """Compare each (runner, precision) with `reference` on every case; never raises on a mismatch.

    The report keeps the raw outputs (`report.run_results`) for `compare_runs` with other tolerances."""
    results = run_runners(reference, targets, cases, invariance_case=invariance_case, progress=progress)
    return compare_runs(results, tolerances)
