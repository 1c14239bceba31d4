"""The shared tier of the user-state cache: Redis, across model instances and hosts (docs/user-cache.md).

A value is the row's states as safetensors bytes (no pickle: a value read from a shared server is
data, never code), with the format and the key it was written under in its metadata. One round trip
per batch: MGET for the lookups, one pipeline of `SET ... EX ttl` for the stores.

Redis is an accelerator, never a dependency of the answer: a refused connection, a timeout or an
error reply is a miss (or a dropped store), counted in `errors`, never an exception to the caller.
After a failure Redis is skipped for `retry_after` seconds (a circuit breaker), so a down Redis costs
nothing per request; one log line when it goes away and one when it answers again.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import safetensors.numpy

from onerank_export.errors import ConfigError, first_line
from onerank_export.redis_client import connect, mask_url

FORMAT = "onerank.user-state.v1"
LOG = logging.getLogger("onerank_export.serving.user_cache")


def encode(key: bytes, states: Mapping[str, np.ndarray]) -> bytes:
    """safetensors bytes of one row's states; the metadata binds them to their key."""
    arrays = {str(name): np.ascontiguousarray(array) for name, array in states.items()}
    return safetensors.numpy.save(arrays, metadata={"format": FORMAT, "key": key.hex()})


def decode(key: bytes, blob: bytes) -> dict[str, np.ndarray]:
    """The states stored under `key`; ValueError for anything that is not exactly what `encode` wrote."""
    if len(blob) < 8:
        raise ValueError(f"{len(blob)} bytes: shorter than a safetensors header")
    size = int.from_bytes(blob[:8], "little")
    if size > len(blob) - 8:
        raise ValueError(f"header of {size} bytes in a value of {len(blob)}")
    header = json.loads(blob[8:8 + size])
    meta = header.pop("__metadata__", None) or {}
    if meta.get("format") != FORMAT or meta.get("key") != key.hex():
        raise ValueError(f"metadata {meta}: not {FORMAT} states of this key")
    states = safetensors.numpy.load(blob)  # checks every tensor's byte range against its dtype and shape
    if set(states) != set(header):
        raise ValueError(f"tensors {sorted(states)} but header {sorted(header)}")
    for name, info in header.items():
        if list(states[name].shape) != info["shape"]:
            raise ValueError(f"{name}: shape {states[name].shape}, header {info['shape']}")
    return states


@dataclass(frozen=True)
class RedisStats:
    hits: int = 0
    misses: int = 0
    errors: int = 0  # failed round trips + corrupt values
    corrupt: int = 0  # values that did not decode (deleted)
    skipped: int = 0  # calls not made while the breaker was open
    stored: int = 0
    dropped: int = 0  # puts lost to a failure or an open breaker


class RedisStateCache:
    """get_many / put_many of per-row states in Redis, failures absorbed (see the module docstring)."""

    def __init__(self, url: str, *, ttl_seconds: int = 3600, key_prefix: str = "onerank:ustate:",
                 socket_timeout: float = 0.25, retry_after: float = 5.0, cluster: bool = False,
                 check: Callable[[dict[str, np.ndarray]], None] | None = None, client=None,
                 clock: Callable[[], float] = time.monotonic, logger: logging.Logger | None = None) -> None:
        """`check`: raises ValueError for states the caller cannot use (e.g. a wrong dtype or layer shape);
        such a value is treated as corrupt. `client`/`clock`: injected by tests."""
        if int(ttl_seconds) <= 0:
            raise ConfigError(f"Redis TTL {ttl_seconds} s: must be a whole number of seconds > 0")
        self.url = url
        self.ttl_seconds = int(ttl_seconds)
        self.prefix = key_prefix.encode()
        self.retry_after = float(retry_after)
        self.cluster = cluster
        self.check = check
        self.client = client if client is not None else connect(url, socket_timeout=socket_timeout,
                                                                cluster=cluster)
        self.clock = clock
        self.log = logger or LOG
        self._lock = threading.Lock()
        self._down = False
        self._retry_at = 0.0
        self._corrupt_logged = False
        self._counts = dict.fromkeys(("hits", "misses", "errors", "corrupt", "skipped", "stored", "dropped"), 0)

    # -- the breaker ---------------------------------------------------------------------------------

    def available(self) -> bool:
        """False while the breaker is open (within retry_after of the last failure)."""
        with self._lock:
            return not self._down or self.clock() >= self._retry_at

    def _failed(self, exc: BaseException) -> None:
        with self._lock:
            self._counts["errors"] += 1
            first = not self._down
            self._down = True
            self._retry_at = self.clock() + self.retry_after
        if first:
            self.log.warning("user-state cache: Redis at %s failed (%s); serving without it, retrying every "
                             "%.1f s", self._where(), first_line(exc), self.retry_after)

    def _answered(self) -> None:
        with self._lock:
            recovered = self._down
            self._down = False
        if recovered:
            self.log.warning("user-state cache: Redis at %s answers again; using it", self._where())

    def _where(self) -> str:
        return mask_url(self.url)

    def _count(self, **deltas: int) -> None:
        with self._lock:
            for name, delta in deltas.items():
                self._counts[name] += delta

    # -- lookups and stores --------------------------------------------------------------------------

    def get_many(self, keys: Sequence[bytes]) -> list[dict[str, np.ndarray] | None]:
        """States per key, None for a miss; one MGET round trip."""
        if not keys:
            return []
        if not self.available():
            self._count(skipped=1, misses=len(keys))
            return [None] * len(keys)
        names = [self.prefix + key for key in keys]
        try:
            values = self.client.mget_nonatomic(names) if self.cluster else self.client.mget(names)
        except Exception as exc:  # redis-py's errors, OSError, anything: Redis never fails a request
            self._failed(exc)
            self._count(misses=len(keys))
            return [None] * len(keys)
        self._answered()
        out: list[dict[str, np.ndarray] | None] = []
        corrupt = []
        for key, name, value in zip(keys, names, values, strict=True):
            states = None
            if value is not None:
                try:
                    decoded = decode(key, value)
                    if self.check is not None:
                        self.check(decoded)
                    states = decoded
                except Exception:  # any undecodable or unusable value is a miss
                    corrupt.append(name)
            out.append(states)
        hits = sum(s is not None for s in out)
        self._count(hits=hits, misses=len(keys) - hits, corrupt=len(corrupt), errors=len(corrupt))
        if corrupt:
            if not self._corrupt_logged:  # once: a stream of bad values must not flood the server log
                self._corrupt_logged = True
                self.log.warning("user-state cache: a Redis value under %s did not decode as %s; deleted and "
                                 "treated as a miss (further ones are only counted)", self._where(), FORMAT)
            self._delete(corrupt)
        return out

    def put_many(self, items: Sequence[tuple[bytes, Mapping[str, np.ndarray]]]) -> None:
        """SET key value EX ttl for every item, in one pipeline; a failure drops them (counted)."""
        items = list(items)
        if not items:
            return
        if not self.available():
            self._count(skipped=1, dropped=len(items))
            return
        try:
            pipe = self.client.pipeline(transaction=False)
            for key, states in items:
                pipe.set(self.prefix + key, encode(key, states), ex=self.ttl_seconds)
            pipe.execute()
        except Exception as exc:
            self._failed(exc)
            self._count(dropped=len(items))
            return
        self._answered()
        self._count(stored=len(items))

    def _delete(self, names: list[bytes]) -> None:
        try:
            self.client.delete(*names)
        except Exception as exc:
            self._failed(exc)

    def get(self, key: bytes) -> dict[str, np.ndarray] | None:
        return self.get_many([key])[0]

    def put(self, key: bytes, states: Mapping[str, np.ndarray]) -> None:
        self.put_many([(key, states)])

    def stats(self) -> RedisStats:
        with self._lock:
            return RedisStats(**self._counts)

    def close(self) -> None:
        self.client.close()
