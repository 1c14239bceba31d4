"""The stages of `build`, in order. docs/architecture.md has the table of what each requires and provides.

    checkpoint -> export fp32 -> [user cache] -> fp16 -> int8 -> [user cache fp16 -> user cache int8]
        -> cpu onnx -> engine -> triton -> parity
    split mode: checkpoint -> embeddings -> fp16 -> int8 -> engine (the dense graphs) -> triton -> parity

Parity runs last so it checks what the repository serves, loaded as Triton's backend loads it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from onerank_export.config import OneRankConfig
    from onerank_export.pipeline.options import BuildOptions
    from onerank_export.pipeline.stages.base import Stage


def plan_stages(options: BuildOptions, config: OneRankConfig | None = None) -> list[Stage]:
    from onerank_export.pipeline.stages.checkpoint import CheckpointStage
    from onerank_export.pipeline.stages.cpu_onnx import CpuOnnxStage
    from onerank_export.pipeline.stages.embeddings import EmbeddingsStage, split_mode
    from onerank_export.pipeline.stages.engine import EngineStage
    from onerank_export.pipeline.stages.export import ExportStage
    from onerank_export.pipeline.stages.parity import ParityStage
    from onerank_export.pipeline.stages.precision import CalibrationInputs, PrecisionStage
    from onerank_export.pipeline.stages.triton import TritonStage
    from onerank_export.pipeline.stages.user_cache import UserCacheStage
    from onerank_export.pipeline.stages.user_cache_precision import UserCachePrecisionStage
    from onerank_export.serving.profiles import choose_target, serving_plan

    # One validated load of the calibration data, shared by both precisions (and their user-cache halves).
    inputs = CalibrationInputs()
    split = split_mode(options, config)
    stages: list[Stage] = [CheckpointStage(), EmbeddingsStage() if split else ExportStage()]
    plan = None
    if options.triton:
        # The target and profile are decided (and a bad value refused) here, in preflight, once for the
        # stages that serve; without a repository there is nothing to decide.
        target, why = choose_target(options.target)
        plan = serving_plan(target, why, options.serving_profile, instances=options.instances,
                            threads=options.threads)
    if split:  # the store + dense graph, its precisions, one engine per dense graph; no cache (EmbeddingsStage)
        stages += [PrecisionStage(p, inputs) for p in options.precisions]
        stages.append(EngineStage(options.engine, options.plugin_library))
        return [*stages, *([TritonStage(plan)] if plan is not None else []), ParityStage()]
    if options.user_cache:
        stages.append(UserCacheStage())
    stages += [PrecisionStage(p, inputs) for p in options.precisions]
    if options.user_cache:  # after the single graphs: each compares its halves with the one of its precision
        stages += [UserCachePrecisionStage(p, inputs) for p in options.precisions]
    if plan is not None:
        stages += [CpuOnnxStage(plan), EngineStage(options.engine, options.plugin_library), TritonStage(plan)]
    else:
        stages.append(EngineStage(options.engine, options.plugin_library))
    stages.append(ParityStage())
    return stages
