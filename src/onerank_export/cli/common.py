"""Console helpers shared by the CLI commands: consoles, stage lines, checkpoint resolution."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from onerank_export.pipeline.result import StageResult, Status
from onerank_export.pipeline.ui import BuildUI

if TYPE_CHECKING:
    from onerank_export.pipeline.stages.base import Stage

# Logs and pipes (CI) get 160 columns instead of rich's 80, so report tables stay readable.
_PIPE_WIDTH = None if sys.stdout.isatty() else 160
console = Console(highlight=False, soft_wrap=True, width=_PIPE_WIDTH)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

CHECKPOINT_HELP = "Checkpoint directory (config.json + model.safetensors). Default: the bundled demo checkpoint."
existing_dir = click.Path(exists=True, file_okay=False, path_type=Path)
existing_file = click.Path(exists=True, dir_okay=False, path_type=Path)

_STYLE = {Status.OK: "green", Status.FAILED: "bold red", Status.SKIPPED: "yellow"}


def print_stage(result: StageResult) -> None:
    style = _STYLE[result.status]
    console.print(f"  [{style}]{result.verdict}[/]  ({result.seconds:.1f} s)", soft_wrap=True)


def training_progress() -> Progress:
    return Progress(TextColumn("  training demo checkpoint"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TextColumn("loss {task.fields[loss]:.3f}"), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=err_console, transient=True)


class ConsoleUI(BuildUI):
    """Stage lines on stdout; the one-time demo training as a progress bar on stderr."""

    def __init__(self) -> None:
        self._progress = None
        self._task = None

    def stage_started(self, index: int, total: int, stage: Stage) -> None:
        console.print(f"[bold][{index}/{total}] {stage.label}[/]")

    def stage_finished(self, result: StageResult) -> None:
        print_stage(result)

    def note(self, message: str) -> None:
        console.print(message, markup=False)

    def training_step(self, step: int, total: int, loss: float) -> None:
        if self._progress is None:
            self._progress = training_progress()
            self._progress.start()
            self._task = self._progress.add_task("train", total=total, loss=float("nan"))
        self._progress.update(self._task, completed=step, total=total, loss=loss)

    def training_finished(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def resolve_checkpoint(checkpoint: Path | None) -> Path:
    """The user's checkpoint, or the cached demo checkpoint (trained on first use, with a progress
    bar), the same way `build` resolves it."""
    from onerank_export.pipeline.runner import resolve_checkpoint as resolve

    return resolve(checkpoint, ConsoleUI())
