"""Seeded synthetic ranking requests with structure a model can learn.

A hidden "world" holds item topics and latent vectors, popularity, price and discount. Each
request draws a user with sparse topic interests, a history from those interests, a
situational context (query topic, hour, geo, device) that shifts preferences, and candidates
mixing relevant and random items. Labels follow a click -> add-to-cart -> order cascade
(an order implies a cart implies a click).

Requests are dicts of numpy arrays under the serving-contract names, plus labels [B, N, K].
History is left-padded (most recent item last), candidates right-padded; 0 is padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onerank_export.config import OneRankConfig
from onerank_export.errors import ConfigError

NUM_TOPICS = 24
LATENT_DIM = 16
# The world holds float64 latents and attributes per item (~200 bytes each, more while it is made): a
# 20M-item config would need ~7 GB just to generate calibration requests. Items past this many are never
# drawn; the demo checkpoint (10,000 items) and anything up to it see the same world as before. For a real
# table, calibrate on real requests (`--calibration-data`). docs/embeddings.md has the measurement.
DEMO_WORLD_MAX_ITEMS = 1_000_000
NUM_HOURS, NUM_GEOS, NUM_DEVICES = 24, 16, 3
# Context buckets share one vocabulary; each field owns a range.
QUERY_OFFSET, HOUR_OFFSET, GEO_OFFSET, DEVICE_OFFSET = 1, 32, 64, 96
CONTEXT_IDS_NEEDED = DEVICE_OFFSET + NUM_DEVICES
VIEW, CLICK, CART, ORDER = 1, 2, 3, 4


@dataclass(frozen=True)
class RequestBatch:
    features: dict[str, np.ndarray]
    labels: np.ndarray  # [B, N, K] float32, 0/1

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: np.ndarray | slice) -> RequestBatch:
        return RequestBatch({k: v[index] for k, v in self.features.items()}, self.labels[index])


@dataclass(frozen=True)
class DemoWorld:
    cfg: OneRankConfig
    topic_centres: np.ndarray  # [T, E]
    item_topic: np.ndarray  # [V]
    item_latent: np.ndarray  # [V, E]
    log_pop: np.ndarray  # [V] standardised
    log_price: np.ndarray  # [V] standardised
    discount: np.ndarray  # [V] in [0, 0.5]
    feature_proj: np.ndarray  # [E, 4] public "content embedding" projection
    hour_topic: np.ndarray  # [24, T]
    geo_topic: np.ndarray  # [G, T]
    device_price_sensitivity: np.ndarray  # [3]

    @classmethod
    def create(cls, cfg: OneRankConfig, seed: int = 0) -> DemoWorld:
        if cfg.context_vocab_size < CONTEXT_IDS_NEEDED:
            raise ConfigError(f"demo data needs context_vocab_size >= {CONTEXT_IDS_NEEDED}, "
                              f"config has {cfg.context_vocab_size}")
        if cfg.action_vocab_size <= ORDER:
            raise ConfigError(f"demo data needs action_vocab_size >= {ORDER + 1}, config has {cfg.action_vocab_size}")
        rng = np.random.default_rng(seed)
        v = min(cfg.item_vocab_size, DEMO_WORLD_MAX_ITEMS)
        centres = rng.normal(size=(NUM_TOPICS, LATENT_DIM))
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        topic = rng.integers(0, NUM_TOPICS, size=v)
        latent = centres[topic] + 0.35 * rng.normal(size=(v, LATENT_DIM)) / np.sqrt(LATENT_DIM)
        log_pop = rng.normal(size=v)
        price_by_topic = rng.normal(size=NUM_TOPICS)
        log_price = 0.7 * price_by_topic[topic] + 0.7 * rng.normal(size=v)
        return cls(
            cfg=cfg,
            topic_centres=centres,
            item_topic=topic,
            item_latent=latent,
            log_pop=log_pop,
            log_price=(log_price - log_price.mean()) / log_price.std(),
            discount=rng.uniform(0, 0.5, size=v) * (rng.random(v) < 0.4),
            feature_proj=rng.normal(size=(LATENT_DIM, 4)) / np.sqrt(LATENT_DIM) * 2.0,
            hour_topic=0.6 * rng.normal(size=(NUM_HOURS, NUM_TOPICS)),
            geo_topic=0.6 * rng.normal(size=(NUM_GEOS, NUM_TOPICS)),
            device_price_sensitivity=np.array([0.3, 0.8, 1.3]),
        )

    # ------------------------------------------------------------------------------------------
    def _items_of(self, rng: np.random.Generator, topics: np.ndarray) -> np.ndarray:
        """One random item id (>= 1) of each requested topic."""
        ids = np.empty(topics.shape, dtype=np.int64)
        for t in np.unique(topics):
            pool = self._topic_items[t]
            sel = topics == t
            ids[sel] = pool[rng.integers(0, len(pool), size=int(sel.sum()))]
        return ids

    @property
    def _topic_items(self) -> list[np.ndarray]:
        cache = self.__dict__.get("_topic_items_cache")
        if cache is None:
            ids = np.arange(1, len(self.item_topic))
            cache = [ids[self.item_topic[1:] == t] for t in range(NUM_TOPICS)]
            object.__setattr__(self, "_topic_items_cache", cache)
        return cache

    def sample(self, rng: np.random.Generator, num_requests: int, hist_len: int, num_candidates: int,
               *, min_candidates: int | None = None) -> RequestBatch:
        """`num_requests` requests padded to [hist_len] history and [num_candidates] candidates."""
        cfg, b, L, n = self.cfg, num_requests, hist_len, num_candidates
        # Users: sparse interests over topics.
        interest = rng.dirichlet(np.full(NUM_TOPICS, 0.15), size=b)  # [B, T]
        user_vec = interest @ self.topic_centres
        user_vec /= np.linalg.norm(user_vec, axis=1, keepdims=True) + 1e-9
        # Context.
        top_topic = interest.argmax(1)
        query = np.where(rng.random(b) < 0.6, top_topic, rng.integers(0, NUM_TOPICS, b))
        hour = rng.integers(0, NUM_HOURS, b)
        geo = rng.integers(0, NUM_GEOS, b)
        device = rng.integers(0, NUM_DEVICES, b)

        # History: from the user's interests (85%) or anywhere; length varies, some empty.
        hist = np.zeros((b, L), dtype=np.int64)
        actions = np.zeros((b, L), dtype=np.int64)
        lengths = np.where(rng.random(b) < 0.05, 0, rng.integers(1, L + 1, b))
        for i in range(b):
            m = int(lengths[i])
            if m == 0:
                continue
            topics = np.where(rng.random(m) < 0.85, rng.choice(NUM_TOPICS, m, p=interest[i]),
                              rng.integers(0, NUM_TOPICS, m))
            items = self._items_of(rng, topics)
            aff = self.item_latent[items] @ user_vec[i]
            act = np.full(m, VIEW)
            clicked = rng.random(m) < _sigmoid(2.5 * aff - 0.5)
            act[clicked] = CLICK
            act[clicked & (rng.random(m) < 0.4)] = CART
            act[(act == CART) & (rng.random(m) < 0.5)] = ORDER
            hist[i, L - m:] = items
            actions[i, L - m:] = act

        # Candidates: relevant to the user, to the query, or random.
        lo = min_candidates if min_candidates is not None else max(1, n // 2)
        n_real = rng.integers(lo, n + 1, b)
        source = rng.random((b, n))
        user_topics = np.stack([rng.choice(NUM_TOPICS, n, p=interest[i]) for i in range(b)])
        cand_topic = np.where(source < 0.35, user_topics,
                              np.where(source < 0.65, query[:, None], rng.integers(0, NUM_TOPICS, (b, n))))
        cands = self._items_of(rng, cand_topic)
        valid = np.arange(n)[None, :] < n_real[:, None]
        cands[~valid] = 0

        # Labels: click -> cart -> order cascade driven by affinity, query match and context.
        lat = self.item_latent[cands]  # [B, N, E]
        aff = np.einsum("bne,be->bn", lat, user_vec)
        q_match = np.einsum("bne,be->bn", lat, self.topic_centres[query])
        topic_c = self.item_topic[cands]
        ctx = self.hour_topic[hour[:, None], topic_c] + self.geo_topic[geo[:, None], topic_c]
        price = self.log_price[cands]
        sens = self.device_price_sensitivity[device][:, None]
        click_p = _sigmoid(-2.0 + 3.0 * aff + 2.0 * q_match + ctx + 0.4 * self.log_pop[cands])
        cart_p = _sigmoid(-0.8 + 1.5 * aff + 4.0 * self.discount[cands] - 0.6 * sens * price)
        order_p = _sigmoid(-0.3 + 1.5 * aff + 1.0 * q_match - 1.0 * sens * price)
        click = rng.random((b, n)) < click_p
        cart = click & (rng.random((b, n)) < cart_p)
        order = cart & (rng.random((b, n)) < order_p)
        cascade = {"click": click, "cart": cart, "order": order}
        labels = np.stack([cascade.get(t, click) for t in cfg.tasks], axis=-1) & valid[..., None]

        # Dense features: price, popularity, discount, noisy content projection, noise.
        feats = np.zeros((b, n, cfg.num_cand_features), dtype=np.float32)
        dense = np.concatenate([
            price[..., None], self.log_pop[cands][..., None], self.discount[cands][..., None] * 4,
            lat @ self.feature_proj + 0.3 * rng.normal(size=(b, n, 4)), rng.normal(size=(b, n, 1)),
        ], axis=-1)
        k = min(cfg.num_cand_features, dense.shape[-1])
        feats[..., :k] = dense[..., :k]
        feats[~valid] = 0.0

        context = np.stack([QUERY_OFFSET + query, HOUR_OFFSET + hour, GEO_OFFSET + geo,
                            DEVICE_OFFSET + device], axis=1)
        context_ids = np.zeros((b, cfg.num_context_fields), dtype=np.int64)
        c = min(cfg.num_context_fields, context.shape[1])
        context_ids[:, :c] = context[:, :c]
        features = {
            "hist_item_ids": hist,
            "hist_action_ids": actions,
            "context_ids": context_ids,
            "cand_item_ids": cands.astype(np.int64),
            "cand_features": feats,
        }
        return RequestBatch(features, labels.astype(np.float32))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))
