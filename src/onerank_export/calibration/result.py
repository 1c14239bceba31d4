"""What one calibration run found, typed: the accuracy against fp32 eager, the INT8 / FP16
specifics, the gates, and the entry it adds to reports/calibration.json.

Callers (the `calibrate` command, the build's precision stage, tests) read attributes; `to_dict()`
gives the report's JSON form (keys and order as in the `onerank-calibration/1` format), with
undefined numbers (NaN) as null since JSON has no NaN.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from onerank_export.calibration.data import DataInfo
from onerank_export.calibration.selection import NodeChoice
from onerank_export.calibration.settings import CalibrationSettings
from onerank_export.precision import Precision
from onerank_export.verdict import Verdict


def num(value: float | None) -> float | None:
    """JSON has no NaN: undefined numbers are null."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


# ----- accuracy against fp32 eager --------------------------------------------------------------


class Gated:
    """A result judged by accuracy gates (`gates`): passed when every gate passed."""

    gates: tuple[Verdict, ...]

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)

    @property
    def failed_gates(self) -> tuple[Verdict, ...]:
        return tuple(g for g in self.gates if not g.passed)


@dataclass(frozen=True)
class TaskAccuracy:
    """One task's ranking quality, fp32 eager and the reduced precision; None where undefined
    (AUC over held-out labels of one class)."""

    auc_fp32: float | None
    auc: float | None
    auc_change: float | None
    gauc_fp32: float | None
    gauc: float | None
    gauc_change: float | None
    positives: int

    def to_dict(self) -> dict:
        return {"auc_fp32": self.auc_fp32, "auc": self.auc, "auc_change": self.auc_change,
                "gauc_fp32": self.gauc_fp32, "gauc": self.gauc, "gauc_change": self.gauc_change,
                "positives": self.positives}


@dataclass(frozen=True)
class ScoreError:
    """|score - fp32 eager score| over real candidates."""

    quantiles: Mapping[float, float]  # q -> error quantile; q = 1.0 is the maximum
    mean: float
    max_per_task: Mapping[str, float]
    curve_quantiles: tuple[float, ...]  # the error distribution the plot draws
    curve_values: tuple[float, ...]

    @property
    def max(self) -> float:
        return self.quantiles[1.0]


@dataclass(frozen=True)
class TopkOverlap:
    """Per (request, task) overlap of the top-k candidates with fp32 eager's."""

    k: int
    mean: float
    p5: float
    min: float
    per_task: Mapping[str, float]
    histogram_labels: tuple[str, ...]
    histogram_counts: tuple[int, ...]


@dataclass(frozen=True)
class Spearman:
    """Per-request rank correlation with fp32 eager; undefined for constant rankings."""

    mean: float | None
    p5: float | None
    undefined: int


@dataclass(frozen=True)
class Accuracy:
    """Everything the report says about one precision against fp32 eager on held-out requests."""

    tasks: Mapping[str, TaskAccuracy]
    score_error: ScoreError
    topk_overlap: TopkOverlap
    spearman: Spearman
    padded_candidates_nonzero: int
    nonfinite_scores: int
    fp32_onnxruntime_max_abs_error: float  # how far the fp32 ONNX itself is from eager: the floor

    @property
    def topk(self) -> int:
        return self.topk_overlap.k

    @property
    def auc_change(self) -> dict[str, float | None]:
        return {t: m.auc_change for t, m in self.tasks.items()}

    @property
    def gauc_change(self) -> dict[str, float | None]:
        return {t: m.gauc_change for t, m in self.tasks.items()}

    @property
    def max_abs_error(self) -> float:
        return self.score_error.max

    @property
    def worst_auc_change(self) -> float:
        """Largest |AUC change| over the tasks where AUC is defined (NaN if none)."""
        return max((abs(c) for c in self.auc_change.values() if c is not None), default=float("nan"))

    def to_dict(self) -> dict:
        err, overlap = self.score_error, self.topk_overlap
        return {
            "tasks": {t: m.to_dict() for t, m in self.tasks.items()},
            "score_abs_error": {f"p{q * 100:g}" if q < 1 else "max": v for q, v in err.quantiles.items()}
            | {"mean": err.mean},
            "score_abs_error_max_per_task": dict(err.max_per_task),
            "score_abs_error_curve": {"quantiles": list(err.curve_quantiles), "values": list(err.curve_values)},
            "topk": overlap.k,
            "topk_overlap": {"mean": overlap.mean, "p5": overlap.p5, "min": overlap.min},
            "topk_overlap_per_task": dict(overlap.per_task),
            "topk_overlap_histogram": {"labels": list(overlap.histogram_labels),
                                       "counts": list(overlap.histogram_counts)},
            "spearman": {"mean": self.spearman.mean, "p5": self.spearman.p5, "undefined": self.spearman.undefined},
            "padded_candidates_nonzero": self.padded_candidates_nonzero,
            "nonfinite_scores": self.nonfinite_scores,
            "fp32_onnxruntime_max_abs_error": self.fp32_onnxruntime_max_abs_error,
        }


# ----- what each precision adds -----------------------------------------------------------------


@dataclass(frozen=True)
class NodeError:
    """Score error with only this node quantized (all others float)."""

    node: str
    mean_abs_error: float
    max_abs_error: float
    topk_overlap: float
    share_of_single_node_errors: float


@dataclass(frozen=True)
class Localization:
    method: str
    requests: int
    topk: int
    all_quantized_mean_abs_error: float
    nodes: tuple[NodeError, ...]  # largest mean error first
    float_vs_fp32_onnx: float  # probe fidelity: all flags off is the float model
    all_quantized_vs_int8_onnx: float  # all flags on is the INT8 model

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "requests": self.requests,
            "all_quantized_mean_abs_error": self.all_quantized_mean_abs_error,
            "nodes": [{"node": n.node, "mean_abs_error": n.mean_abs_error, "max_abs_error": n.max_abs_error,
                       f"top{self.topk}_overlap": n.topk_overlap,
                       "share_of_single_node_errors": n.share_of_single_node_errors} for n in self.nodes],
            "probe_fidelity": {"float_vs_fp32_onnx": self.float_vs_fp32_onnx,
                               "all_quantized_vs_int8_onnx": self.all_quantized_vs_int8_onnx},
        }


@dataclass(frozen=True)
class Int8Details:
    quantized_nodes: tuple[str, ...]
    timings: Mapping[str, float]  # seconds of ORT's calibrate and quantize steps
    localization: Localization

    def to_dict(self) -> dict:
        return {"quantized_nodes": list(self.quantized_nodes), "timings_detail": dict(self.timings),
                "localization": self.localization.to_dict()}


@dataclass(frozen=True)
class RangeCheck:
    """The FP16 activation-range check on calibration data, its ten largest findings of each kind."""

    data_max: float
    fp16_max: float
    largest_activations: tuple[tuple[str, float], ...]  # (tensor, |max|)
    flushed_to_zero: tuple[tuple[str, float], ...]  # (tensor, fraction of its nonzero values)

    def to_dict(self) -> dict:
        return {"data_max": self.data_max, "fp16_max": self.fp16_max,
                "largest_activations": [{"tensor": t, "absmax": v} for t, v in self.largest_activations],
                "flushed_to_zero_in_fp16": [{"tensor": t, "fraction_of_nonzero": f} for t, f in self.flushed_to_zero]}


@dataclass(frozen=True)
class Fp16Details:
    casts: int
    range_check: RangeCheck

    def to_dict(self) -> dict:
        return {"casts": self.casts, "range_check": self.range_check.to_dict()}


# ----- the report entry and the outcome ---------------------------------------------------------


@dataclass(frozen=True)
class ModelRecord:
    """The reduced-precision ONNX: written only when every gate passed."""

    path: Path
    written: bool
    sha256: str | None = None

    def to_dict(self) -> dict:
        out: dict = {"path": str(self.path), "written": self.written}
        if self.written:
            out["sha256"] = self.sha256
        else:
            out["reason"] = "a gate failed: the model is not written"
        return out


@dataclass(frozen=True)
class CalibrationEntry(Gated):
    """One precision's entry in calibration.json."""

    precision: Precision  # the entry's key in the report, not a field of it
    model: ModelRecord
    settings: CalibrationSettings
    data: DataInfo
    nodes: tuple[NodeChoice, ...]  # nodes kept in float, or placed for a stated reason
    structure: tuple[Verdict, ...]  # TensorRT / contract structure checks (checks.py)
    accuracy: Accuracy
    gates: tuple[Verdict, ...]
    details: Int8Details | Fp16Details
    seconds: Mapping[str, float]  # per step, and "total"


    def to_dict(self) -> dict:
        int8 = self.precision is Precision.INT8
        return {
            "passed": self.passed,
            "model": self.model.to_dict(),
            "settings": self.settings.to_dict() | {"method": self.settings.method if int8 else None},
            "gates_config": self.settings.gates.to_dict(),
            "data": self.data.to_dict(),
            "nodes": [c.to_dict() for c in self.nodes],
            "structure": [c.to_dict() for c in self.structure],
            "accuracy": self.accuracy.to_dict(),
            "gates": [g.to_dict() for g in self.gates],
            **self.details.to_dict(),
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
        }


@dataclass(frozen=True)
class ReportHeader:
    """What every entry of one calibration.json was judged against."""

    checkpoint_sha256: str | None
    fp32_onnx: str  # path, or how it was made when it was a temporary file
    fp32_onnx_sha256: str
    tasks: tuple[str, ...]
    reference: str = "fp32 eager (dense PyTorch model)"

    def to_dict(self) -> dict:
        return {"checkpoint_sha256": self.checkpoint_sha256, "fp32_onnx": self.fp32_onnx,
                "fp32_onnx_sha256": self.fp32_onnx_sha256, "reference": self.reference, "tasks": list(self.tasks)}


@dataclass(frozen=True)
class CalibrationOutcome:
    """The result of `calibration.pipeline.calibrate`: the entry, where the report went, one line."""

    entry: CalibrationEntry
    report_path: Path  # calibration.json
    plot_path: Path  # calibration.png
    summary: str  # one line for the console / the build stage's detail

    @property
    def precision(self) -> Precision:
        return self.entry.precision

    @property
    def passed(self) -> bool:
        return self.entry.passed

    @property
    def model_path(self) -> Path | None:
        """None when a gate failed: a rejected model is never written."""
        return self.entry.model.path if self.entry.model.written else None
