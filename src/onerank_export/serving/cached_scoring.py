"""Scoring with the cross-request user-state cache: history key -> cached states, or the user
encoder on a miss -> the candidate scorer.

One class for every place that serves the cached path: the Triton python-backend model
(serving/cached_python_model.py), `build`'s and `verify`'s parity runners and the benchmark, so
what is measured and checked is what is served. Torch-free (the python backend stub has no torch).

Exactness: the scorer reads exactly the encoder's outputs, whether they come from the cache or
from a run; the key is the model identity plus the exact history tensors (serving/user_cache.py),
so a changed history, a different model or a different precision can never be served stale
states. Rows of one batch with the same key run the encoder once.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onerank_export.config import OneRankConfig
from onerank_export.io import sha256_file
from onerank_export.serving.user_cache import TieredStateCache, history_keys
from onerank_export.user_states import ENCODER_INPUTS, SCORER_REQUEST_INPUTS, state_names


@dataclass(frozen=True)
class ScoredBatch:
    scores: np.ndarray  # [B, N, K]
    hits: int  # rows whose states came from the cache
    misses: int  # rows whose states were computed (encoder run on the distinct ones)
    encoder_seconds: float  # time in the user encoder for this batch (0 on an all-hit batch)


def cache_identity(checkpoint_sha256: str | None, precision: str | None, encoder_sha256: str) -> str:
    """What a cache entry belongs to: checkpoint, precision and the exact file that computes the states
    (an ONNX encoder or its TensorRT plan). A rebuilt or re-calibrated encoder is a new identity, so its
    entries never mix with an old one's."""
    return f"onerank/{checkpoint_sha256 or 'unknown'}/{precision or 'unknown'}/{encoder_sha256}"


def model_identity(encoder_onnx: str | Path, encoder_file: str | Path | None = None) -> str:
    """`cache_identity` from the encoder ONNX's metadata, for the encoder itself or for `encoder_file`
    built from it (a TensorRT plan)."""
    from onerank_export.export.metadata import read_metadata

    meta = read_metadata(encoder_onnx)
    precision = None if meta.precision is None else meta.precision.value
    return cache_identity(meta.checkpoint_sha256, precision, sha256_file(encoder_file or encoder_onnx))


class CachedUserScorer:
    """`encoder` and `scorer` are ONNX Runtime sessions (or anything with `run(outputs, feed)`)."""

    def __init__(self, config: OneRankConfig, encoder, scorer, cache: TieredStateCache, identity: str) -> None:
        self.encoder, self.scorer, self.cache, self.identity = encoder, scorer, cache, identity
        self.names = state_names(config)

    def score(self, feed: Mapping[str, np.ndarray]) -> ScoredBatch:
        """`feed`: a request already checked against the serving contract."""
        hist = [np.ascontiguousarray(feed[n]) for n in ENCODER_INPUTS]
        keys = history_keys(self.identity, *hist)
        found = self.cache.get_many(keys)
        missing = [i for i, s in enumerate(found) if s is None]
        seconds = 0.0
        if missing:
            first: dict[bytes, int] = {}  # one encoder row per distinct history
            for i in missing:
                first.setdefault(keys[i], i)
            rows = np.fromiter(first.values(), dtype=np.int64)
            started = time.perf_counter()
            outputs = self.encoder.run(list(self.names), {n: h[rows] for n, h in zip(ENCODER_INPUTS, hist,
                                                                                    strict=True)})
            seconds = time.perf_counter() - started
            computed = {key: {n: out[j] for n, out in zip(self.names, outputs, strict=True)}
                        for j, key in enumerate(first)}
            self.cache.put_many(list(computed.items()))
            for i in missing:
                found[i] = computed[keys[i]]
        states = {n: _stack([s[n] for s in found]) for n in self.names}
        (scores,) = self.scorer.run(None, {**states, **{n: feed[n] for n in SCORER_REQUEST_INPUTS}})
        return ScoredBatch(scores, len(keys) - len(missing), len(missing), seconds)


def _stack(rows: list[np.ndarray]) -> np.ndarray:
    # One row: a view with a batch axis, no copy (the cache's arrays are contiguous and read-only;
    # ONNX Runtime only reads its inputs).
    return rows[0][None] if len(rows) == 1 else np.stack(rows)


def half_sessions(encoder: str | Path, scorer: str | Path, threads: int):
    """The two halves' ONNX Runtime CPU sessions, as every cached path runs them: they run back to back,
    so their threads do not spin after a run (the encoder's spinning pool would hold the cores the scorer
    needs on a miss: measured +15% to +33% on a 2-core host, docs/benchmarks.md)."""
    from onerank_export.export.ort_session import cpu_session

    return (cpu_session(str(encoder), threads, inter_op_threads=1, spinning=False),
            cpu_session(str(scorer), threads, inter_op_threads=1, spinning=False))


def open_cached_scorer(config: OneRankConfig, version_dir: str | Path, parameters: Mapping[str, str],
                       threads: int, pb_utils=None) -> CachedUserScorer:
    """The cached scorer of a python-backend model, its cache built from the model's `user_cache_*`
    parameters: the halves as Triton models called through BLS when the parameters name them (a GPU
    target: TensorRT models), else the ONNX files of its version directory run in-process."""
    from onerank_export.serving import parameters as names
    from onerank_export.serving.user_cache import CacheSettings, build_cache

    settings = CacheSettings.from_parameters(parameters)
    if names.USER_ENCODER_MODEL_PARAMETER in parameters:
        from onerank_export.serving.bls import BlsSession

        encoder = BlsSession(pb_utils, parameters[names.USER_ENCODER_MODEL_PARAMETER], state_names(config))
        scorer = BlsSession(pb_utils, parameters[names.CANDIDATE_SCORER_MODEL_PARAMETER], ("scores",))
        return CachedUserScorer(config, encoder, scorer, build_cache(settings),
                                parameters[names.USER_CACHE_IDENTITY_PARAMETER])
    encoder_path = Path(version_dir) / names.USER_ENCODER_FILE
    encoder, scorer = half_sessions(encoder_path, Path(version_dir) / names.CANDIDATE_SCORER_FILE, threads)
    return CachedUserScorer(config, encoder, scorer, build_cache(settings), model_identity(encoder_path))
