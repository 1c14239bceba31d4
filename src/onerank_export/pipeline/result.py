"""What every pipeline stage returns, so `build` can print it and the manifest can record it.

Status is one of ok / failed / skipped; a skipped stage always carries its reason and is never
counted as ok. Only stages make StageResults: library code returns its own domain results.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class Status(str, enum.Enum):
    OK = "ok"
    FAILED = "failed"
    SKIPPED = "skipped"


@dataclass
class StageResult:
    name: str
    status: Status
    detail: str = ""  # one line: what was done, or why it failed / was skipped
    artifacts: dict[str, Path] = field(default_factory=dict)  # role -> file written by the stage
    metrics: dict[str, Any] = field(default_factory=dict)  # JSON-serialisable numbers for the manifest
    seconds: float = 0.0

    @classmethod
    def skipped(cls, name: str, reason: str) -> StageResult:
        return cls(name, Status.SKIPPED, reason)

    @property
    def verdict(self) -> str:
        """Console / manifest wording: 'ok', 'failed: ...', 'skipped: <reason>'."""
        if self.status is Status.OK:
            return "ok" if not self.detail else f"ok: {self.detail}"
        return f"{self.status.value}: {self.detail}"
