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
        import onnx

        from onerank_export.export.metadata import model_metadata, read_metadata
        from onerank_export.export.ort_session import cpu_session, default_threads
        from onerank_export.serving.cached_scoring import CachedUserScorer, model_identity
        from onerank_export.serving.user_cache import LocalStateCache, TieredStateCache

        config = read_metadata(self.encoder_path).config
        if config is None:
            raise StageError(f"{self.encoder_path}: no OneRank config in its metadata; export it with onerank-export")
        metadata = model_metadata(onnx.load(str(self.encoder_path), load_external_data=False))
        threads = default_threads()
        self.scorer = CachedUserScorer(config, cpu_session(str(self.encoder_path), threads),
                                       cpu_session(str(self.scorer_path), threads),
                                       TieredStateCache(LocalStateCache(self.cache_bytes)),
                                       model_identity(self.encoder_path, metadata))

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
