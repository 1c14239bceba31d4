"""Ranking metrics, the way rankers are judged: AUC, GAUC, per-request top-k overlap, Spearman."""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata, spearmanr


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC with tie handling (Mann-Whitney U); NaN when only one class is present."""
    labels = np.asarray(labels).ravel().astype(bool)
    scores = np.asarray(scores, dtype=np.float64).ravel()
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def gauc(labels: np.ndarray, scores: np.ndarray, valid: np.ndarray) -> float:
    """Group AUC: per-request AUC over real candidates, weighted by the request's candidate
    count, over requests that have both a positive and a negative."""
    total, weight = 0.0, 0
    for lab, sc, v in zip(labels, scores, valid, strict=True):
        a = auc(lab[v], sc[v])
        if not np.isnan(a):
            total += a * int(v.sum())
            weight += int(v.sum())
    return total / weight if weight else float("nan")


def task_metrics(labels: np.ndarray, scores: np.ndarray, valid: np.ndarray, tasks: tuple[str, ...]
                 ) -> dict[str, dict[str, float]]:
    """{task: {auc, gauc, positives}} over real candidates; labels/scores [B, N, K], valid [B, N]."""
    out = {}
    for k, task in enumerate(tasks):
        lab, sc = labels[..., k], scores[..., k]
        out[task] = {
            "auc": auc(lab[valid], sc[valid]),
            "gauc": gauc(lab, sc, valid),
            "positives": int(lab[valid].sum()),
        }
    return out


def topk_overlap(reference: np.ndarray, other: np.ndarray, valid: np.ndarray, k: int = 10) -> np.ndarray:
    """Per (request, task): |top-k(reference) ∩ top-k(other)| / k' over real candidates,
    k' = min(k, real candidates). reference/other [B, N, K] -> [B, K]."""
    b, _, tasks = reference.shape
    out = np.ones((b, tasks))
    for i in range(b):
        idx = np.flatnonzero(valid[i])
        kk = min(k, idx.size)
        if kk == 0:
            continue
        for t in range(tasks):
            # Stable sort on the negated score keeps ties in candidate order on both sides.
            top_ref = idx[np.argsort(-reference[i, idx, t], kind="stable")[:kk]]
            top_oth = idx[np.argsort(-other[i, idx, t], kind="stable")[:kk]]
            out[i, t] = len(np.intersect1d(top_ref, top_oth)) / kk
    return out


def spearman_per_request(reference: np.ndarray, other: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Spearman rank correlation per (request, task) over real candidates; NaN where undefined."""
    b, _, tasks = reference.shape
    out = np.full((b, tasks), np.nan)
    for i in range(b):
        idx = np.flatnonzero(valid[i])
        if idx.size < 2:
            continue
        for t in range(tasks):
            x, y = reference[i, idx, t], other[i, idx, t]
            if np.ptp(x) > 0 and np.ptp(y) > 0:
                out[i, t] = spearmanr(x, y).statistic
    return out
