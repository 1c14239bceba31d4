"""`export`: the fp32 serving graph to ONNX with the onerank::MatchingScore op."""

from __future__ import annotations

from pathlib import Path

import click

from onerank_export.cli.common import CHECKPOINT_HELP, console, existing_dir, resolve_checkpoint


@click.command()
@click.option("--checkpoint", type=existing_dir, help=CHECKPOINT_HELP)
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), default=Path("onerank.fp32.onnx"),
              show_default=True, help="ONNX file to write.")
def export(checkpoint: Path | None, out: Path) -> int:
    """Export the request-structured serving graph to ONNX with the onerank::MatchingScore op."""
    from onerank_export.export.onnx_export import export_onnx
    from onerank_export.model.checkpoint import checkpoint_digest, load_checkpoint

    ckpt = resolve_checkpoint(checkpoint)
    model = load_checkpoint(ckpt)
    result = export_onnx(model, out, checkpoint_sha256=checkpoint_digest(ckpt))
    console.print(f"wrote {out} (opset {result.opset}, {result.num_nodes} nodes, "
                  f"{result.custom_nodes} onerank::MatchingScore)")
    return 0
