"""Seeded parity requests: shapes other than the export example, and the edge cases that break
ranking models in production (B > 1, odd L and N, empty history, all-padding rows, the maxima)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onerank_export import spec
from onerank_export.config import OneRankConfig
from onerank_export.errors import RequestError
from onerank_export.spec import Violation, Wording, random_request  # random_request: re-exported for benches

_SHAPE_WORDING: Wording = {
    (Violation.RANGE, spec.BATCH): "{axis}={size} must be >= 1",  # no upper bound: see shape_case
    (Violation.RANGE, spec.HIST_LEN): "{axis}={size} is outside the model's range [{lo}, {hi}] (config max_hist_len)",
    (Violation.RANGE, spec.NUM_CANDIDATES): ("{axis}={size} is outside the model's range [{lo}, {hi}] "
                                             "(config max_candidates)"),
}


@dataclass(frozen=True)
class ParityCase:
    name: str
    feed: dict[str, np.ndarray]

    @property
    def shape(self) -> dict[str, int]:
        return spec.dynamic_sizes(self.feed)


def shape_case(cfg: OneRankConfig, batch: int, hist_len: int, num_candidates: int, seed: int = 0,
               name: str | None = None) -> ParityCase:
    """A random case of the given shape; shapes outside the config's ranges are a RequestError.

    The shape is checked by the contract checker's range rule before anything is allocated; B has
    no upper bound here (a runner with a batch limit, such as a TensorRT profile, judges it)."""
    problem = spec.check_dims(cfg, {spec.BATCH: batch, spec.HIST_LEN: hist_len, spec.NUM_CANDIDATES: num_candidates})
    if problem is not None:
        raise RequestError(f"parity shape: {problem.describe(_SHAPE_WORDING)}")
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


def invariance_case(cfg: OneRankConfig, seed: int) -> ParityCase:
    """Small enough that appending 5 candidates / 7 history positions stays within the maxima."""
    return shape_case(cfg, 2, max(1, min(37, cfg.max_hist_len - 7)), max(1, min(29, cfg.max_candidates - 5)),
                      seed, name="invariance")
