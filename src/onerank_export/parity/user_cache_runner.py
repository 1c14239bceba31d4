"""The cached path as a parity runner: every case is scored twice through `CachedUserScorer`, a miss
(user encoder + candidate scorer) and then a hit (cached states + scorer); the hit must be a hit and
give the miss's scores bit for bit, and the suite compares them with eager like any runner."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from onerank_export.errors import StageError
from onerank_export.parity.runner import Runner

RUNNER_NAME = "user-cache"


class UserCacheRunner(Runner):
    def __init__(self, encoder: Path, scorer: Path, name: str | None = None, cache_bytes: int = 256 << 20) -> None:
        super().__init__(name or RUNNER_NAME)
        self.encoder_path, self.scorer_path, self.cache_bytes = Path(encoder), Path(scorer), cache_bytes
        self.scorer = None

    def activate_impl(self) -> None:
        from onerank_export.export.metadata import read_metadata
        from onerank_export.export.ort_session import default_threads
        from onerank_export.io import sha256_file
        from onerank_export.serving.cached_scoring import CachedUserScorer, cache_identity, half_sessions
        from onerank_export.serving.user_cache import LocalStateCache, TieredStateCache

        meta = read_metadata(self.encoder_path)
        if meta.config is None:
            raise StageError(f"{self.encoder_path}: no OneRank config in its metadata; export it with onerank-export")
        encoder, scorer = half_sessions(self.encoder_path, self.scorer_path, default_threads())
        identity = cache_identity(meta.checkpoint_sha256, meta.precision and meta.precision.value,
                                  sha256_file(self.encoder_path))
        self.scorer = CachedUserScorer(meta.config, encoder, scorer,
                                       TieredStateCache(LocalStateCache(self.cache_bytes)), identity)

    def infer_impl(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = len(feed["hist_item_ids"])
        first = self.scorer.score(feed)
        second = self.scorer.score(feed)
        if second.hits != rows:
            raise StageError(f"user-state cache: the same request again had {second.misses} of {rows} rows miss")
        if not np.array_equal(first.scores, second.scores):
            worst = float(np.abs(first.scores - second.scores).max())
            raise StageError(f"user-state cache: a hit scored differently from the miss (max_abs {worst:.2e})")
        return {"scores": second.scores}

    def deactivate_impl(self) -> None:
        self.scorer = None


class TensorRTUserCacheRunner(UserCacheRunner):
    """The cached path on TensorRT: the user encoder plan -> states (cached) -> the candidate scorer plan,
    through the same `CachedUserScorer`, miss then hit. The plans' roles are read from the `.json`
    their build wrote, so a swapped pair is refused before anything loads."""

    def __init__(self, encoder_plan: Path, scorer_plan: Path, config, plugin_library: Path | None = None,
                 name: str | None = None, cache_bytes: int = 256 << 20) -> None:
        from onerank_export.parity.tensorrt_runner import default_plugin_for

        super().__init__(encoder_plan, scorer_plan, name or f"{RUNNER_NAME}-tensorrt", cache_bytes)
        self.config = config
        self.plugin_library = Path(plugin_library) if plugin_library is not None else default_plugin_for(
            Path(scorer_plan))
        self.sessions: list = []

    def activate_impl(self) -> None:
        from onerank_export.engine.tensorrt.plan_metadata import metadata_path, plan_role, read_plan_metadata
        from onerank_export.parity.tensorrt_runner import EngineSession
        from onerank_export.serving.cached_scoring import CachedUserScorer, cache_identity
        from onerank_export.serving.user_cache import LocalStateCache, TieredStateCache

        metas = {}
        for path, role in ((self.encoder_path, "user_encoder"), (self.scorer_path, "candidate_scorer")):
            metas[role] = read_plan_metadata(metadata_path(path))
            if plan_role(metas[role]) != role:
                raise StageError(f"{path.name} is a {plan_role(metas[role])} engine (its .json says so), not the "
                                 f"{role}; pass the user encoder plan first, then the candidate scorer plan")
        # The encoder has no plugin node: only the scorer loads the library.
        encoder, scorer = EngineSession(self.encoder_path), EngineSession(self.scorer_path, self.plugin_library)
        for session in (encoder, scorer):
            session.open()  # RunnerUnavailable where CUDA / TensorRT are missing
            self.sessions.append(session)
        meta = metas["user_encoder"]
        identity = cache_identity("tensorrt", meta["precision"], meta["plan_sha256"])  # a rebuilt plan: a new one
        cache = TieredStateCache(LocalStateCache(self.cache_bytes))
        self.scorer = CachedUserScorer(self.config, encoder, scorer, cache, identity)

    def deactivate_impl(self) -> None:
        for session in self.sessions:
            session.close()
        self.sessions = []
        self.scorer = None
