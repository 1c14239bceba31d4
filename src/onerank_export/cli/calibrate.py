"""`calibrate`: an INT8 (explicit Q/DQ) or FP16 ONNX from the fp32 export, judged against fp32
eager on held-out requests; exit 1 after writing the report when a gate fails."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.markup import escape
from rich.table import Table

from onerank_export.calibration.settings import METHODS, AccuracyGates, CalibrationSettings
from onerank_export.cli.common import CHECKPOINT_HELP, console, existing_dir, existing_file, resolve_checkpoint
from onerank_export.errors import CheckFailed, ConfigError
from onerank_export.precision import REDUCED, Precision

if TYPE_CHECKING:
    from onerank_export.calibration.result import CalibrationEntry

DEFAULTS = CalibrationSettings("int8")
GATES = AccuracyGates()


@click.command()
@click.option("--checkpoint", type=existing_dir, help=CHECKPOINT_HELP)
@click.option("--onnx", "onnx_path", type=existing_file,
              help="The fp32 ONNX exported from --checkpoint. Default: export it now.")
@click.option("--precision", type=click.Choice([p.value for p in REDUCED]), required=True,
              help="Variant to produce.")
@click.option("--method", type=click.Choice(METHODS), default=DEFAULTS.method, show_default=True,
              help="INT8 activation calibration (ignored for fp16).")
@click.option("--data", type=existing_file,
              help="Requests (.npz or .parquet, serving-contract names, 'labels' for evaluation). "
                   "Default: the demo generator.")
@click.option("--eval-data", type=existing_file,
              help="Held-out labelled requests. Default: a disjoint split of --data.")
@click.option("--num-requests", type=click.IntRange(1), default=DEFAULTS.num_requests, show_default=True,
              help="Calibration requests (seeded sample).")
@click.option("--eval-requests", type=click.IntRange(1), default=DEFAULTS.eval_requests, show_default=True,
              help="Held-out requests for the accuracy report (at most).")
@click.option("--keep-float", multiple=True, metavar="SELECTOR",
              help="Node name, glob ('layers.1.*') or op type to keep in float (repeatable).")
@click.option("--force-low-precision", multiple=True, metavar="SELECTOR",
              help="Node name, glob or op type to take out of the default keep-float rules (repeatable).")
@click.option("--fp16-data-max", type=float, default=DEFAULTS.fp16_data_max, show_default=True,
              help="FP16: nodes whose activations exceed this on calibration data stay fp32.")
@click.option("--max-auc-change", type=float, default=GATES.max_auc_change, show_default=True,
              help="Gate: |AUC change| per task.")
@click.option("--max-gauc-change", type=float, default=None, help="Gate: |GAUC change| per task (off by default).")
@click.option("--topk", type=click.IntRange(1), default=GATES.topk, show_default=True)
@click.option("--min-topk-overlap", type=float, default=GATES.min_topk_overlap, show_default=True,
              help="Gate: mean per-request top-k overlap.")
@click.option("--max-fp16-abs-error", type=float, default=GATES.max_fp16_abs_error, show_default=True,
              help="Gate: max |score error| of the fp16 model.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="ONNX to write (only if every gate passes). Default: onerank.<precision>.onnx")
@click.option("--report", type=click.Path(file_okay=False, path_type=Path), default=Path("reports"),
              show_default=True, help="Directory for calibration.json and calibration.png.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the request sampling.")
def calibrate(checkpoint: Path | None, onnx_path: Path | None, precision: str, method: str, data: Path | None,
              eval_data: Path | None, num_requests: int, eval_requests: int, keep_float: tuple[str, ...],
              force_low_precision: tuple[str, ...], fp16_data_max: float, max_auc_change: float,
              max_gauc_change: float | None, topk: int, min_topk_overlap: float, max_fp16_abs_error: float,
              out: Path | None, report: Path, seed: int) -> int:
    """Produce an INT8 (explicit Q/DQ, for TensorRT's strongly typed builder) or FP16 ONNX and judge it
    against fp32 eager by AUC/GAUC change, top-k overlap and score error on held-out requests."""
    from onerank_export.calibration.data import prepare_data
    from onerank_export.calibration.pipeline import calibrate as run_calibration
    from onerank_export.model.checkpoint import checkpoint_digest, load_checkpoint

    gates = AccuracyGates(max_auc_change=max_auc_change, min_topk_overlap=min_topk_overlap, topk=topk,
                          max_fp16_abs_error=max_fp16_abs_error, max_gauc_change=max_gauc_change)
    settings = CalibrationSettings(precision, method=method, num_requests=num_requests, eval_requests=eval_requests,
                                   seed=seed, keep_float=keep_float, force_low_precision=force_low_precision,
                                   fp16_data_max=fp16_data_max, gates=gates)
    out = out or Path(f"onerank.{precision}.onnx")
    if onnx_path is not None and out.resolve() == onnx_path.resolve():
        raise ConfigError(f"--out {out} is the fp32 --onnx input; choose another output file")
    ckpt = resolve_checkpoint(checkpoint)
    model = load_checkpoint(ckpt)
    digest = checkpoint_digest(ckpt)
    if onnx_path is not None:
        _check_fp32_input(onnx_path, model.cfg, digest)
    sets = prepare_data(model.cfg, settings, data, eval_data)  # every data error before the slow steps
    label = None
    with tempfile.TemporaryDirectory(prefix="onerank-calibrate-") as tmp:
        if onnx_path is None:
            from onerank_export.export.onnx_export import export_onnx

            console.print("  exporting fp32 ONNX", style="dim")
            onnx_path = export_onnx(model, Path(tmp) / "onerank.fp32.onnx",
                                    checkpoint_sha256=digest).path
            label = f"exported from {ckpt} for this run"
        outcome = run_calibration(onnx_path, model, settings, out=out, report_dir=report, sets=sets, fp32_label=label,
                                  progress=lambda msg: console.print(f"  {msg}", style="dim"))
    console.print(_table(outcome.entry))
    written = f"wrote {out}, " if outcome.passed else ""
    console.print(f"{precision}: {outcome.summary}; {written}report {outcome.report_path} and {outcome.plot_path}",
                  markup=False)
    if not outcome.passed:
        failed = outcome.entry.failed_gates[0]
        value = failed.value if failed.value is not None and math.isfinite(failed.value) else None  # as in the JSON
        raise CheckFailed(f"{precision} calibration failed gate {failed.name} ({value} vs limit "
                          f"{failed.limit}); {out} not written; see {outcome.report_path}")
    return 0


def _check_fp32_input(path: Path, cfg, digest: str) -> None:
    from onerank_export.export.metadata import check_matches_checkpoint, detect_precision

    check_matches_checkpoint(path, cfg, digest)
    precision = detect_precision(path)
    if precision is not Precision.FP32:
        raise ConfigError(f"--onnx {path}: is a {precision} model; calibrate from the fp32 export")


def _table(entry: CalibrationEntry) -> Table:
    acc = entry.accuracy
    table = Table(title=f"{entry.precision} vs fp32 eager on {entry.data.evaluation_requests} held-out requests")
    for col in ("task", "AUC fp32", "AUC change", "GAUC change", f"top-{acc.topk} overlap", "max abs err"):
        table.add_column(col, justify="left" if col == "task" else "right")
    for task, m in acc.tasks.items():
        table.add_row(task, _fmt(m.auc_fp32, ".4f"), _fmt(m.auc_change, "+.5f"), _fmt(m.gauc_change, "+.5f"),
                      f"{acc.topk_overlap.per_task[task]:.4f}", f"{acc.score_error.max_per_task[task]:.2e}")
    gates = ", ".join(f"{g.name} {'ok' if g.passed else 'FAILED'}" for g in entry.gates)
    table.caption = escape(f"Spearman mean {_fmt(acc.spearman.mean, '.4f')}; gates: {gates}")
    return table


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)
