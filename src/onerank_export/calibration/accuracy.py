"""Judge a reduced-precision model the way rankers are judged, against fp32 eager on held-out
requests: per-task AUC / GAUC change, score error quantiles, per-request top-k overlap and
Spearman rank correlation; then the configured gates."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx

from onerank_export import spec
from onerank_export.calibration.data import RequestSet
from onerank_export.calibration.result import Accuracy, ScoreError, Spearman, TaskAccuracy, TopkOverlap, num
from onerank_export.calibration.settings import AccuracyGates
from onerank_export.metrics import spearman_per_request, task_metrics, topk_overlap
from onerank_export.precision import Precision
from onerank_export.verdict import Verdict

ERROR_QUANTILES = (0.5, 0.9, 0.99, 0.999, 1.0)
# Error distribution for the plot: even steps to 0.9, then dense in the tail (0.99, 0.999, ...).
CURVE_QUANTILES = tuple(sorted({*np.round(np.linspace(0, 0.9, 19), 6), *np.round(1 - np.logspace(-1, -4, 13), 6), 1.0}))
# Per-request top-k overlap buckets: exact agreement gets its own bar.
OVERLAP_EDGES = (0.0, 0.5, 0.7, 0.8, 0.9, 1.0 - 1e-9, 1.0 + 1e-9)
OVERLAP_LABELS = ("<0.5", "0.5-0.7", "0.7-0.8", "0.8-0.9", "0.9-<1", "1")


def describe_gate(gate: Verdict) -> str:
    """A gate in one phrase, e.g. "auc_change[click] 0.003 (gate <= 0.002)"; overlap gates are lower bounds."""
    op = "<=" if "overlap" not in gate.name else ">="
    value = float("nan") if gate.value is None else gate.value
    return f"{gate.name} {value:.4g} (gate {op} {gate.limit:g})"


def run_onnx(model: onnx.ModelProto | bytes | str, requests: RequestSet, batch_size: int = 256) -> np.ndarray:
    """Scores [B, N, K] from ONNX Runtime CPU (the custom op runs from its FunctionProto), in the
    session the product serves and verifies with (`cpu_session`: the CPU rewrite and settings).
    `model`: a ModelProto, its bytes or a file path; every input the graph takes must be in `requests`."""
    from onerank_export.export.ort_session import cpu_session, default_threads

    session = cpu_session(model, default_threads())
    (scores,) = spec.OUTPUT_NAMES  # the contract's one output
    return np.concatenate([session.run([scores], feed)[0] for feed in requests.batches(batch_size)])


def compare(reference: np.ndarray, scores: np.ndarray, requests: RequestSet, tasks: tuple[str, ...],
            topk: int, fp32_onnxruntime: np.ndarray) -> Accuracy:
    """Everything the report says about one precision; `reference` is fp32 eager, `fp32_onnxruntime`
    the fp32 ONNX's own scores (its distance to eager is the floor of any reduced precision)."""
    valid = requests.valid
    ref_m = task_metrics(requests.labels, reference, valid, tasks)
    new_m = task_metrics(requests.labels, scores, valid, tasks)
    per_task = {}
    for t in tasks:
        a, b = ref_m[t], new_m[t]
        per_task[t] = TaskAccuracy(auc_fp32=num(a["auc"]), auc=num(b["auc"]), auc_change=num(b["auc"] - a["auc"]),
                                   gauc_fp32=num(a["gauc"]), gauc=num(b["gauc"]),
                                   gauc_change=num(b["gauc"] - a["gauc"]), positives=a["positives"])
    err = np.abs(scores.astype(np.float64) - reference)[valid]  # [real candidates, K]
    overlap = topk_overlap(reference, scores, valid, k=topk)  # [B, K]
    rho = spearman_per_request(reference, scores, valid)
    defined = rho[~np.isnan(rho)]
    return Accuracy(
        tasks=per_task,
        score_error=ScoreError(
            quantiles={q: float(np.quantile(err, q)) for q in ERROR_QUANTILES}, mean=float(err.mean()),
            max_per_task={t: float(err[:, k].max()) for k, t in enumerate(tasks)},
            curve_quantiles=CURVE_QUANTILES,
            curve_values=tuple(float(v) for v in np.quantile(err, CURVE_QUANTILES))),
        topk_overlap=TopkOverlap(
            k=topk, mean=float(overlap.mean()), p5=float(np.quantile(overlap, 0.05)), min=float(overlap.min()),
            per_task={t: float(overlap[:, k].mean()) for k, t in enumerate(tasks)},
            histogram_labels=OVERLAP_LABELS,
            histogram_counts=tuple(int(c) for c in np.histogram(overlap.ravel(), OVERLAP_EDGES)[0])),
        spearman=Spearman(mean=num(defined.mean() if defined.size else np.nan),
                          p5=num(np.quantile(defined, 0.05) if defined.size else np.nan),
                          undefined=int(np.isnan(rho).sum())),
        padded_candidates_nonzero=int(np.count_nonzero(scores[~valid])),
        nonfinite_scores=int((~np.isfinite(scores)).sum()),
        fp32_onnxruntime_max_abs_error=float(np.abs(fp32_onnxruntime - reference)[valid].max()),
    )


def apply_gates(precision: Precision, accuracy: Accuracy, gates: AccuracyGates,
                checks: Sequence[Verdict]) -> list[Verdict]:
    """Every gate, passed or not. NaN never passes (a comparison with NaN is False)."""
    precision = Precision(precision)  # "fp16" from a caller still gets the fp16 error gate
    out = []
    for task, m in accuracy.tasks.items():
        change = m.auc_change if m.auc_change is not None else float("nan")
        out.append(Verdict.check(f"auc_change[{task}]", bool(abs(change) <= gates.max_auc_change),
                                 "" if np.isfinite(change) else "AUC undefined: the held-out labels hold one class",
                                 abs(change), gates.max_auc_change))
        if gates.max_gauc_change is not None:
            change = m.gauc_change if m.gauc_change is not None else float("nan")
            out.append(Verdict.check(f"gauc_change[{task}]", bool(abs(change) <= gates.max_gauc_change), "",
                                     abs(change), gates.max_gauc_change))
    mean_overlap = accuracy.topk_overlap.mean
    out.append(Verdict.check(f"top{gates.topk}_overlap_mean", bool(mean_overlap >= gates.min_topk_overlap), "",
                             mean_overlap, gates.min_topk_overlap))
    if precision is Precision.FP16:
        worst = accuracy.max_abs_error
        out.append(Verdict.check("max_abs_error", bool(worst <= gates.max_fp16_abs_error), "", worst,
                                 gates.max_fp16_abs_error))
    nonfinite = accuracy.nonfinite_scores
    out.append(Verdict.check("finite_scores", nonfinite == 0, "", float(nonfinite), 0))
    failed = [c for c in checks if not c.passed]
    out.append(Verdict.check("structure", not failed,
                             "; ".join(f"{c.name}: {c.detail}" for c in failed) or f"{len(checks)} checks passed",
                             float(len(failed)), 0))
    return out
