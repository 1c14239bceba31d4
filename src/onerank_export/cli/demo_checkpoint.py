"""`demo-checkpoint`: train the default config on synthetic requests and write a checkpoint."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from onerank_export.cli.common import console, training_progress
from onerank_export.errors import OneRankError


@click.command("demo-checkpoint")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Directory to write config.json, model.safetensors and metrics.json into.")
@click.option("--steps", type=click.IntRange(1), default=None, help="Training steps (default: the demo recipe).")
@click.option("--seed", type=int, default=0, show_default=True)
def demo_checkpoint(out: Path, steps: int | None, seed: int) -> int:
    """Train the default config on synthetic requests (CPU, ~2 min) and write a checkpoint."""
    import dataclasses

    from onerank_export.model.demo_checkpoint import DEMO_RECIPE, write_demo_checkpoint

    if out.exists() and any(out.iterdir()):
        raise OneRankError(f"{out}: directory exists and is not empty; choose a new --out")
    recipe = dataclasses.replace(DEMO_RECIPE, seed=seed, steps=steps or DEMO_RECIPE.steps)
    with training_progress() as progress:
        task = progress.add_task("train", total=recipe.steps, loss=float("nan"))
        record = write_demo_checkpoint(out, lambda s, t, loss: progress.update(task, completed=s, loss=loss), recipe)
    table = Table(title=f"held-out metrics ({recipe.eval_requests} requests)")
    for col in ("task", "AUC", "GAUC", "positives"):
        table.add_column(col, justify="left" if col == "task" else "right")
    for task_name, m in record["held_out"].items():
        table.add_row(task_name, f"{m['auc']:.4f}", f"{m['gauc']:.4f}", str(m["positives"]))
    console.print(table)
    console.print(f"wrote {out}/config.json, model.safetensors, metrics.json")
    return 0
