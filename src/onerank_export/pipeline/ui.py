"""What a build tells its caller while it runs: a module of its own with no imports, so the CLI's
console UI subclasses it without loading the pipeline at start-up."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from onerank_export.pipeline.result import StageResult
    from onerank_export.pipeline.stages.base import Stage


class BuildUI:
    """What a build tells its caller while it runs. The default says nothing (Python callers);
    the CLI's ConsoleUI prints stage lines and a progress bar while the demo checkpoint trains."""

    def stage_started(self, index: int, total: int, stage: Stage) -> None:
        pass

    def stage_finished(self, result: StageResult) -> None:
        pass

    def note(self, message: str) -> None:
        pass

    def training_step(self, step: int, total: int, loss: float) -> None:
        pass

    def training_finished(self) -> None:
        """Called once training stops, whether it finished or raised."""
