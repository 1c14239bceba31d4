"""The stage interface: a name, what it reads and fills in the BuildState, a preflight that fails
fast before any slow work, and `run`.

Error rule (applied by the runner, pipeline/runner.py):
  - `preflight` raises a OneRankError for anything it can see is wrong: the build stops before any
    stage runs and nothing is written;
  - during `run`, a OneRankError from a stage whose output the rest of the build cannot do without
    (`critical`) stops the build and leaves nothing behind; from any other stage it becomes that
    stage's FAILED verdict, the build goes on and exits 1 with every report written;
  - any other exception is a bug: it propagates with its traceback and the build leaves nothing.
"""

from __future__ import annotations

import abc
from typing import ClassVar

from onerank_export.config import OneRankConfig
from onerank_export.pipeline.options import BuildOptions
from onerank_export.pipeline.result import StageResult
from onerank_export.pipeline.state import BuildState


class Stage(abc.ABC):
    name: ClassVar[str]  # in the manifest and the StageResult
    requires: ClassVar[tuple[str, ...]] = ()  # BuildState fields read
    provides: ClassVar[tuple[str, ...]] = ()  # BuildState fields filled
    critical: ClassVar[bool] = False  # a OneRankError stops the build instead of failing the stage

    @property
    def label(self) -> str:
        """What the console shows while the stage runs."""
        return self.name

    def preflight(self, options: BuildOptions, config: OneRankConfig) -> None:  # noqa: B027 - optional hook
        """Raise a OneRankError for a problem visible before any work (no files, no model yet)."""

    @abc.abstractmethod
    def run(self, state: BuildState) -> StageResult: ...
