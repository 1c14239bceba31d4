"""Console helpers shared by the CLI commands: consoles, stage lines, checkpoint resolution."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from onerank_export.pipeline.result import StageResult, Status

# Logs and pipes (CI) get 160 columns instead of rich's 80, so report tables stay readable.
_PIPE_WIDTH = None if sys.stdout.isatty() else 160
console = Console(highlight=False, soft_wrap=True, width=_PIPE_WIDTH)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

CHECKPOINT_HELP = "Checkpoint directory (config.json + model.safetensors). Default: the bundled demo checkpoint."
existing_dir = click.Path(exists=True, file_okay=False, path_type=Path)

_STYLE = {Status.OK: "green", Status.FAILED: "bold red", Status.SKIPPED: "yellow"}


def print_stage(result: StageResult) -> None:
    style = _STYLE[result.status]
    console.print(f"  [{style}]{result.verdict}[/]  ({result.seconds:.1f} s)", soft_wrap=True)


def training_progress() -> Progress:
    return Progress(TextColumn("  training demo checkpoint"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TextColumn("loss {task.fields[loss]:.3f}"), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=err_console, transient=True)


def resolve_checkpoint(checkpoint: Path | None) -> tuple[Path, str]:
    """(checkpoint dir, source) — the user's, or the cached demo checkpoint (trained on first use)."""
    if checkpoint is not None:
        return checkpoint, "user"
    from onerank_export.model.demo_checkpoint import demo_checkpoint_dir, ensure_demo_checkpoint, is_complete

    if not is_complete(demo_checkpoint_dir()):
        console.print("demo checkpoint not cached yet: training it once (about 2 minutes on 2 cores)")
        with training_progress() as progress:
            task = progress.add_task("train", total=None, loss=float("nan"))

            def update(step: int, total: int, loss: float) -> None:
                progress.update(task, completed=step, total=total, loss=loss)

            return ensure_demo_checkpoint(update), "demo"
    return ensure_demo_checkpoint(), "demo"
