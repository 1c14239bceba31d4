"""One verdict type for every check the toolchain makes: accuracy gates, structure checks,
parity cases and invariances. Passed, failed, or skipped with the reason; never a warning."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Any


class Outcome(str, enum.Enum):
    PASSED = "passed"
    FAILED = "failed"
    SKIPPED = "skipped"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Verdict:
    """`name` says what was checked; `value` against `limit` where the check is a number."""

    name: str
    outcome: Outcome
    detail: str = ""  # one line: what was measured, why it failed, or why it was skipped
    value: float | None = None
    limit: float | None = None

    @classmethod
    def check(cls, name: str, passed: bool, detail: str = "", value: float | None = None,
              limit: float | None = None) -> Verdict:
        return cls(name, Outcome.PASSED if passed else Outcome.FAILED, detail, value, limit)

    @classmethod
    def skipped(cls, name: str, reason: str) -> Verdict:
        return cls(name, Outcome.SKIPPED, reason)

    @property
    def passed(self) -> bool:
        return self.outcome is Outcome.PASSED

    @property
    def failed(self) -> bool:
        return self.outcome is Outcome.FAILED

    def to_dict(self) -> dict[str, Any]:
        """JSON form: name, value, limit, passed, detail for a measured check, name, passed, detail for
        a structural one (the report formats users read); an undefined number (NaN) is null."""
        out: dict[str, Any] = {"name": self.name}
        if self.value is not None or self.limit is not None:
            out["value"] = None if self.value is None or not math.isfinite(self.value) else self.value
            out["limit"] = self.limit
        out["passed"] = self.passed
        out["detail"] = self.detail
        if self.outcome is Outcome.SKIPPED:
            out["skipped"] = True
        return out


def counts(verdicts: list[Verdict]) -> dict[str, int]:
    return {o.value: sum(v.outcome is o for v in verdicts) for o in Outcome}
