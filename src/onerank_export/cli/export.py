"""`export`, `verify` and `demo-checkpoint` commands."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import click
from rich.table import Table

from onerank_export.cli.common import console, resolve_checkpoint, training_progress
from onerank_export.errors import CheckFailed, OneRankError, RequestError

CHECKPOINT_HELP = "Checkpoint directory (config.json + model.safetensors). Default: the bundled demo checkpoint."
existing_dir = click.Path(exists=True, file_okay=False, path_type=Path)


@click.command()
@click.option("--checkpoint", type=existing_dir, help=CHECKPOINT_HELP)
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), default=Path("onerank.fp32.onnx"),
              show_default=True, help="ONNX file to write.")
def export(checkpoint: Path | None, out: Path) -> int:
    """Export the request-structured serving graph to ONNX with the onerank::MatchingScore op."""
    from onerank_export.export.onnx_export import export_onnx
    from onerank_export.model.checkpoint import checkpoint_digest, load_checkpoint

    ckpt, _ = resolve_checkpoint(checkpoint)
    model = load_checkpoint(ckpt)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    os.close(fd)
    try:
        result = export_onnx(model, tmp, metadata={"onerank.checkpoint_sha256": checkpoint_digest(ckpt),
                                                   "onerank.precision": "fp32"})
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    console.print(f"wrote {out} (opset {result.opset}, {result.num_nodes} nodes, "
                  f"{result.custom_nodes} onerank::MatchingScore)")
    return 0


def parse_shape(text: str) -> tuple[int, int, int]:
    try:
        b, length, n = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise RequestError(f"--shape {text!r}: expected BxLxN, e.g. 2x256x512") from None
    return b, length, n


@click.command()
@click.option("--checkpoint", type=existing_dir, help=CHECKPOINT_HELP)
@click.option("--onnx", "onnx_files", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="ONNX model(s) to check (precision read from the model). Default: export fp32 now.")
@click.option("--engine", "engines", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="TensorRT plan(s) to check (needs a GPU and TensorRT).")
@click.option("--plugin", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="libonerank_plugins.so for --engine.")
@click.option("--triton", "triton_url", help="URL of a running Triton server to check, e.g. 127.0.0.1:8000.")
@click.option("--triton-model", default=None, help="Model name on the Triton server. Default: the CPU model.")
@click.option("--protocol", type=click.Choice(["http", "grpc"]), default="http", show_default=True)
@click.option("--shape", "shapes", multiple=True, help="Extra case BxLxN (repeatable), e.g. 3x100x300.")
@click.option("--tolerances", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help='JSON {"fp16": {"atol": 0.005}, ...} overriding per-precision tolerances.')
@click.option("--reports", type=click.Path(file_okay=False, path_type=Path), default=Path("reports"),
              show_default=True, help="Directory for parity.json and junit.xml.")
@click.option("--seed", type=int, default=0, show_default=True)
def verify(checkpoint: Path | None, onnx_files: tuple[Path, ...], engines: tuple[Path, ...], plugin: Path | None,
           triton_url: str | None, triton_model: str | None, protocol: str, shapes: tuple[str, ...],
           tolerances: Path | None, reports: Path, seed: int) -> int:
    """Compare backends with the eager PyTorch model on seeded requests; exit 1 on any mismatch."""
    from onerank_export.parity.verify import VerifyTargets, run_verify

    ckpt, _ = resolve_checkpoint(checkpoint)
    targets = VerifyTargets(onnx=list(onnx_files), engines=list(engines), plugin=plugin, triton_url=triton_url,
                            triton_model=triton_model, protocol=protocol)
    report = run_verify(ckpt, targets, [parse_shape(s) for s in shapes], tolerances, reports, seed,
                        progress=lambda msg: console.print(f"  {msg}", style="dim"))
    from onerank_export.parity.report import parity_table

    console.print(parity_table(report))
    counts = report.counts()
    console.print(f"parity: {counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped; "
                  f"wrote {reports / 'parity.json'} and {reports / 'junit.xml'}")
    if not report.passed:
        raise CheckFailed(f"parity failed: {len(report.failures)} check(s) out of tolerance; "
                          f"see {reports / 'parity.json'}")
    return 0


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
