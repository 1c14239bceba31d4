"""Stage `export fp32`: the serving graph to ONNX with the onerank::MatchingScore custom op."""

from __future__ import annotations

from pathlib import Path

from onerank_export.pipeline.result import StageResult, Status
from onerank_export.pipeline.stages.base import Stage
from onerank_export.pipeline.state import MODEL, ONNX, BuildState
from onerank_export.precision import Precision

ONNX_DIR = "onnx"


def onnx_file_name(precision: Precision, variant: str = "") -> str:
    """onnx/onerank.<precision>[.<variant>].onnx, e.g. the CPU rewrite's `onerank.fp32.cpu.onnx`."""
    return f"onerank.{Precision(precision).value}{'.' + variant if variant else ''}.onnx"


def dense_onnx_file_name(precision: Precision) -> str:
    """onnx/onerank.dense.<precision>.onnx: the split dense graph (item rows as inputs) of a precision."""
    return f"onerank.dense.{Precision(precision).value}.onnx"


def onnx_artifacts(role: str, path: Path) -> dict[str, Path]:
    """The manifest roles of a model file and its external data file, if it has one
    (`onnx_fp32`, `onnx_fp32_data`): both are hashed, neither can change unnoticed."""
    from onerank_export.export.onnx_files import data_files

    data = data_files(path)
    return {role: path, **{f"{role}_data" + (f"_{i}" if i else ""): d for i, d in enumerate(data)}}


class ExportStage(Stage):
    name = "export fp32"
    requires = (MODEL,)
    provides = (ONNX,)
    critical = True  # every later stage starts from this model

    def run(self, state: BuildState) -> StageResult:
        from onerank_export.export.onnx_export import export_onnx

        path = state.work / ONNX_DIR / onnx_file_name(Precision.FP32)
        result = export_onnx(state.model, path, checkpoint_sha256=state.checkpoint_sha256)
        state.onnx[Precision.FP32] = path
        return StageResult(self.name, Status.OK,
                           f"opset {result.opset}, {result.num_nodes} nodes, {result.custom_nodes} "
                           "onerank::MatchingScore, onnx.checker full pass",
                           artifacts=onnx_artifacts("onnx_fp32", path),
                           metrics={"opset": result.opset, "nodes": result.num_nodes,
                                    "custom_nodes": result.custom_nodes})
