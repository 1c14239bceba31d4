"""Entropy (KL) threshold search, the same algorithm as ONNX Runtime's `HistogramCollector.
get_entropy_threshold` (TensorRT's calibration, GTC 2017 s7310) with the per-bin Python loops
replaced by array operations, because ORT's loops are slow at TensorRT's 2048 bins
(docs/precision.md#library-choice-both-tried). tests/calibration/test_int8.py checks it returns
ORT's thresholds exactly.
"""

from __future__ import annotations

import numpy as np
from scipy.special import rel_entr


def entropy_threshold(histogram: tuple, num_quantized_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) clipping range minimising KL(reference || quantized) over symmetric candidates."""
    hist, edges, min_value, max_value = histogram[0], histogram[1], histogram[2], histogram[3]
    num_bins = hist.size
    zero = num_bins // 2
    half = num_quantized_bins // 2
    dtype = edges.dtype
    prefix = np.concatenate([[0], np.cumsum(hist)])
    best, best_kl = None, np.inf
    for i in range(half, zero + 1):
        start, end = zero - i, min(zero + i + 1, num_bins)
        sliced = hist[start:end]
        p = sliced.copy()
        p[0] += prefix[start]  # outliers fold into the edge bins
        p[-1] += prefix[-1] - prefix[end]
        nonzero = (p != 0).astype(np.int64)
        merged = sliced.size // num_quantized_bins
        body = num_quantized_bins * merged
        quantized = sliced[:body].reshape(num_quantized_bins, merged).sum(axis=1).astype(np.int64)
        quantized[-1] += sliced[body:].sum()
        norm = nonzero[:body].reshape(num_quantized_bins, merged).sum(axis=1)
        # ORT expands each level over all its bins (zeros included) and truncates to int64.
        level = np.where(norm != 0, quantized / np.maximum(norm, 1), 0).astype(np.int64)
        q = np.zeros(p.size, dtype=np.int64)
        q[:body] = np.repeat(level, merged)
        ps, qs = _smooth(p), _smooth(q)
        kl = np.inf if ps is None or qs is None else float(np.array(_kl(ps, qs), dtype=dtype))
        if kl < best_kl:  # strict: the first minimum wins, as np.argmin does
            best, best_kl = (edges[start], edges[end]), kl
    if best is None:
        best = (edges[zero - half], edges[min(zero + half + 1, num_bins)])
    low, high = best
    if low < min_value:
        low = min_value
    if high > max_value:
        high = max_value
    return low, high


def _kl(p: np.ndarray, q: np.ndarray) -> np.floating:
    """scipy.stats.entropy(p, q) without its per-call argument handling (most of its cost)."""
    return np.sum(rel_entr(p / np.sum(p), q / np.sum(q)))


def _smooth(p: np.ndarray, eps: float = 0.0001) -> np.ndarray | None:
    """ORT's `smooth_distribution`: move eps of mass onto the empty bins."""
    is_zero = (p == 0).astype(np.float32)
    n_zero = is_zero.sum()
    n_nonzero = p.size - n_zero
    if not n_nonzero:
        return None
    eps1 = eps * float(n_zero) / float(n_nonzero)
    out = p.astype(np.float32)
    out += eps * is_zero + (-eps1) * (1 - is_zero)
    return out
