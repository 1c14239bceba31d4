"""`verify`: parity of ONNX models, TensorRT plans or a served model against eager PyTorch."""

from __future__ import annotations

from pathlib import Path

import click

from onerank_export.cli.common import CHECKPOINT_HELP, console, existing_dir, existing_file, resolve_checkpoint
from onerank_export.errors import CheckFailed, RequestError
from onerank_export.serving.parameters import PROTOCOLS


def parse_shape(text: str) -> tuple[int, int, int]:
    try:
        b, length, n = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise RequestError(f"--shape {text!r}: expected BxLxN, e.g. 2x256x512") from None
    return b, length, n


@click.command()
@click.option("--checkpoint", type=existing_dir, help=CHECKPOINT_HELP)
@click.option("--onnx", "onnx_files", multiple=True, type=existing_file,
              help="ONNX model(s) to check (precision read from the model). Default: export fp32 now.")
@click.option("--embeddings", "embeddings", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Split mode: the embedding store (a build's embeddings/ or the build directory) the dense "
                   "ONNX model(s) given with --onnx (one per precision) look their item rows up in.")
@click.option("--engine", "engines", multiple=True, type=existing_file,
              help="TensorRT plan(s) to check (needs a GPU and TensorRT).")
@click.option("--plugin", type=existing_file,
              help="libonerank_plugins.so for --engine.")
@click.option("--triton", "triton_url", help="URL of a running Triton server to check, e.g. 127.0.0.1:8000.")
@click.option("--triton-model", default=None, help="Model name on the Triton server. Default: the CPU model.")
@click.option("--triton-metrics", "metrics_url",
              help="The server's metrics URL (e.g. http://127.0.0.1:8002/metrics): print the user-state cache's "
                   "hits, misses, bytes, evictions and encoder time after the check.")
@click.option("--protocol", type=click.Choice(PROTOCOLS), default="http", show_default=True)
@click.option("--shape", "shapes", multiple=True, help="Extra case BxLxN (repeatable), e.g. 3x100x300.")
@click.option("--tolerances", type=existing_file,
              help='JSON {"fp16": {"atol": 0.005}, ...} overriding per-precision tolerances.')
@click.option("--reports", type=click.Path(file_okay=False, path_type=Path), default=Path("reports"),
              show_default=True, help="Directory for parity.json and junit.xml.")
@click.option("--seed", type=int, default=0, show_default=True)
def verify(checkpoint: Path | None, onnx_files: tuple[Path, ...], embeddings: Path | None, engines: tuple[Path, ...],
           plugin: Path | None,
           triton_url: str | None, triton_model: str | None, metrics_url: str | None, protocol: str,
           shapes: tuple[str, ...], tolerances: Path | None, reports: Path, seed: int) -> int:
    """Compare backends with the eager PyTorch model on seeded requests; exit 1 on any mismatch."""
    from onerank_export.parity.cases import shape_case
    from onerank_export.parity.report import parity_table
    from onerank_export.parity.targets import ParityTargets
    from onerank_export.parity.verify import cache_metrics_line, run_verify, split_dense, split_user_cache_halves
    from onerank_export.pipeline.runner import checkpoint_config

    extra_shapes = [parse_shape(s) for s in shapes]
    # A bad --shape fails here, before the demo checkpoint is trained (its config is the default one).
    cfg = checkpoint_config(checkpoint)
    for shape in extra_shapes:
        shape_case(cfg, *shape)
    ckpt = resolve_checkpoint(checkpoint)
    singles, halves = split_user_cache_halves(onnx_files)
    singles, split, split_variants = split_dense(singles, embeddings)
    targets = ParityTargets(onnx=singles, plans=list(engines), plugin=plugin, triton_url=triton_url,
                            triton_model=triton_model, protocol=protocol, user_cache=halves, split=split,
                            split_variants=split_variants)
    report = run_verify(ckpt, targets, extra_shapes, tolerances, reports, seed,
                        progress=lambda msg: console.print(f"  {msg}", style="dim"))

    console.print(parity_table(report))
    counts = report.counts()
    console.print(f"parity: {counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped; "
                  f"wrote {reports / 'parity.json'} and {reports / 'junit.xml'}")
    if metrics_url:
        console.print(cache_metrics_line(metrics_url, triton_model or "onerank"), markup=False)
    if not report.passed:
        raise CheckFailed(f"parity failed: {len(report.failures)} check(s) out of tolerance; "
                          f"see {reports / 'parity.json'}")
    return 0
