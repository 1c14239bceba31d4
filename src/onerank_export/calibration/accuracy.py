"""Judge a reduced-precision model the way rankers are judged, against fp32 eager on held-out
requests: per-task AUC / GAUC change, score error quantiles, per-request top-k overlap and
Spearman rank correlation; then the configured gates."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from onerank_export.calibration.checks import Check
from onerank_export.calibration.data import RequestSet
from onerank_export.calibration.settings import AccuracyGates
from onerank_export.metrics import spearman_per_request, task_metrics, topk_overlap

ERROR_QUANTILES = (0.5, 0.9, 0.99, 0.999, 1.0)
# Error distribution for the plot: even steps to 0.9, then dense in the tail (0.99, 0.999, ...).
CURVE_QUANTILES = tuple(sorted({*np.round(np.linspace(0, 0.9, 19), 6), *np.round(1 - np.logspace(-1, -4, 13), 6), 1.0}))
# Per-request top-k overlap buckets: exact agreement gets its own bar.
OVERLAP_EDGES = (0.0, 0.5, 0.7, 0.8, 0.9, 1.0 - 1e-9, 1.0 + 1e-9)
OVERLAP_LABELS = ("<0.5", "0.5-0.7", "0.7-0.8", "0.8-0.9", "0.9-<1", "1")


@dataclass(frozen=True)
class Gate:
    name: str
    value: float
    limit: float
    passed: bool
    detail: str = ""

    def to_dict(self) -> dict:
        return {"name": self.name, "value": _num(self.value), "limit": self.limit, "passed": self.passed,
                "detail": self.detail}

    def describe(self) -> str:
        op = "<=" if "overlap" not in self.name else ">="
        return f"{self.name} {self.value:.4g} (gate {op} {self.limit:g})"


def run_onnx(model: onnx.ModelProto | bytes, requests: RequestSet, batch_size: int = 256) -> np.ndarray:
    """Scores [B, N, K] from ONNX Runtime CPU (the custom op runs from its FunctionProto)."""
    from onerank_export.parity.runners import OnnxRuntimeRunner

    blob = model if isinstance(model, bytes) else model.SerializeToString()
    with OnnxRuntimeRunner(blob) as runner:
        return np.concatenate([runner.infer(feed)["scores"] for feed in requests.batches(batch_size)])


def compare(reference: np.ndarray, scores: np.ndarray, requests: RequestSet, tasks: tuple[str, ...],
            topk: int) -> dict:
    """Everything the report says about one precision; `reference` is fp32 eager."""
    valid = requests.valid
    ref_m = task_metrics(requests.labels, reference, valid, tasks)
    new_m = task_metrics(requests.labels, scores, valid, tasks)
    per_task = {}
    for t in tasks:
        a, b = ref_m[t], new_m[t]
        per_task[t] = {"auc_fp32": a["auc"], "auc": b["auc"], "auc_change": b["auc"] - a["auc"],
                       "gauc_fp32": a["gauc"], "gauc": b["gauc"], "gauc_change": b["gauc"] - a["gauc"],
                       "positives": a["positives"]}
    err = np.abs(scores.astype(np.float64) - reference)[valid]  # [real candidates, K]
    overlap = topk_overlap(reference, scores, valid, k=topk)  # [B, K]
    rho = spearman_per_request(reference, scores, valid)
    defined = rho[~np.isnan(rho)]
    return {
        "tasks": _clean(per_task),
        "score_abs_error": {f"p{q * 100:g}" if q < 1 else "max": float(np.quantile(err, q)) for q in ERROR_QUANTILES}
        | {"mean": float(err.mean())},
        "score_abs_error_max_per_task": {t: float(err[:, k].max()) for k, t in enumerate(tasks)},
        "score_abs_error_curve": {"quantiles": list(CURVE_QUANTILES),
                                  "values": [float(v) for v in np.quantile(err, CURVE_QUANTILES)]},
        "topk": topk,
        "topk_overlap": {"mean": float(overlap.mean()), "p5": float(np.quantile(overlap, 0.05)),
                         "min": float(overlap.min())},
        "topk_overlap_per_task": {t: float(overlap[:, k].mean()) for k, t in enumerate(tasks)},
        "topk_overlap_histogram": {"labels": list(OVERLAP_LABELS),
                                   "counts": [int(c) for c in np.histogram(overlap.ravel(), OVERLAP_EDGES)[0]]},
        "spearman": {"mean": _num(defined.mean() if defined.size else np.nan),
                     "p5": _num(np.quantile(defined, 0.05) if defined.size else np.nan),
                     "undefined": int(np.isnan(rho).sum())},
        "padded_candidates_nonzero": int(np.count_nonzero(scores[~valid])),
        "nonfinite_scores": int((~np.isfinite(scores)).sum()),
    }


def apply_gates(precision: str, accuracy: dict, gates: AccuracyGates, checks: list[Check]) -> list[Gate]:
    """Every gate, passed or not. NaN never passes (a comparison with NaN is False)."""
    out = []
    for task, m in accuracy["tasks"].items():
        change = m["auc_change"] if m["auc_change"] is not None else float("nan")
        out.append(Gate(f"auc_change[{task}]", abs(change), gates.max_auc_change,
                        bool(abs(change) <= gates.max_auc_change),
                        "" if np.isfinite(change) else "AUC undefined: the held-out labels hold one class"))
        if gates.max_gauc_change is not None:
            change = m["gauc_change"] if m["gauc_change"] is not None else float("nan")
            out.append(Gate(f"gauc_change[{task}]", abs(change), gates.max_gauc_change,
                            bool(abs(change) <= gates.max_gauc_change)))
    mean_overlap = accuracy["topk_overlap"]["mean"]
    out.append(Gate(f"top{gates.topk}_overlap_mean", mean_overlap, gates.min_topk_overlap,
                    bool(mean_overlap >= gates.min_topk_overlap)))
    if precision == "fp16":
        worst = accuracy["score_abs_error"]["max"]
        out.append(Gate("max_abs_error", worst, gates.max_fp16_abs_error, bool(worst <= gates.max_fp16_abs_error)))
    nonfinite = accuracy["nonfinite_scores"]
    out.append(Gate("finite_scores", nonfinite, 0, nonfinite == 0))
    failed = [c for c in checks if not c.passed]
    out.append(Gate("structure", len(failed), 0, not failed,
                    "; ".join(f"{c.name}: {c.detail}" for c in failed) or f"{len(checks)} checks passed"))
    return out


def _num(value: float) -> float | None:
    """JSON has no NaN: undefined numbers are null."""
    value = float(value)
    return value if np.isfinite(value) else None


def _clean(per_task: dict) -> dict:
    return {t: {k: (_num(v) if isinstance(v, float) else v) for k, v in m.items()} for t, m in per_task.items()}
