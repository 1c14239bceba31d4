"""`doctor`: check this host for the TensorRT path (driver, GPU, TensorRT, ONNX Runtime, tritonserver, plugin,
engines, their parity, the GPU tests, trtexec) and write one JSON report."""

from __future__ import annotations

from pathlib import Path

import click

from onerank_export.cli.common import console


@click.command()
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path), default=Path("doctor.json"),
              show_default=True, help="Where to write the JSON report.")
@click.option("--keep", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep the plugin and the demo build here (default: a temporary directory, removed).")
def doctor(report: Path, keep: Path | None) -> int:
    """Is this host ready for TensorRT engines and Triton? One line per check: ok, failed: <why> or
    skipped: <reason>. Exit 1 only when a check that could run here failed."""
    from onerank_export.pipeline.doctor import run_doctor

    result = run_doctor(work=keep)
    for line in result.summary():
        console.print(line, markup=False)
    path = result.write(report)
    n = result.to_dict()["counts"]  # skipped is not ok: a CPU host passes with its GPU lines skipped
    console.print(f"doctor: {n['passed']} ok, {n['failed']} failed, {n['skipped']} skipped; wrote {path}", markup=False)
    return result.exit_code
