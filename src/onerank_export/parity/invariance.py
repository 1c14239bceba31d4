"""Invariance checks: properties the served model must keep whatever the backend.

Permuting candidates permutes the scores; appending padded candidates or padding the history
changes no real score, and padded candidates score exactly 0. A backend can pass elementwise
parity on the seeded cases and still break these (e.g. a kernel reading past the real candidates).

Split like the rest of the suite: `InvarianceSetup.feeds` gives the requests a run infers, and
`check_invariances` judges the outputs a run kept, so a kept run can be rejudged without a runner.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from onerank_export.parity.cases import ParityCase
from onerank_export.precision import Tolerance
from onerank_export.verdict import Outcome, Verdict

BASE = "base"
PERMUTATION = "candidate-permutation"
CANDIDATE_PADDING = "candidate-padding"
HISTORY_PADDING = "history-padding"
CHECKS = (PERMUTATION, CANDIDATE_PADDING, HISTORY_PADDING)


@dataclass(frozen=True)
class InvarianceSetup:
    """How the invariance requests derive from the invariance case; what judging the outputs needs."""

    permutation: tuple[int, ...]  # of the candidate axis
    extra_candidates: int = 5
    extra_history: int = 7

    @classmethod
    def for_case(cls, case: ParityCase) -> InvarianceSetup:
        # A fixed seed: the same case gives the same permuted request on every backend and every run.
        perm = np.random.default_rng(7).permutation(case.feed["cand_item_ids"].shape[1])
        return cls(tuple(int(i) for i in perm))

    def feeds(self, case: ParityCase) -> dict[str, dict[str, np.ndarray]]:
        """{BASE and each check: the request to infer}, in inference order."""
        feed = case.feed
        perm = np.asarray(self.permutation)
        permuted = {k: (v[:, perm] if k.startswith("cand_") else v) for k, v in feed.items()}
        padded = dict(feed)
        padded["cand_item_ids"] = np.pad(feed["cand_item_ids"], ((0, 0), (0, self.extra_candidates)))
        padded["cand_features"] = np.pad(feed["cand_features"], ((0, 0), (0, self.extra_candidates), (0, 0)))
        hist = dict(feed)
        for name in ("hist_item_ids", "hist_action_ids"):
            hist[name] = np.pad(feed[name], ((0, 0), (self.extra_history, 0)))
        return {BASE: feed, PERMUTATION: permuted, CANDIDATE_PADDING: padded, HISTORY_PADDING: hist}

    def to_dict(self) -> dict[str, Any]:
        return {"permutation": list(self.permutation), "extra_candidates": self.extra_candidates,
                "extra_history": self.extra_history}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InvarianceSetup:
        return cls(tuple(int(i) for i in data["permutation"]), int(data["extra_candidates"]),
                   int(data["extra_history"]))


@dataclass(frozen=True)
class InvarianceResult:
    runner: str
    verdict: Verdict  # name: the check; value: max abs error; limit: the atol

    @property
    def check(self) -> str:
        return self.verdict.name

    @property
    def status(self) -> Outcome:
        return self.verdict.outcome

    @property
    def max_abs(self) -> float:
        return float("nan") if self.verdict.value is None else self.verdict.value

    @property
    def atol(self) -> float:
        return float("nan") if self.verdict.limit is None else self.verdict.limit

    @property
    def reason(self) -> str:
        return self.verdict.detail

    def to_dict(self) -> dict[str, Any]:
        return {"runner": self.runner, "check": self.check, "status": self.status.value, "max_abs": self.max_abs,
                "atol": self.atol, "reason": self.reason}


def check_invariances(runner: str, outputs: Mapping[str, Mapping[str, np.ndarray]], setup: InvarianceSetup,
                      tol: Tolerance) -> list[InvarianceResult]:
    """Judge one runner's outputs for `setup.feeds(...)` (keyed like them)."""
    base = outputs[BASE]["scores"]
    extra = setup.extra_candidates
    padded = outputs[CANDIDATE_PADDING]["scores"]
    return [
        _invariance(runner, PERMUTATION, base[:, list(setup.permutation)], outputs[PERMUTATION]["scores"], tol),
        _invariance(runner, CANDIDATE_PADDING, base, padded[:, :-extra], tol,
                    extra_error=float(np.abs(padded[:, -extra:]).max())),
        _invariance(runner, HISTORY_PADDING, base, outputs[HISTORY_PADDING]["scores"], tol),
    ]


def _invariance(runner: str, check: str, expected: np.ndarray, got: np.ndarray, tol: Tolerance,
                extra_error: float = 0.0) -> InvarianceResult:
    err = float(np.abs(expected.astype(np.float64) - got).max(initial=0.0))
    if not np.isfinite(got).all():
        return InvarianceResult(runner, Verdict(check, Outcome.FAILED, "non-finite scores", float("inf"), tol.atol))
    if extra_error != 0.0:  # NaN included: a padded candidate must score exactly 0
        return InvarianceResult(runner, Verdict(check, Outcome.FAILED,
                                                f"padded candidates scored {extra_error:.3g}, expected exactly 0",
                                                err, tol.atol))
    return InvarianceResult(runner, Verdict.check(check, err <= tol.atol, "", err, tol.atol))
