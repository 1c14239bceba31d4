"""Stage `triton`: the Triton model repositories (production and CPU) from what the build produced."""

from __future__ import annotations

from onerank_export.pipeline.result import StageResult, Status
from onerank_export.pipeline.stages.base import Stage
from onerank_export.pipeline.state import ENGINES, ONNX, PLUGIN_LIBRARY, BuildState
from onerank_export.precision import Precision


class TritonStage(Stage):
    name = "triton"
    requires = (ONNX, ENGINES, PLUGIN_LIBRARY)

    def run(self, state: BuildState) -> StageResult:
        from onerank_export.serving.repository import CPU_DIR, PRODUCTION_DIR, write_model_repository

        if Precision.FP32 not in state.onnx:
            return StageResult.skipped(self.name, "no fp32 ONNX to serve")
        repos = write_model_repository(state.work, state.config, dict(state.onnx), dict(state.engines),
                                       state.plugin_library)
        engines = f"{repos.tensorrt_models} TensorRT" if repos.tensorrt_models else "no TensorRT (no engines built)"
        return StageResult(self.name, Status.OK,
                           f"{PRODUCTION_DIR}/ {len(repos.models)} models ({engines}, {repos.onnx_models} ONNX "
                           f"Runtime); {CPU_DIR}/{repos.cpu_model} python backend; every config.pbtxt parsed with "
                           "Triton's ModelConfig", repos.artifacts,
                           {"models": repos.models, "cpu_model": repos.cpu_model})
