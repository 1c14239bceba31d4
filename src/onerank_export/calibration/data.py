"""Calibration and held-out evaluation requests: from request files or the demo generator,
validated up front, sampled deterministically, and disjoint.

Demo data comes from the world the demo checkpoint was trained on. Its seed streams: 0 is
training (model/train.py), 1 the held-out set its metrics.json reports, 2 calibration. The
evaluation requests are a seeded subset of that held-out set; calibration requests come from
stream 2. Any request present in both sets (same bytes) is dropped from evaluation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onerank_export import spec
from onerank_export.calibration.data_files import LABELS, read_request_file
from onerank_export.calibration.settings import CalibrationSettings
from onerank_export.config import OneRankConfig
from onerank_export.errors import DataError

CALIBRATION_STREAM = 2  # demo seed stream; 0 = training, 1 = held-out
FILE_SPLIT_STREAM = 3


@dataclass(frozen=True)
class RequestSet:
    features: dict[str, np.ndarray]  # serving-contract inputs, batch first
    labels: np.ndarray | None  # [B, N, K] 0/1, or None
    source: str

    def __len__(self) -> int:
        return int(self.features["cand_item_ids"].shape[0])

    @property
    def valid(self) -> np.ndarray:
        return self.features["cand_item_ids"] != 0

    def subset(self, index: np.ndarray) -> RequestSet:
        labels = None if self.labels is None else self.labels[index]
        return RequestSet({k: np.ascontiguousarray(v[index]) for k, v in self.features.items()}, labels, self.source)

    def with_inputs(self, make: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]) -> RequestSet:
        """The same requests with more model inputs computed from them (split mode: the looked-up item
        rows the dense graph takes); the contract tensors and labels are kept as they are."""
        return RequestSet({**self.features, **make(self.features)}, self.labels, self.source)

    @property
    def contract(self) -> dict[str, np.ndarray]:
        """The serving contract's tensors only: what the eager model and a client are given."""
        return {name: self.features[name] for name in spec.INPUT_NAMES}

    def batches(self, size: int) -> list[dict[str, np.ndarray]]:
        return [{k: v[i:i + size] for k, v in self.features.items()} for i in range(0, len(self), size)]

    def fingerprints(self) -> list[str]:
        """One digest per request over every input tensor's bytes: equal digests = identical requests."""
        out = []
        for i in range(len(self)):
            h = hashlib.sha256()
            for name in spec.INPUT_NAMES:
                row = np.ascontiguousarray(self.features[name][i])
                h.update(name.encode() + str(row.shape).encode() + row.tobytes())
            out.append(h.hexdigest())
        return out


@dataclass(frozen=True)
class DataInfo:
    """Where the requests came from and how they were split: the report's `data` section."""

    source: str
    calibration_requests: int
    evaluation_requests: int
    evaluation_dropped_as_duplicates: int  # held-out requests also present in the calibration set
    calibration_shape: dict[str, int]  # {hist_len, num_candidates}
    evaluation_shape: dict[str, int]
    seed: int
    disjoint: bool = True  # always: shared requests are dropped from evaluation

    @property
    def short_source(self) -> str:
        """The source without its parenthesised detail, for one console line."""
        return self.source.split(" (")[0]

    def to_dict(self) -> dict:
        return {"source": self.source, "calibration_requests": self.calibration_requests,
                "evaluation_requests": self.evaluation_requests,
                "evaluation_dropped_as_duplicates": self.evaluation_dropped_as_duplicates,
                "calibration_shape": dict(self.calibration_shape), "evaluation_shape": dict(self.evaluation_shape),
                "seed": self.seed, "disjoint": self.disjoint}


@dataclass(frozen=True)
class CalibrationData:
    calibration: RequestSet
    evaluation: RequestSet
    info: DataInfo
    load_seconds: float = 0.0  # reading, validating and splitting (the report's seconds.data counts it)

    def with_inputs(self, make: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]) -> CalibrationData:
        """Both sets with the inputs `make` computes from a request's tensors added (RequestSet.with_inputs)."""
        return dataclasses.replace(self, calibration=self.calibration.with_inputs(make),
                                   evaluation=self.evaluation.with_inputs(make))


def load_requests(path: Path, cfg: OneRankConfig) -> RequestSet:
    features, labels = read_request_file(Path(path), cfg)
    return RequestSet(features, labels, str(path))


def prepare_data(cfg: OneRankConfig, settings: CalibrationSettings, data: Path | None = None,
                 eval_data: Path | None = None) -> CalibrationData:
    """Load (or generate), validate, sample and split. Every DataError is raised before any work."""
    started = time.perf_counter()
    if data is None and eval_data is not None:
        raise DataError("--eval-data needs --data: without it both sets come from the demo generator")
    if data is None:
        calib, evaluation, source = _demo_sets(cfg, settings)
    else:
        pool = load_requests(data, cfg)
        if eval_data is not None:
            evaluation = load_requests(eval_data, cfg)
            _require_labels(evaluation)
            calib = _take(pool, settings.num_requests, settings.seed)
            evaluation = _take(evaluation, settings.eval_requests, settings.seed, at_most=True)
        else:
            _require_labels(pool, hint=" (or pass --eval-data FILE with labels)")
            calib, evaluation = _split(pool, settings)
        source = str(data) if eval_data is None else f"{data} (calibration), {eval_data} (evaluation)"
    evaluation, dropped = _drop_shared(calib, evaluation)
    info = DataInfo(source=source, calibration_requests=len(calib), evaluation_requests=len(evaluation),
                    evaluation_dropped_as_duplicates=dropped, calibration_shape=_shape(calib),
                    evaluation_shape=_shape(evaluation), seed=settings.seed)
    return CalibrationData(calib, evaluation, info, time.perf_counter() - started)


def _demo_sets(cfg: OneRankConfig, settings: CalibrationSettings) -> tuple[RequestSet, RequestSet, str]:
    from onerank_export.model.demo_checkpoint import DEMO_RECIPE
    from onerank_export.model.demo_data import DemoWorld
    from onerank_export.model.train import held_out_requests

    recipe = dataclasses.replace(DEMO_RECIPE, hist_len=min(DEMO_RECIPE.hist_len, cfg.max_hist_len),
                                 num_candidates=min(DEMO_RECIPE.num_candidates, cfg.max_candidates),
                                 eval_requests=max(DEMO_RECIPE.eval_requests, settings.eval_requests))
    world = DemoWorld.create(cfg, seed=recipe.seed)  # the world the demo checkpoint learned
    rng = np.random.default_rng([recipe.seed, CALIBRATION_STREAM, settings.seed])
    batch = world.sample(rng, settings.num_requests, recipe.hist_len, recipe.num_candidates)
    calib = RequestSet(batch.features, batch.labels, "demo generator, calibration stream")
    held = held_out_requests(world, recipe)
    held_set = RequestSet(held.features, held.labels, "demo generator, held-out stream")
    evaluation = _take(held_set, settings.eval_requests, settings.seed)
    return calib, evaluation, (f"demo generator (world seed {recipe.seed}; calibration stream "
                               f"{CALIBRATION_STREAM}, evaluation = the demo checkpoint's held-out stream 1)")


def _take(pool: RequestSet, count: int, seed: int, *, at_most: bool = False) -> RequestSet:
    if len(pool) < count and not at_most:
        raise DataError(f"{pool.source}: holds {len(pool)} requests, fewer than the {count} asked for "
                        "(--num-requests)")
    order = np.random.default_rng([seed, FILE_SPLIT_STREAM]).permutation(len(pool))
    return pool.subset(np.sort(order[:count]))


def _split(pool: RequestSet, settings: CalibrationSettings) -> tuple[RequestSet, RequestSet]:
    n, want = len(pool), settings.num_requests
    if n < want + 1:
        raise DataError(f"{pool.source}: holds {n} requests; --num-requests {want} leaves none for the held-out "
                        f"evaluation (needs at least {want + 1}, or pass --eval-data FILE)")
    order = np.random.default_rng([settings.seed, FILE_SPLIT_STREAM]).permutation(n)
    calib = np.sort(order[:want])
    evaluation = np.sort(order[want:want + settings.eval_requests])
    return pool.subset(calib), pool.subset(evaluation)


def _drop_shared(calib: RequestSet, evaluation: RequestSet) -> tuple[RequestSet, int]:
    seen = set(calib.fingerprints())
    keep = np.array([fp not in seen for fp in evaluation.fingerprints()], dtype=bool)
    if not keep.any():
        raise DataError(f"{evaluation.source}: every evaluation request also appears in the calibration set; "
                        "evaluation must use held-out requests")
    return (evaluation if keep.all() else evaluation.subset(np.flatnonzero(keep))), int((~keep).sum())


def _require_labels(requests: RequestSet, hint: str = "") -> None:
    if requests.labels is None:
        raise DataError(f"{requests.source}: has no '{LABELS}' tensor; the held-out evaluation needs labels "
                        f"[B, N, K] for AUC/GAUC{hint}")


def _shape(requests: RequestSet) -> dict[str, int]:
    return {spec.HIST_LEN: int(requests.features["hist_item_ids"].shape[1]),
            spec.NUM_CANDIDATES: int(requests.features["cand_item_ids"].shape[1])}
