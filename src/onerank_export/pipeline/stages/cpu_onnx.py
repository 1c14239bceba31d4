"""Stage `cpu onnx`: each ONNX model after the exact CPU rewrite (export/ort_cpu_graph.py), as a file
of its own, for a cpu-target repository: Triton's ONNX Runtime backend loads a model file as it is,
so the rewrite the product's own CPU sessions apply in memory must be in the file it serves.

Hashed in the manifest like every artifact; the parity stage checks the served copies against eager.
"""

from __future__ import annotations

from onerank_export.pipeline.result import StageResult, Status
from onerank_export.pipeline.stages.base import Stage
from onerank_export.pipeline.stages.export import ONNX_DIR, onnx_artifacts, onnx_file_name
from onerank_export.pipeline.state import ONNX, ONNX_CPU, BuildState
from onerank_export.serving.profiles import ServingPlan, Target


class CpuOnnxStage(Stage):
    name = "cpu onnx"
    requires = (ONNX,)
    provides = (ONNX_CPU,)

    def __init__(self, plan: ServingPlan) -> None:
        self.plan = plan

    def run(self, state: BuildState) -> StageResult:
        if self.plan.target is not Target.CPU:
            return StageResult.skipped(self.name, f"target {self.plan.target}: a GPU repository serves the ONNX as "
                                                  "exported")
        from onerank_export.export.ort_cpu_graph import write_ort_cpu_model

        artifacts = {}
        for precision, source in state.onnx.items():
            path = write_ort_cpu_model(source, state.work / ONNX_DIR / onnx_file_name(precision, "cpu"))
            state.onnx_cpu[precision] = path
            artifacts |= onnx_artifacts(f"onnx_cpu_{precision}", path)
        return StageResult(self.name, Status.OK,
                           f"{', '.join(p.value for p in state.onnx_cpu)}: LayerNormalization as InstanceNormalization "
                           "with gamma/beta folded, for Triton's ONNX Runtime backend on CPUs", artifacts,
                           self.plan.describe())
