"""`build`: the whole pipeline in one command."""

from __future__ import annotations

import time
from pathlib import Path

import click

from onerank_export.cli.common import console, print_stage, resolve_checkpoint
from onerank_export.pipeline.result import StageResult


class ConsoleUI:
    def stage_started(self, index: int, total: int, name: str) -> None:
        console.print(f"[bold][{index}/{total}] {name}[/]")

    def stage_finished(self, result: StageResult) -> None:
        print_stage(result)


@click.command()
@click.option("--checkpoint", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Checkpoint directory (config.json + model.safetensors). Default: the bundled demo checkpoint.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("build"), show_default=True,
              help="Output directory (replaced atomically; see --force).")
@click.option("--precision", "precisions", multiple=True, type=click.Choice(["fp16", "int8", "none"]),
              help="Reduced-precision variants to produce (repeatable). Default: fp16 and int8.")
@click.option("--calibration-method", type=click.Choice(["minmax", "entropy", "percentile"]), default="minmax",
              show_default=True, help="INT8 activation calibration.")
@click.option("--calibration-data", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Labelled requests (.npz or .parquet, serving-contract names) for INT8/FP16 calibration and "
                   "the accuracy report. Default: the demo generator.")
@click.option("--engine", type=click.Choice(["auto", "require", "skip"]), default="auto", show_default=True,
              help="TensorRT engines: auto builds where CUDA + TensorRT exist, require fails without them.")
@click.option("--plugin", "plugin_library", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Prebuilt libonerank_plugins.so (default: build it with CMake when engines are built).")
@click.option("--triton/--no-triton", default=True, show_default=True, help="Write the Triton model repository.")
@click.option("--tolerances", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help='JSON {"fp16": {"atol": 0.005}, ...} overriding per-precision parity tolerances.')
@click.option("--force", is_flag=True, help="Replace --out even if it is not an earlier build.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for calibration and parity requests.")
def build(checkpoint: Path | None, out: Path, precisions: tuple[str, ...], calibration_method: str,
          calibration_data: Path | None, engine: str,
          plugin_library: Path | None, triton: bool, tolerances: Path | None, force: bool, seed: int) -> int:
    """Checkpoint -> ONNX (fp32, fp16, int8) -> parity -> TensorRT engines -> Triton repository + manifest."""
    from onerank_export.parity.verify import load_tolerances
    from onerank_export.pipeline.runner import PRECISIONS, BuildOptions, check_output_dir
    from onerank_export.pipeline.runner import build as run_build

    started = time.perf_counter()
    check_output_dir(out, force)  # before any slow work
    from onerank_export.pipeline.stages.engine import unavailable_reason_for

    unavailable_reason_for(engine)  # --engine require without CUDA + TensorRT fails here, not after the export
    chosen = PRECISIONS if not precisions else tuple(p for p in PRECISIONS if p in precisions)
    if "none" in precisions and len(set(precisions)) > 1:
        raise click.BadParameter("'none' cannot be combined with other precisions", param_hint="--precision")
    ckpt, source = resolve_checkpoint(checkpoint)
    if calibration_data is not None and chosen:  # every data error before the slow stages
        from onerank_export.calibration.data import prepare_data
        from onerank_export.calibration.settings import CalibrationSettings
        from onerank_export.config import OneRankConfig

        prepare_data(OneRankConfig.load(ckpt / "config.json"), CalibrationSettings(chosen[0], seed=seed),
                     calibration_data, None)
    options = BuildOptions(checkpoint=ckpt, out=out, checkpoint_source=source, precisions=chosen, engine=engine,
                           plugin_library=plugin_library, triton=triton, calibration_method=calibration_method,
                           calibration_data=calibration_data, tolerances=load_tolerances(tolerances), force=force,
                           seed=seed)
    console.print(f"building {out}/ from {source} checkpoint {ckpt}")
    outcome = run_build(options, ConsoleUI())
    verdict = "[green]passed[/]" if outcome.passed else "[bold red]FAILED[/]"
    console.print(f"build {verdict} in {time.perf_counter() - started:.0f} s: {outcome.out}/manifest.json")
    return 0 if outcome.passed else 1
