"""The user-state cache's keys, its in-process LRU, the tiered lookup and its settings (serving/user_cache.py).
Redis itself: test_redis_tier.py."""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onerank_export.errors import ConfigError, RequestError
from onerank_export.serving.user_cache import (
    ARRAY_OVERHEAD_BYTES,
    ENTRY_OVERHEAD_BYTES,
    KEY_BYTES,
    CacheSettings,
    CacheStats,
    LocalStateCache,
    TieredStateCache,
    TieredStats,
    build_cache,
    entry_nbytes,
    history_key,
    history_keys,
    state_nbytes,
)

ID = "sha256:ab12|fp16|user_encoder:v1"
ids = st.lists(st.integers(0, 2**40), min_size=0, max_size=24)


def row(values) -> np.ndarray:
    return np.asarray(values, dtype=np.int64)


def states(nbytes: int, fill: float = 1.0) -> dict[str, np.ndarray]:
    """One float32 array of `nbytes` (a multiple of 4) and a small mask."""
    return {"user_key.0": np.full(nbytes // 4, fill, np.float32), "user_key_mask": np.ones(4, bool)}


# ----- keys ---------------------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(items=ids, data=st.data())
def test_equal_histories_give_equal_keys_in_any_memory_layout(items, data):
    actions = row(data.draw(st.lists(st.integers(0, 7), min_size=len(items), max_size=len(items))))
    key = history_key(ID, row(items), actions)
    assert len(key) == KEY_BYTES
    # A strided view and a big-endian copy hold the same ids: the same key.
    strided = np.repeat(row(items), 2)[::2]
    assert history_key(ID, strided, actions.astype(">i8")) == key
    if items:  # a plain list of ints (np.asarray of an empty list would be float64: refused)
        assert history_key(ID, list(items), actions) == key


@settings(max_examples=60, deadline=None)
@given(items=ids.filter(bool), data=st.data())
def test_any_changed_id_action_or_length_gives_another_key(items, data):
    n = len(items)
    actions = row(data.draw(st.lists(st.integers(0, 7), min_size=n, max_size=n)))
    items = row(items)
    key = history_key(ID, items, actions)
    i = data.draw(st.integers(0, n - 1))
    delta = data.draw(st.integers(1, 2**20))
    changed = items.copy()
    changed[i] += delta
    assert history_key(ID, changed, actions) != key
    changed_actions = actions.copy()
    changed_actions[i] += delta
    assert history_key(ID, items, changed_actions) != key
    assert history_key(ID, items[:-1], actions[:-1]) != key  # a shorter history (e.g. padding dropped)
    assert history_key(ID, np.append(items, 0), np.append(actions, 0)) != key  # one more (padding) slot
    assert history_key(ID + "x", items, actions) != key  # another model


def test_dtype_field_order_and_identity_are_part_of_the_key():
    items, actions = row([3, 1, 4]), row([1, 0, 1])
    key = history_key(ID, items, actions)
    assert history_key(ID, items.astype(np.int32), actions) != key  # equal values, another dtype
    assert history_key(ID, actions, items) != key  # items and actions swapped
    # Framing: moving one id from the item history to the action history must not collide.
    assert history_key(ID, row([3, 1]), row([4, 1, 0, 1])[:2]) != history_key(ID, row([3]), row([1]))
    assert history_key(ID, row([]), row([])) != history_key(ID + "|", row([]), row([]))


def test_batch_keys_are_the_row_keys():
    rng = np.random.default_rng(0)
    items = rng.integers(0, 10**6, size=(5, 16))
    actions = rng.integers(0, 4, size=(5, 16))
    items[3] = items[1]
    actions[3] = actions[1]
    keys = history_keys(ID, items, actions)
    assert keys == [history_key(ID, items[b], actions[b]) for b in range(5)]
    assert keys[1] == keys[3] and len(set(keys)) == 4


@pytest.mark.parametrize(("call", "message"), [
    (lambda: history_key(ID, np.zeros((2, 3), np.int64), np.zeros((2, 3), np.int64)),
     "hist_item_ids must be a 1-D integer array, got int64 of shape (2, 3)"),
    (lambda: history_key(ID, row([1, 2]), np.array([0.5, 1.0])), "hist_action_ids must be a 1-D integer array"),
    (lambda: history_key(ID, row([1, 2]), row([1])), "differ in length"),
    (lambda: history_keys(ID, np.zeros((2, 3), np.int64), np.zeros((2, 4), np.int64)), "differ in shape"),
    (lambda: history_key("", row([1]), row([1])), "model identity must be a non-empty string"),
])
def test_bad_histories_are_one_line_errors(call, message):
    with pytest.raises(RequestError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        call()
    assert "\n" not in str(info.value)


# ----- the in-process LRU -------------------------------------------------------------------------------------


def test_entry_bytes_are_the_data_plus_the_documented_overheads():
    s = states(4000)
    assert state_nbytes(s) == 4004
    assert entry_nbytes(s) == 4004 + ENTRY_OVERHEAD_BYTES + 2 * ARRAY_OVERHEAD_BYTES


def test_least_recently_used_entry_is_evicted_first():
    one = entry_nbytes(states(1000))
    cache = LocalStateCache(3 * one)
    for key in (b"a", b"b", b"c"):
        assert cache.put(key, states(1000))
    assert cache.get(b"a") is not None  # a becomes most recently used
    cache.put(b"d", states(1000))
    assert cache.keys() == [b"c", b"a", b"d"]
    cache.put(b"e", states(2000))  # larger: evicts two
    assert cache.keys() == [b"d", b"e"]
    assert cache.stats() == CacheStats(hits=1, misses=0, entries=2, bytes=one + entry_nbytes(states(2000)),
                                       evictions=3, rejected=0)


def test_an_entry_larger_than_the_budget_is_rejected_and_evicts_nothing():
    cache = LocalStateCache(entry_nbytes(states(1000)))
    assert cache.put(b"a", states(1000))
    assert not cache.put(b"big", states(1004))
    assert cache.keys() == [b"a"]
    assert cache.get(b"big") is None
    assert cache.stats() == CacheStats(hits=0, misses=1, entries=1, bytes=entry_nbytes(states(1000)),
                                       evictions=0, rejected=1)
    assert not LocalStateCache(0).put(b"a", states(4))


def test_cached_states_are_read_only_copies():
    cache = LocalStateCache(1 << 20)
    batch = np.arange(4 * 256, dtype=np.float32).reshape(4, 256)  # a batch output; row 1 is a view of it
    cache.put(b"k", {"user_key.0": batch[1]})
    batch[1] = -1  # the caller reuses its buffer
    got = cache.get(b"k")
    np.testing.assert_array_equal(got["user_key.0"], np.arange(256, 512, dtype=np.float32))
    assert got["user_key.0"].base is not batch and not got["user_key.0"].flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        got["user_key.0"][0] = 7
    got.pop("user_key.0")  # the returned dict is the caller's
    assert set(cache.get(b"k")) == {"user_key.0"}
    assert cache.stats().bytes == 1024 + ENTRY_OVERHEAD_BYTES + ARRAY_OVERHEAD_BYTES  # the row, not the batch


def test_re_putting_a_key_replaces_it_and_counts_it_once():
    cache = LocalStateCache(1 << 20)
    cache.put(b"k", states(400))
    cache.put(b"k", states(800, fill=2.0))
    assert len(cache) == 1 and cache.stats().bytes == entry_nbytes(states(800))
    assert cache.get(b"k")["user_key.0"][0] == 2.0


ops = st.lists(st.tuples(st.sampled_from(["put", "get"]), st.integers(0, 11), st.integers(0, 40)), max_size=80)


@settings(max_examples=80, deadline=None)
@given(ops=ops, budget_units=st.integers(0, 25))
def test_random_puts_and_gets_follow_a_reference_lru_and_never_exceed_the_budget(ops, budget_units):
    unit = 64
    budget = entry_nbytes(states(0)) + budget_units * unit  # room for budget_units units of data
    cache = LocalStateCache(budget)
    model: OrderedDict[bytes, int] = OrderedDict()  # key -> entry bytes, least recent first
    hits = misses = evictions = rejected = 0
    for op, k, size in ops:
        key = bytes([k])
        if op == "get":
            got = cache.get(key)
            assert (got is not None) == (key in model)
            if key in model:
                model.move_to_end(key)
                hits += 1
                assert entry_nbytes(got) == model[key]  # this key's states, not another's
            else:
                misses += 1
            continue
        s = states(size * unit)
        stored = cache.put(key, s)
        model.pop(key, None)
        assert stored == (entry_nbytes(s) <= budget)
        if not stored:
            rejected += 1
        else:
            model[key] = entry_nbytes(s)
            while sum(model.values()) > budget:
                model.popitem(last=False)
                evictions += 1
        stats = cache.stats()
        assert stats.bytes <= budget
        assert cache.keys() == list(model)
    assert cache.stats() == CacheStats(hits, misses, len(model), sum(model.values()), evictions, rejected)


def test_concurrent_puts_and_gets_keep_the_books_straight():
    budget = 20 * entry_nbytes(states(4096))
    cache = LocalStateCache(budget)
    errors = []

    def work(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            for _ in range(400):
                key = bytes([int(rng.integers(0, 60))])
                if rng.random() < 0.5:
                    cache.put(key, states(4096, fill=float(key[0])))
                elif (got := cache.get(key)) is not None:
                    assert got["user_key.0"][0] == key[0]  # never another key's states
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    stats = cache.stats()
    assert stats.bytes == stats.entries * entry_nbytes(states(4096)) <= budget
    assert stats.hits + stats.misses > 0 and stats.entries == len(cache.keys()) <= 20


# ----- tiers --------------------------------------------------------------------------------------------------


class DictTier:
    """A shared tier in a dict, counting its calls."""

    def __init__(self) -> None:
        self.data: dict[bytes, dict] = {}
        self.calls: list[tuple[str, int]] = []

    def get_many(self, keys):
        self.calls.append(("get_many", len(keys)))
        return [self.data.get(k) for k in keys]

    def put_many(self, items):
        self.calls.append(("put_many", len(items)))
        self.data.update({k: {n: a.copy() for n, a in s.items()} for k, s in items})

    def stats(self):
        class S:
            errors = 0
        return S()


def test_tiered_asks_the_shared_tier_only_for_local_misses_and_promotes_its_hits():
    shared = DictTier()
    cache = TieredStateCache(LocalStateCache(1 << 20), shared)
    cache.put_many([(b"a", states(400)), (b"b", states(400))])
    assert shared.calls == [("put_many", 2)]
    other = TieredStateCache(LocalStateCache(1 << 20), shared)  # another instance: empty local tier
    got = other.get_many([b"a", b"x", b"b"])
    assert [g is not None for g in got] == [True, False, True]
    assert shared.calls[-1] == ("get_many", 3)
    got = other.get_many([b"a", b"b", b"x"])  # a and b were promoted: only x goes to the shared tier
    assert shared.calls[-1] == ("get_many", 1)
    assert other.stats() == TieredStats(local_hits=2, shared_hits=2, misses=2, entries=2,
                                        bytes=2 * entry_nbytes(states(400)), evictions=0, rejected=0,
                                        shared_errors=0)
    assert other.get_many([b"a"]) and shared.calls[-1] == ("get_many", 1)  # a local hit: no shared call


def test_tiered_without_a_local_tier_and_without_a_shared_tier():
    shared = DictTier()
    remote_only = TieredStateCache(None, shared)
    remote_only.put(b"a", states(8))
    assert remote_only.get(b"a") is not None and remote_only.stats().shared_hits == 1
    local_only = TieredStateCache(LocalStateCache(1 << 20))
    assert local_only.get(b"a") is None
    local_only.put(b"a", states(8))
    assert local_only.get(b"a") is not None
    assert local_only.stats() == TieredStats(local_hits=1, misses=1, entries=1, bytes=entry_nbytes(states(8)))


# ----- settings -----------------------------------------------------------------------------------------------


def test_settings_defaults_and_parameters_round_trip():
    default = CacheSettings.from_parameters({"onerank.config": "{}"})  # other parameters are ignored
    assert default == CacheSettings() and default.max_bytes == 512 << 20 and default.redis_url is None
    custom = CacheSettings.from_parameters({
        "user_cache_bytes": "64MiB", "user_cache_redis_url": "redis://cache:6379/2", "user_cache_ttl_s": "600",
        "user_cache_retry_after_s": "1.5", "user_cache_redis_cluster": "TRUE", "user_cache_redis_timeout_s": "0.1",
        "user_cache_key_prefix": "svc1:"})
    assert custom == CacheSettings(max_bytes=64 << 20, redis_url="redis://cache:6379/2", ttl_s=600,
                                   retry_after_s=1.5, redis_cluster=True, redis_timeout_s=0.1, key_prefix="svc1:")
    assert CacheSettings.from_parameters(custom.parameters()) == custom
    assert CacheSettings.from_parameters({"user_cache_bytes": "1000"}).max_bytes == 1000
    assert CacheSettings.from_parameters({"user_cache_redis_url": " "}).redis_url is None


@pytest.mark.parametrize(("name", "value", "message"), [
    ("user_cache_bytes", "lots", "user_cache_bytes='lots': not a size; use bytes, or a number with KiB, MiB or GiB"),
    ("user_cache_bytes", "1.5GB", "not a size"),
    ("user_cache_redis_url", "cache:6379", "not a Redis URL; use redis://host:port/db"),
    ("user_cache_ttl_s", "0", "user_cache_ttl_s='0': use a whole number of seconds > 0"),
    ("user_cache_ttl_s", "1.5", "whole number of seconds"),
    ("user_cache_retry_after_s", "-1", "user_cache_retry_after_s='-1': use a number of seconds > 0"),
    ("user_cache_redis_timeout_s", "nan", "use a number of seconds > 0"),
    ("user_cache_redis_cluster", "yes", "use true or false"),
    ("user_cache_size", "1", "user_cache_size: unknown; use one of user_cache_bytes, user_cache_redis_url"),
])
def test_bad_parameters_are_one_line_errors_naming_the_parameter(name, value, message):
    with pytest.raises(ConfigError) as info:
        CacheSettings.from_parameters({name: value})
    assert message in str(info.value) and "\n" not in str(info.value)


def test_build_cache_follows_the_settings():
    cache = build_cache(CacheSettings(max_bytes=1 << 20))
    assert cache.local.max_bytes == 1 << 20 and cache.shared is None
    assert build_cache(CacheSettings(max_bytes=0)).local is None
