"""Stage `engine`: the MatchingScore plugin library plus one TensorRT engine per ONNX model.

    auto     build where CUDA + TensorRT exist, else `skipped: <reason>` and nothing written
    require  the same, but preflight stops the build up front where they are missing
    skip     never build

Artifacts: `plugin_library`, `engine_<precision>` (the plan) and `plan_meta_<precision>` (its
`.json`); with the user-state cache's halves (build --user-cache), also `engine_user_encoder_<p>`,
`engine_candidate_scorer_<p>` and their `plan_meta_*` for every precision whose halves exist; in split
mode (build --embeddings split) `engine_dense_<p>` and `plan_meta_dense_<p>` for every precision of the
dense graph (the store's lookup stays outside the engine: it feeds the rows). Only
files that exist are listed: a plan is written atomically after a successful build, and a plan
that fails to build contributes nothing but the failure line.

The TensorRT builder, the plugin build and the availability probe are injected (`EngineToolchain`),
so the stage's bookkeeping is tested with stand-ins on hosts without a GPU.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from onerank_export.config import OneRankConfig
from onerank_export.engine.tensorrt.profile import CANDIDATE_SCORER, DENSE, SERVING, USER_ENCODER
from onerank_export.errors import StageError
from onerank_export.pipeline.options import BuildOptions, EngineMode
from onerank_export.pipeline.result import StageResult, Status
from onerank_export.pipeline.stages.base import Stage
from onerank_export.pipeline.state import ENGINES, ONNX, PLUGIN_LIBRARY, SPLIT_ENGINES, BuildState
from onerank_export.precision import Precision

Progress = Callable[[str], None]
ENGINES_DIR, PLUGINS_DIR = "engines", "plugins"


def _stderr(message: str) -> None:
    print(f"  engine: {message}", file=sys.stderr, flush=True)


def _unavailable_reason() -> str | None:
    from onerank_export.engine.tensorrt.availability import tensorrt_unavailable_reason

    return tensorrt_unavailable_reason()


def _build_engine(*args, **kwargs):
    from onerank_export.engine.tensorrt.builder import build_engine

    return build_engine(*args, **kwargs)


def _build_plugin_library(*args, **kwargs) -> Path:
    from onerank_export.engine.plugin.build import build_plugin_library

    return build_plugin_library(*args, **kwargs)


def _device() -> tuple[str, str]:
    from onerank_export.engine.tensorrt.plan_metadata import cuda_device_identity

    return cuda_device_identity()


@dataclass(frozen=True)
class EngineToolchain:
    """What the stage calls to probe, build the plugin and build engines (real ones by default)."""

    unavailable_reason: Callable[[], str | None] = _unavailable_reason
    build_engine: Callable = _build_engine  # (onnx, plan, config, precision, *, plugin_library, role, progress)
    build_plugin_library: Callable[..., Path] = _build_plugin_library  # (out_dir, *, progress) -> .so
    device: Callable[[], tuple[str, str]] = _device  # (GPU name, "major.minor") of device 0


def unavailable_reason_for(mode: EngineMode | str, toolchain: EngineToolchain = EngineToolchain()) -> str | None:
    """Why engines will not be built in this mode (None: they will); `require` where they cannot be
    built is a one-line StageError."""
    mode = EngineMode.parse(mode)
    if mode is EngineMode.SKIP:
        return "--engine skip"
    reason = toolchain.unavailable_reason()
    if reason and mode is EngineMode.REQUIRE:
        raise StageError(f"--engine require: cannot build TensorRT engines here ({reason}); "
                         "run on a GPU host with TensorRT, or use --engine auto")
    return reason


def check_device(name: str, capability: str) -> None:
    """A GPU the plugin has no kernel image for is refused before anything is built."""
    from onerank_export.engine.kernel.image import ARCHS

    major, minor = (int(x) for x in capability.split(".")[:2])
    if major * 10 + minor < min(ARCHS):
        images = ", ".join(f"sm_{a}" for a in ARCHS)
        raise StageError(f"GPU {name} has compute capability {capability}; the MatchingScore plugin has kernel "
                         f"images for {images} (Turing/T4 and newer): build engines on such a GPU, or use "
                         "--engine skip and serve the ONNX models")


class EngineStage(Stage):
    name = "engine"
    requires = (ONNX,)
    provides = (ENGINES, PLUGIN_LIBRARY, SPLIT_ENGINES)

    def __init__(self, mode: EngineMode | str = EngineMode.AUTO, plugin_library: Path | None = None, *,
                 toolchain: EngineToolchain | None = None, progress: Progress = _stderr) -> None:
        self.mode = EngineMode.parse(mode)
        self.given_plugin = plugin_library
        self.toolchain = toolchain or EngineToolchain()
        self.progress = progress

    def preflight(self, options: BuildOptions, config: OneRankConfig) -> None:
        will_build = unavailable_reason_for(self.mode, self.toolchain) is None
        if self.given_plugin is not None and not Path(self.given_plugin).is_file():
            raise StageError(f"--plugin {self.given_plugin}: not a file")
        if will_build:
            check_device(*self.toolchain.device())

    def run(self, state: BuildState) -> StageResult:
        return self.build(dict(state.onnx), state.work, state.config, state, halves=state.user_cache_halves(),
                          dense=state.split_dense())

    def build(self, onnx: dict[Precision, Path], out_dir: Path, config: OneRankConfig,
              state: BuildState | None = None, *, halves: dict[Precision, tuple[Path, Path]] | None = None,
              dense: dict[Precision, Path] | None = None) -> StageResult:
        """The stage on explicit inputs (`state`, when given, receives the plans and the plugin).
        `halves`: {precision: (user encoder ONNX, candidate scorer ONNX)} to build beside the single graph;
        `dense`: {precision: split mode's dense ONNX} (split mode has no single graph: `onnx` is empty)."""
        reason = unavailable_reason_for(self.mode, self.toolchain)
        if reason:
            return StageResult.skipped(self.name, reason)
        if not onnx and not dense:
            return StageResult(self.name, Status.FAILED, "no ONNX model to build an engine from")
        try:
            plugin = self._plugin_into(out_dir / PLUGINS_DIR)
        except StageError as exc:
            return StageResult(self.name, Status.FAILED, f"plugin library: {exc}")
        jobs = [(SERVING, Precision(p), path) for p, path in onnx.items()]
        for p, (encoder, scorer) in (halves or {}).items():
            jobs += [(USER_ENCODER, Precision(p), encoder), (CANDIDATE_SCORER, Precision(p), scorer)]
        jobs += [(DENSE, Precision(p), path) for p, path in (dense or {}).items()]
        result = self._build_engines(jobs, out_dir / ENGINES_DIR, config, plugin)
        if state is not None:
            state.plugin_library = plugin
            state.engines.update({p: result.artifacts[f"engine_{p}"] for p in Precision
                                  if f"engine_{p}" in result.artifacts})
            state.user_cache_engines.update({
                p: (result.artifacts[f"engine_{USER_ENCODER}_{p}"], result.artifacts[f"engine_{CANDIDATE_SCORER}_{p}"])
                for p in Precision if {f"engine_{USER_ENCODER}_{p}", f"engine_{CANDIDATE_SCORER}_{p}"}
                <= result.artifacts.keys()})
            state.split_engines.update({p: result.artifacts[f"engine_{DENSE}_{p}"] for p in Precision
                                        if f"engine_{DENSE}_{p}" in result.artifacts})
        return result

    def _plugin_into(self, plugins_dir: Path) -> Path:
        """The plugin library inside the build: the user's copied in, or built from plugins/."""
        from onerank_export.engine.plugin.build import STATIC_LIBRARY

        target = plugins_dir / STATIC_LIBRARY
        plugins_dir.mkdir(parents=True, exist_ok=True)
        if self.given_plugin is not None:
            if not Path(self.given_plugin).is_file():
                raise StageError(f"--plugin {self.given_plugin}: not a file")
            shutil.copy2(self.given_plugin, target)
            return target
        built = self.toolchain.build_plugin_library(plugins_dir, progress=self.progress)
        if Path(built).resolve() != target.resolve():
            shutil.copy2(built, target)
        return target

    def _build_engines(self, jobs: list[tuple[str, Precision, Path]], engines_dir: Path, config: OneRankConfig,
                       plugin: Path) -> StageResult:
        """One plan per (role, precision, ONNX). The user encoder has no MatchingScore node, so it is
        built without the plugin library: its plan does not depend on the plugin (the dense graph has one)."""
        from onerank_export.engine.plugin.build import STATIC_LIBRARY
        from onerank_export.engine.tensorrt.plan_metadata import plan_file_name

        artifacts: dict[str, Path] = {"plugin_library": plugin}
        metrics: dict[str, object] = {}
        failures, built = [], []
        for role, p, onnx_path in jobs:
            key = p.value if role == SERVING else f"{role}_{p}"
            label = p.value if role == SERVING else f"{role.replace('_', ' ')} {p}"
            try:
                result = self.toolchain.build_engine(onnx_path, engines_dir / plan_file_name(p, role), config, p,
                                                     plugin_library=None if role == USER_ENCODER else plugin,
                                                     role=role,
                                                     progress=lambda m, label=label: self.progress(f"{label}: {m}"))
            except StageError as exc:
                failures.append(f"{label}: {exc}")
                continue
            artifacts[f"engine_{key}"] = result.plan
            artifacts[f"plan_meta_{key}"] = result.metadata
            metrics[key] = {"build_seconds": round(result.seconds, 3), "bytes": result.plan.stat().st_size,
                            "plugin_layers": result.plugin_layers, "timing_cache_reused": result.timing_cache_reused}
            metrics["tensorrt_version"] = result.tensorrt_version
            metrics["compute_capability"] = result.compute_capability
            built.append(label)
        if failures:
            ok = f"; built {', '.join(built)}" if built else ""
            return StageResult(self.name, Status.FAILED, f"{len(failures)} of {len(jobs)} engine(s) failed, first "
                               f"{failures[0]}{ok}", artifacts, metrics)
        where = f"TensorRT {metrics['tensorrt_version']}, sm {metrics['compute_capability']}"
        return StageResult(self.name, Status.OK, f"{', '.join(built)} engine(s) with the {STATIC_LIBRARY} plugin "
                           f"({where})", artifacts, metrics)
