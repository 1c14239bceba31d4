"""The stages of `build`, in order. docs/architecture.md has the table of what each requires and provides.

    checkpoint -> export fp32 -> [user cache] -> fp16 -> int8 -> cpu onnx -> engine -> triton -> parity

Parity runs last so it checks what the repository serves, loaded as Triton's backend loads it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from onerank_export.pipeline.options import BuildOptions
    from onerank_export.pipeline.stages.base import Stage


def plan_stages(options: BuildOptions) -> list[Stage]:
    from onerank_export.pipeline.stages.checkpoint import CheckpointStage
    from onerank_export.pipeline.stages.cpu_onnx import CpuOnnxStage
    from onerank_export.pipeline.stages.engine import EngineStage
    from onerank_export.pipeline.stages.export import ExportStage
    from onerank_export.pipeline.stages.parity import ParityStage
    from onerank_export.pipeline.stages.precision import CalibrationInputs, PrecisionStage
    from onerank_export.pipeline.stages.triton import TritonStage
    from onerank_export.pipeline.stages.user_cache import UserCacheStage
    from onerank_export.serving.profiles import choose_target, serving_plan

    inputs = CalibrationInputs()  # one validated load of the calibration data, shared by both precisions
    stages: list[Stage] = [CheckpointStage(), ExportStage()]
    plan = None
    if options.triton:
        # The target and profile are decided (and a bad value refused) here, in preflight, once for the
        # stages that serve; without a repository there is nothing to decide.
        target, why = choose_target(options.target)
        plan = serving_plan(target, why, options.serving_profile, instances=options.instances,
                            threads=options.threads)
    if options.user_cache:
        stages.append(UserCacheStage(plan.target if plan is not None else None))
    stages += [PrecisionStage(p, inputs) for p in options.precisions]
    if plan is not None:
        stages += [CpuOnnxStage(plan), EngineStage(options.engine, options.plugin_library), TritonStage(plan)]
    else:
        stages.append(EngineStage(options.engine, options.plugin_library))
    stages.append(ParityStage())
    return stages
