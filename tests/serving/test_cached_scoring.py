"""The cached path scores exactly what the single graph scores: a miss runs the user encoder, a hit
reads the states it wrote, and a changed history can never reuse another history's states."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import request

from onerank_export import spec
from onerank_export.export.ort_session import cpu_session
from onerank_export.serving.cached_scoring import CachedUserScorer, model_identity
from onerank_export.serving.user_cache import LocalStateCache, TieredStateCache
from onerank_export.user_states import state_nbytes_per_row


class CountingSession:
    def __init__(self, session):
        self.session, self.rows = session, []

    def run(self, outputs, feed):
        self.rows.append(len(next(iter(feed.values()))))
        return self.session.run(outputs, feed)


@pytest.fixture(scope="module")
def halves(tiny_halves):
    return tiny_halves  # (model, encoder, scorer), exported once per session (conftest.py)


def _scorer(halves, max_bytes=1 << 30):
    model, enc, sc = halves
    encoder = CountingSession(cpu_session(str(enc), 1))
    cache = TieredStateCache(LocalStateCache(max_bytes))
    identity = model_identity(enc)  # the checkpoint "cd" * 32 and fp32 its metadata records
    return CachedUserScorer(model.cfg, encoder, cpu_session(str(sc), 1), cache, identity), encoder


def _eager(model, feed):
    with torch.no_grad():
        return model(**{k: torch.from_numpy(v) for k, v in feed.items()}).scores.numpy()


def test_miss_then_hit_gives_identical_scores_equal_to_eager(halves):
    model = halves[0]
    scorer, encoder = _scorer(halves)
    feed = request(model.cfg, 3, 13, 5, seed=1)
    feed["hist_item_ids"][1] = 0  # an empty history is a history too
    feed["hist_action_ids"][1] = 0
    first = scorer.score(feed)
    second = scorer.score(feed)
    assert (first.misses, first.hits, second.misses, second.hits) == (3, 0, 0, 3)
    assert encoder.rows == [3]  # the hit ran no encoder
    assert first.encoder_seconds > 0 and second.encoder_seconds == 0
    assert np.array_equal(first.scores, second.scores)
    assert np.abs(second.scores - _eager(model, feed)).max() <= 1e-6
    stats = scorer.cache.stats()
    assert (stats.local_hits, stats.misses, stats.entries) == (3, 3, 3)
    assert stats.bytes >= 3 * state_nbytes_per_row(model.cfg, 13)


def test_changed_history_id_or_action_is_a_miss(halves):
    model = halves[0]
    scorer, _ = _scorer(halves)
    feed = request(model.cfg, 1, 9, 4, seed=2, )
    scorer.score(feed)
    for name in ("hist_item_ids", "hist_action_ids"):
        changed = {k: v.copy() for k, v in feed.items()}
        changed[name][0, -1] = changed[name][0, -1] % (model.cfg.action_vocab_size - 1) + 1 \
            if name == "hist_action_ids" else changed[name][0, -1] % (model.cfg.item_vocab_size - 1) + 1
        assert not np.array_equal(changed[name], feed[name])
        result = scorer.score(changed)
        assert result.misses == 1
        assert np.abs(result.scores - _eager(model, changed)).max() <= 1e-6


def test_same_history_with_other_candidates_hits_and_scores_them_exactly(halves):
    model = halves[0]
    scorer, encoder = _scorer(halves)
    page1 = request(model.cfg, 1, 20, 6, seed=3)
    page2 = request(model.cfg, 1, 20, 11, seed=4)
    page2.update({k: page1[k] for k in ("hist_item_ids", "hist_action_ids")})
    scorer.score(page1)
    result = scorer.score(page2)
    assert result.hits == 1 and encoder.rows == [1]
    assert np.abs(result.scores - _eager(model, page2)).max() <= 1e-6


def test_batch_runs_the_encoder_once_per_distinct_missing_history(halves):
    model = halves[0]
    scorer, encoder = _scorer(halves)
    seen = request(model.cfg, 1, 10, 3, seed=5)
    scorer.score(seen)
    batch = request(model.cfg, 4, 10, 3, seed=6)
    for row in (0, 2):  # rows 0 and 2: a cached history; row 3: the same new history as row 1
        for name in ("hist_item_ids", "hist_action_ids"):
            batch[name][row] = seen[name][0]
    batch["hist_item_ids"][3], batch["hist_action_ids"][3] = batch["hist_item_ids"][1], batch["hist_action_ids"][1]
    result = scorer.score(batch)
    assert (result.hits, result.misses) == (2, 2)
    assert encoder.rows == [1, 1]
    assert np.abs(result.scores - _eager(model, batch)).max() <= 1e-6


def test_a_small_byte_limit_evicts_and_stays_exact(halves):
    model = halves[0]
    row = state_nbytes_per_row(model.cfg, 8)
    scorer, _ = _scorer(halves, max_bytes=3 * row + 3 * 4096)
    rng = np.random.default_rng(0)
    for i in range(12):
        feed = spec.random_request(model.cfg, rng, 1, 8, 3)
        result = scorer.score(feed)
        assert np.abs(result.scores - _eager(model, feed)).max() <= 1e-6, i
        stats = scorer.cache.stats()
        assert stats.bytes <= 3 * row + 3 * 4096
    assert stats.entries >= 3 and stats.evictions == 12 - stats.entries
