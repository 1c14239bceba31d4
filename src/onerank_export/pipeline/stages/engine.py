"""The `engine` stage of `build`: the MatchingScore plugin library plus one TensorRT engine per ONNX.

    auto     build where CUDA + TensorRT exist, else `skipped: <reason>` and nothing written
    require  the same, but a one-line StageError where they are missing

Artifacts: `plugin_library`, `engine_<precision>` (the plan) and `plan_meta_<precision>` (its
`.json`). Only files that exist are listed: a plan is written atomically after a successful
build, and a precision that fails to build contributes nothing but the failure line.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from onerank_export.config import OneRankConfig
from onerank_export.engine.plugin.build import STATIC_LIBRARY
from onerank_export.engine.tensorrt.availability import tensorrt_unavailable_reason
from onerank_export.engine.tensorrt.plan_metadata import plan_file_name
from onerank_export.errors import StageError
from onerank_export.pipeline.result import StageResult, Status

STAGE = "engine"
PLUGIN_FILE = STATIC_LIBRARY  # the self-registering library: what Triton and the runner load
MODES = ("auto", "require", "skip")
Progress = Callable[[str], None]


def _stderr(message: str) -> None:
    print(f"  engine: {message}", file=sys.stderr, flush=True)


def unavailable_reason_for(mode: str) -> str | None:
    """Why engines will not be built in this mode (None: they will). `require` without CUDA +
    TensorRT is a one-line StageError; `build` calls this before any slow stage, the stage again."""
    if mode not in MODES:
        raise StageError(f"--engine {mode!r}: expected one of {', '.join(MODES)}")
    if mode == "skip":
        return "--engine skip"
    reason = tensorrt_unavailable_reason()
    if reason and mode == "require":
        raise StageError(f"--engine require: cannot build TensorRT engines here ({reason}); "
                         "run on a GPU host with TensorRT, or use --engine auto")
    return reason


def run_engine_stage(onnx: dict[str, Path], out_dir: Path, config: OneRankConfig, mode: str,
                     plugin_library: Path | None = None, *, progress: Progress = _stderr) -> StageResult:
    reason = unavailable_reason_for(mode)
    if reason:
        return StageResult.skipped(STAGE, reason)
    if not onnx:
        return StageResult(STAGE, Status.FAILED, "no ONNX model to build an engine from")

    try:
        plugin = _plugin_into(out_dir / "plugins", plugin_library, progress)
    except StageError as exc:
        return StageResult(STAGE, Status.FAILED, f"plugin library: {exc}")
    return _build_engines(onnx, out_dir / "engines", config, plugin, progress)


def _plugin_into(plugins_dir: Path, given: Path | None, progress: Progress) -> Path:
    """The plugin library inside the build: the user's copied in, or built from plugins/."""
    target = plugins_dir / PLUGIN_FILE
    if given is not None:
        if not Path(given).is_file():
            raise StageError(f"--plugin {given}: not a file")
        plugins_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy2(given, target)
        return target
    from onerank_export.engine.plugin.build import build_plugin_library

    built = build_plugin_library(plugins_dir, progress=progress)
    if built.resolve() != target.resolve():
        plugins_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy2(built, target)
    return target


def _build_engines(onnx: dict[str, Path], engines_dir: Path, config: OneRankConfig, plugin: Path,
                   progress: Progress) -> StageResult:
    from onerank_export.engine.tensorrt.builder import build_engine

    artifacts: dict[str, Path] = {"plugin_library": plugin}
    metrics: dict[str, object] = {}
    failures: list[str] = []
    built = []
    for precision, onnx_path in onnx.items():
        try:
            result = build_engine(onnx_path, engines_dir / plan_file_name(precision), config, precision,
                                  plugin_library=plugin, progress=lambda m, p=precision: progress(f"{p}: {m}"))
        except StageError as exc:
            failures.append(f"{precision}: {exc}")
            continue
        artifacts[f"engine_{precision}"] = result.plan
        artifacts[f"plan_meta_{precision}"] = result.metadata
        metrics[precision] = {"build_seconds": round(result.seconds, 3), "bytes": result.plan.stat().st_size,
                              "plugin_layers": result.plugin_layers, "timing_cache_reused": result.timing_cache_reused}
        metrics["tensorrt_version"] = result.tensorrt_version
        metrics["compute_capability"] = result.compute_capability
        built.append(precision)
    if failures:
        ok = f"; built {', '.join(built)}" if built else ""
        return StageResult(STAGE, Status.FAILED, f"{len(failures)} of {len(onnx)} engine(s) failed, first "
                           f"{failures[0]}{ok}", artifacts, metrics)
    where = f"TensorRT {metrics['tensorrt_version']}, sm {metrics['compute_capability']}"
    return StageResult(STAGE, Status.OK, f"{', '.join(built)} engine(s) with the {PLUGIN_FILE} plugin ({where})",
                       artifacts, metrics)
