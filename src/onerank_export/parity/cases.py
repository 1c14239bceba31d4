"""Seeded parity requests: shapes other than the export example, and the edge cases that break
ranking models in production (B > 1, odd L and N, empty history, all-padding rows, the maxima)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onerank_export import spec
from onerank_export.config import OneRankConfig
from onerank_export.errors import RequestError


@dataclass(frozen=True)
class ParityCase:
    name: str
    feed: dict[str, np.ndarray]

    @property
    def shape(self) -> dict[str, int]:
        b, n = self.feed["cand_item_ids"].shape
        return {spec.BATCH: b, spec.HIST_LEN: self.feed["hist_item_ids"].shape[1], spec.NUM_CANDIDATES: n}


def random_request(cfg: OneRankConfig, rng: np.random.Generator, batch: int, hist_len: int,
                   num_candidates: int, *, full: bool = False) -> dict[str, np.ndarray]:
    """Valid random request: history left-padded, candidates right-padded to random real lengths
    (every row keeps at least one real candidate unless the caller pads it away)."""
    feed: dict[str, np.ndarray] = {}
    dims = {spec.BATCH: batch, spec.HIST_LEN: hist_len, spec.NUM_CANDIDATES: num_candidates}
    for s in spec.INPUTS:
        shape = s.shape_for(cfg, dims)
        if s.vocab_field is None:
            feed[s.name] = rng.normal(size=shape).astype(s.np_dtype)
        else:
            feed[s.name] = rng.integers(1, getattr(cfg, s.vocab_field), size=shape, dtype=np.int64)
    if not full:
        hist_real = rng.integers(0, hist_len + 1, size=batch)
        cand_real = rng.integers(1, num_candidates + 1, size=batch)
        for i in range(batch):
            feed["hist_item_ids"][i, : hist_len - hist_real[i]] = 0
            feed["hist_action_ids"][i, : hist_len - hist_real[i]] = 0
            feed["cand_item_ids"][i, cand_real[i]:] = 0
            feed["cand_features"][i, cand_real[i]:] = 0.0
    return feed


def shape_case(cfg: OneRankConfig, batch: int, hist_len: int, num_candidates: int, seed: int = 0,
               name: str | None = None) -> ParityCase:
    """A random case of the given shape; shapes outside the config's ranges are a RequestError."""
    for axis, size in ((spec.HIST_LEN, hist_len), (spec.NUM_CANDIDATES, num_candidates)):
        lo, _, hi = spec.axis_range(cfg, axis)
        if not lo <= size <= hi:
            raise RequestError(f"parity shape: {axis}={size} is outside the model's range [{lo}, {hi}] "
                               f"(config max_{'hist_len' if axis == spec.HIST_LEN else 'candidates'})")
    if batch < 1:
        raise RequestError(f"parity shape: batch={batch} must be >= 1")
    rng = np.random.default_rng([seed, batch, hist_len, num_candidates])
    return ParityCase(name or f"b{batch}-l{hist_len}-n{num_candidates}",
                      random_request(cfg, rng, batch, hist_len, num_candidates))


def default_cases(cfg: OneRankConfig, seed: int = 0) -> list[ParityCase]:
    max_l, max_n = cfg.max_hist_len, cfg.max_candidates
    odd_l, odd_n = min(37, max_l), min(129, max_n)
    cases = [
        shape_case(cfg, 2, max_l, max_n, seed, name=f"b2-l{max_l}-n{max_n}-max"),
        shape_case(cfg, 4, odd_l, odd_n, seed, name=f"b4-l{odd_l}-n{odd_n}-odd"),
        shape_case(cfg, 3, 1, 1, seed, name="b3-l1-n1-min"),
    ]
    empty = shape_case(cfg, 2, min(16, max_l), min(33, max_n), seed, name="b2-empty-history")
    empty.feed["hist_item_ids"][:] = 0
    empty.feed["hist_action_ids"][:] = 0
    cases.append(empty)
    padded = shape_case(cfg, 3, min(20, max_l), min(17, max_n), seed, name="b3-all-padding-row")
    padded.feed["cand_item_ids"][1] = 0
    padded.feed["cand_features"][1] = 0.0
    cases.append(padded)
    return cases
