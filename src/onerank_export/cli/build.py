"""`build`: the whole pipeline in one command (the pipeline itself is onerank_export.pipeline)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import click

from onerank_export.calibration.settings import METHODS
from onerank_export.cli.common import CHECKPOINT_HELP, ConsoleUI, console, existing_dir, existing_file
from onerank_export.embeddings.limits import MODES as EMBEDDING_MODES
from onerank_export.pipeline.options import EngineMode
from onerank_export.precision import REDUCED
from onerank_export.serving.profiles import PROFILES, TARGET_CHOICES

NONE = "none"


@click.command()
@click.option("--checkpoint", type=existing_dir, help=CHECKPOINT_HELP)
@click.option("--out", type=click.Path(path_type=Path), default=Path("build"), show_default=True,
              help="Output directory (replaced atomically; see --force).")
@click.option("--precision", "precisions", multiple=True, type=click.Choice([*(p.value for p in REDUCED), NONE]),
              help="Reduced-precision variants to produce (repeatable). Default: fp16 and int8.")
@click.option("--calibration-method", type=click.Choice(METHODS), default="minmax",
              show_default=True, help="INT8 activation calibration.")
@click.option("--calibration-data", type=existing_file,
              help="Labelled requests (.npz or .parquet, serving-contract names) for INT8/FP16 calibration and "
                   "the accuracy report. Default: the demo generator.")
@click.option("--engine", type=click.Choice([m.value for m in EngineMode]), default=EngineMode.AUTO.value,
              show_default=True,
              help="TensorRT engines: auto builds where CUDA + TensorRT exist, require fails without them.")
@click.option("--plugin", "plugin_library", type=existing_file,
              help="Prebuilt libonerank_plugins.so (default: build it with CMake when engines are built).")
@click.option("--triton/--no-triton", default=True, show_default=True, help="Write the Triton model repository.")
@click.option("--target", type=click.Choice(TARGET_CHOICES), default="auto", show_default=True,
              help="Hardware of the Triton repository: gpu (KIND_GPU, TensorRT plans + ONNX Runtime), cpu (KIND_CPU, "
                   "CPU-rewritten ONNX for Triton's ONNX Runtime backend + the python-backend model), auto: what "
                   "this host has.")
@click.option("--serving-profile", type=click.Choice(PROFILES), default="latency", show_default=True,
              help="latency: one instance per model using every core, no batching delay; throughput: several "
                   "instances sharing the cores, a 200 us batching delay.")
@click.option("--instances", type=click.IntRange(1), help="Instances per model (overrides the profile).")
@click.option("--threads", type=click.IntRange(1),
              help="ONNX Runtime intra-op threads per CPU instance (overrides the profile).")
@click.option("--user-cache", is_flag=True,
              help="Also export the user encoder and candidate scorer and serve `onerank` through the cross-request "
                   "user-state cache (needs a cpu target; docs/user-cache.md).")
@click.option("--user-cache-bytes", type=str, default="512MiB", show_default=True,
              help="In-process cache budget per model instance: bytes, or with KiB/MiB/GiB.")
@click.option("--user-cache-redis", metavar="URL",
              help="redis:// URL of a shared cache tier across instances and hosts (default: none).")
@click.option("--embeddings", type=click.Choice(EMBEDDING_MODES), default="auto", show_default=True,
              help="Where the item table lives: inline in the ONNX/TensorRT graph (external data past its threshold), "
                   "split into an embedding store read by a lookup model beside a dense graph, or auto: split past "
                   "--split-threshold or a TensorRT/ONNX limit (docs/embeddings.md).")
@click.option("--split-threshold", type=str, default="256MiB", show_default=True,
              help="--embeddings auto splits a table larger than this: bytes, or with KiB/MiB/GiB.")
@click.option("--embedding-dtype", type=click.Choice(["fp32", "fp16", "int8"]), default="fp32", show_default=True,
              help="Split mode: the store's row storage (int8: row-wise, per-row scale), judged by the accuracy gates.")
@click.option("--embedding-oov", type=click.Choice(["pad", "error"]), default="pad", show_default=True,
              help="Split mode: ids outside the table read the pad row, or are refused (INVALID_ARGUMENT).")
@click.option("--embedding-backend", type=click.Choice(["mmap", "redis"]), default="mmap", show_default=True,
              help="Split mode: the served lookup memory-maps the store, or reads Redis (push the store there with "
                   "`onerank-export embeddings push`).")
@click.option("--embedding-redis", metavar="URL", help="Split mode, --embedding-backend redis: the Redis URL.")
@click.option("--tolerances", type=existing_file,
              help='JSON {"fp16": {"atol": 0.005}, ...} overriding per-precision parity tolerances.')
@click.option("--force", is_flag=True, help="Replace --out even if it is not an earlier build.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for calibration and parity requests.")
def build(checkpoint: Path | None, out: Path, precisions: tuple[str, ...], calibration_method: str,
          calibration_data: Path | None, engine: str,
          plugin_library: Path | None, triton: bool, target: str, serving_profile: str, instances: int | None,
          threads: int | None, user_cache: bool, user_cache_bytes: str, user_cache_redis: str | None,
          embeddings: str, split_threshold: str, embedding_dtype: str, embedding_oov: str, embedding_backend: str,
          embedding_redis: str | None, tolerances: Path | None, force: bool, seed: int) -> int:
    """Checkpoint -> ONNX (fp32, fp16, int8) -> parity -> TensorRT engines -> Triton repository + manifest."""
    from onerank_export.parity.verify import load_tolerances
    from onerank_export.pipeline.options import BuildOptions
    from onerank_export.pipeline.runner import build as run_build
    from onerank_export.serving.user_cache import CacheSettings

    started = time.perf_counter()
    if NONE in precisions and len(set(precisions)) > 1:
        raise click.BadParameter("'none' cannot be combined with other precisions", param_hint="--precision")
    chosen = REDUCED if not precisions else tuple(p for p in REDUCED if p.value in precisions)
    options = BuildOptions(out=out, checkpoint=checkpoint, precisions=chosen, engine=engine,
                           plugin_library=plugin_library, triton=triton, calibration_method=calibration_method,
                           calibration_data=calibration_data, tolerances=load_tolerances(tolerances), force=force,
                           seed=seed, target=target, serving_profile=serving_profile, instances=instances,
                           threads=threads, user_cache=user_cache, user_cache_redis=user_cache_redis,
                           user_cache_bytes=CacheSettings.from_parameters(
                               {"user_cache_bytes": user_cache_bytes}).max_bytes,
                           embeddings=embeddings, split_threshold=_bytes(split_threshold, "--split-threshold"),
                           embedding_dtype=embedding_dtype, embedding_oov=embedding_oov,
                           embedding_backend=embedding_backend, embedding_redis=embedding_redis)
    outcome = run_build(options, ConsoleUI())
    verdict = "[green]passed[/]" if outcome.passed else "[bold red]FAILED[/]"
    console.print(f"build {verdict} in {time.perf_counter() - started:.0f} s: {outcome.out}/manifest.json")
    return 0 if outcome.passed else 1


def _bytes(text: str, option: str) -> int:
    """'256MiB' -> 268435456 (bytes, or a number with KiB/MiB/GiB)."""
    match = re.fullmatch(r"\s*(\d+)\s*(B|KiB|MiB|GiB)?\s*", text)
    if not match:
        raise click.BadParameter(f"{text!r} is not a size: use bytes or a number with KiB, MiB or GiB (e.g. 256MiB)",
                                 param_hint=option)
    return int(match[1]) << {None: 0, "B": 0, "KiB": 10, "MiB": 20, "GiB": 30}[match[2]]
