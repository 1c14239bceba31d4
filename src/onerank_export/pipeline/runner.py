"""`build`: checkpoint -> ONNX fp32 -> fp16 / int8 -> parity -> TensorRT engines -> Triton repository.

The runner owns what every stage shares: preflight before any slow work, timing, the error rule
(stages/base.py), the manifest and the atomic swap of the output directory (workdir.py). A failed
check still produces a complete output (its report is what the user needs) and a non-zero exit; an
error that stops the build leaves nothing behind.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from onerank_export.config import OneRankConfig
from onerank_export.errors import OneRankError
from onerank_export.host import release_freed_memory
from onerank_export.io import write_json
from onerank_export.pipeline.embeddings_mode import plan_embeddings
from onerank_export.pipeline.manifest import build_manifest, memory_record, peak_rss
from onerank_export.pipeline.options import BuildOptions
from onerank_export.pipeline.result import StageResult, Status
from onerank_export.pipeline.stages import plan_stages
from onerank_export.pipeline.stages.base import Stage
from onerank_export.pipeline.state import BuildState
from onerank_export.pipeline.ui import BuildUI
from onerank_export.pipeline.workdir import MANIFEST, BuildDirectory, check_output_dir


@dataclass
class BuildOutcome:
    out: Path
    stages: list[StageResult]
    manifest: dict

    @property
    def passed(self) -> bool:
        return all(s.status is not Status.FAILED for s in self.stages)


def preflight(options: BuildOptions, stages: list[Stage] | None = None) -> list[Stage]:
    """Every check that needs no slow work: output directory, checkpoint config, each stage's own.

    The demo checkpoint's config is the default config, so this runs before it is trained."""
    check_output_dir(options.out, options.force)
    config = checkpoint_config(options.checkpoint)
    plan_embeddings(options, config)  # the table limits: refused here, from config.json alone
    stages = plan_stages(options, config) if stages is None else stages  # --embeddings auto reads the config
    _check_plan(stages)
    for stage in stages:
        stage.preflight(options, config)
    return stages


def build(options: BuildOptions, ui: BuildUI | None = None, *, stages: list[Stage] | None = None) -> BuildOutcome:
    """Run the whole pipeline into `options.out`. `stages` replaces the planned ones (tests)."""
    ui = ui or BuildUI()
    stages = preflight(options, stages)
    checkpoint = resolve_checkpoint(options.checkpoint, ui)
    ui.note(f"building {options.out}/ from {options.checkpoint_source} checkpoint {checkpoint}")
    with BuildDirectory(options.out) as work:
        for gone in work.removed:
            ui.note(f"removed {gone.name}, left by a build that did not finish")
        state = BuildState(options, checkpoint, work.path)
        results, rss_after = [], {}
        for i, stage in enumerate(stages, start=1):
            results.append(_run_stage(stage, state, i, len(stages), ui))
            rss_after[stage.name] = peak_rss()  # the high-water mark so far: which stage raised it
        record = {"path": str(checkpoint),
                  "source": options.checkpoint_source, "sha256": state.checkpoint_sha256}
        config = state.config  # the loaded model's (preflight read the same config.json)
        manifest = build_manifest(work.path, config, record, options.describe(), results,
                                  embeddings=plan_embeddings(options, config).describe(),
                                  memory=memory_record(config, rss_after),
                                  memory_plan=_memory_plan(state, config))
        write_json(work.path / MANIFEST, manifest)
        work.commit()
    return BuildOutcome(work.out, results, manifest)


def _memory_plan(state: BuildState, config: OneRankConfig) -> dict:
    """The manifest's memory plan (pipeline/memory_plan.py) for the model Triton loads."""
    from onerank_export.pipeline.memory_plan import memory_plan
    from onerank_export.precision import Precision

    if state.split is not None:
        return memory_plan(config, "split", state.split.dense, state.options.embedding_dtype,
                           {str(p): path for p, path in state.split_dense().items()})
    return memory_plan(config, "inline", state.onnx.get(Precision.FP32), None)


def resolve_checkpoint(checkpoint: Path | None, ui: BuildUI) -> Path:
    """The user's checkpoint, or the cached demo checkpoint (trained once on first use)."""
    if checkpoint is not None:
        return checkpoint
    from onerank_export.model.demo_checkpoint import demo_checkpoint_dir, ensure_demo_checkpoint, is_complete

    if not is_complete(demo_checkpoint_dir()):
        ui.note("demo checkpoint not cached yet: training it once (about 2 minutes on 2 cores)")
    try:
        return ensure_demo_checkpoint(ui.training_step)
    finally:
        ui.training_finished()


def _run_stage(stage: Stage, state: BuildState, index: int, total: int, ui: BuildUI) -> StageResult:
    ui.stage_started(index, total, stage)
    started = time.perf_counter()
    try:
        result = stage.run(state)
    except OneRankError as exc:
        if stage.critical:
            raise
        result = StageResult(stage.name, Status.FAILED, str(exc))
    result.seconds = time.perf_counter() - started
    release_freed_memory()  # the next stage starts from what this one left, not its peak
    ui.stage_finished(result)
    return result


def _check_plan(stages: list[Stage]) -> None:
    """Every field a stage requires is provided by an earlier one (a programming error otherwise)."""
    provided: set[str] = set()
    for stage in stages:
        missing = [r for r in stage.requires if r not in provided]
        if missing:
            raise AssertionError(f"stage {stage.name} requires {missing} that no earlier stage provides")
        provided.update(stage.provides)


def checkpoint_config(checkpoint: Path | None) -> OneRankConfig:
    """The config of a checkpoint without loading its weights; the demo checkpoint's is the default
    config, so checks can run before the demo is trained."""
    if checkpoint is None:
        return OneRankConfig()
    from onerank_export.model.checkpoint import load_config

    return load_config(checkpoint)
