"""`export`: the fp32 serving graph to ONNX with the onerank::MatchingScore op (or, with --graph,
one of its two halves for the user-state cache)."""

from __future__ import annotations

from pathlib import Path

import click

from onerank_export.cli.common import CHECKPOINT_HELP, console, existing_dir, resolve_checkpoint

GRAPHS = ("serving", "user_encoder", "candidate_scorer")


@click.command()
@click.option("--checkpoint", type=existing_dir, help=CHECKPOINT_HELP)
@click.option("--graph", type=click.Choice(GRAPHS), default="serving", show_default=True,
              help="serving: the single graph; user_encoder / candidate_scorer: the halves the user-state cache "
                   "serves (history -> user states; states + context + candidates -> scores).")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path),
              help="ONNX file to write. Default: onerank.fp32.onnx, or onerank.<graph>.fp32.onnx for a half.")
def export(checkpoint: Path | None, graph: str, out: Path | None) -> int:
    """Export the request-structured serving graph (or one half of it) to ONNX."""
    from onerank_export.export.onnx_config import (
        CANDIDATE_SCORER_ONNX_CONFIG,
        ONERANK_ONNX_CONFIG,
        USER_ENCODER_ONNX_CONFIG,
    )
    from onerank_export.export.onnx_export import export_onnx
    from onerank_export.model.checkpoint import checkpoint_digest, load_checkpoint

    configs = {"serving": ONERANK_ONNX_CONFIG, "user_encoder": USER_ENCODER_ONNX_CONFIG,
               "candidate_scorer": CANDIDATE_SCORER_ONNX_CONFIG}
    out = out or Path("onerank.fp32.onnx" if graph == "serving" else f"onerank.{graph}.fp32.onnx")
    ckpt = resolve_checkpoint(checkpoint)
    model = load_checkpoint(ckpt)
    result = export_onnx(model, out, checkpoint_sha256=checkpoint_digest(ckpt), export_config=configs[graph])
    console.print(f"wrote {out} ({graph} graph, opset {result.opset}, {result.num_nodes} nodes, "
                  f"{result.custom_nodes} onerank::MatchingScore)")
    return 0
