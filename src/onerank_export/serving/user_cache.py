"""Cross-request user-state cache (issue 14): content-addressed keys, a byte-bounded in-process LRU, and
the tiered lookup (in-process first, then Redis: serving/redis_tier.py) the serving model plugs in.

The user side of OneRank never attends to candidates, so its per-layer keys and values depend only on
the request's history. A request row's states are cached under `history_key`: a hash of the model
identity and the exact history tensors. A changed history is a different key, so stale states can
never be served; nothing is ever invalidated, entries only age out (LRU, Redis TTL). docs/user-cache.md.

States are `dict[str, np.ndarray]` for ONE request row; the names are the caller's (e.g.
"user_key.0", "user_value.0", ..., "user_key_mask").

Triton model-config parameters (string values) read by `CacheSettings.from_parameters`; names stable:
    user_cache_bytes            in-process LRU budget per model instance: bytes, or with KiB/MiB/GiB
                                (default 512MiB; 0 turns the in-process tier off)
    user_cache_redis_url        redis://, rediss:// or unix:// URL of the shared tier (default: none)
    user_cache_redis_cluster    "true": the URL names a Redis Cluster node (default false)
    user_cache_redis_timeout_s  socket connect/read timeout of one Redis call (default 0.25)
    user_cache_ttl_s            expiry of a Redis entry, seconds (default 3600)
    user_cache_retry_after_s    after a Redis failure, skip Redis for this long (default 5)
    user_cache_key_prefix       prefix of every Redis key (default "onerank:ustate:")
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields

import numpy as np

from onerank_export.errors import ConfigError, RequestError

States = dict[str, np.ndarray]

KEY_DOMAIN = b"onerank.user-state-key"
KEY_VERSION = 1  # bump when the key's layout changes: old entries then simply stop matching
KEY_BYTES = 32
# Accounting of one LocalStateCache entry beyond its array data, measured with sys.getsizeof on
# CPython 3.11 / numpy 1.26: the key (65 B), its OrderedDict link and tuple (~150 B), the states dict
# (~230 B for up to 8 names, ~650 B for 32) -> ENTRY_OVERHEAD_BYTES; each array's ndarray header
# (112 B) plus its dict slot -> ARRAY_OVERHEAD_BYTES per array. Rounded up: the budget is a ceiling.
ENTRY_OVERHEAD_BYTES = 512
ARRAY_OVERHEAD_BYTES = 160
MIB = 1 << 20


# ----- keys -----------------------------------------------------------------------------------------


def _framed(h, data: bytes) -> None:
    # Length-prefixed: no two different field sequences hash the same byte stream.
    h.update(len(data).to_bytes(8, "little"))
    h.update(data)


def _identity_hash(model_identity: str):
    if not isinstance(model_identity, str) or not model_identity:
        raise RequestError("user-state cache: the model identity must be a non-empty string "
                           "(checkpoint sha256 + precision + graph identity)")
    h = hashlib.blake2b(digest_size=KEY_BYTES)
    _framed(h, KEY_DOMAIN)
    _framed(h, str(KEY_VERSION).encode())
    _framed(h, model_identity.encode())
    return h


def _ids(name: str, array, ndim: int) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != ndim or array.dtype.kind not in "iu":
        raise RequestError(f"user-state cache: {name} must be a {ndim}-D integer array, got "
                           f"{array.dtype} of shape {array.shape}; pass the request's history ids")
    return array


def _row_digest(prefix, items: np.ndarray, actions: np.ndarray) -> bytes:
    h = prefix.copy()
    for array in (items, actions):
        # The dtype's name (not its byte order) and the shape are hashed with the values normalised to
        # C-contiguous little-endian int64: equal ids in any memory layout give one key, while an int32
        # history (a different encoder input) or a different length never meets an int64 one.
        _framed(h, array.dtype.name.encode())
        _framed(h, repr(tuple(array.shape)).encode())
        _framed(h, np.ascontiguousarray(array, dtype="<i8").tobytes())
    return h.digest()


def history_key(model_identity: str, hist_item_ids, hist_action_ids) -> bytes:
    """The cache key of ONE request row: blake2b over the model identity and both 1-D history arrays."""
    items = _ids("hist_item_ids", hist_item_ids, 1)
    actions = _ids("hist_action_ids", hist_action_ids, 1)
    if items.shape != actions.shape:
        raise RequestError(f"user-state cache: hist_item_ids {items.shape} and hist_action_ids "
                           f"{actions.shape} differ in length; pass one row's matching histories")
    return _row_digest(_identity_hash(model_identity), items, actions)


def history_keys(model_identity: str, hist_item_ids, hist_action_ids) -> list[bytes]:
    """The keys of a batch: row b of [B, L] histories gives `history_key(identity, items[b], actions[b])`."""
    items = _ids("hist_item_ids", hist_item_ids, 2)
    actions = _ids("hist_action_ids", hist_action_ids, 2)
    if items.shape != actions.shape:
        raise RequestError(f"user-state cache: hist_item_ids {items.shape} and hist_action_ids "
                           f"{actions.shape} differ in shape; pass the request's [B, L] histories")
    prefix = _identity_hash(model_identity)  # hashed once, copied per row
    return [_row_digest(prefix, items[b], actions[b]) for b in range(items.shape[0])]


# ----- states and the in-process tier ---------------------------------------------------------------


def state_nbytes(states: Mapping[str, np.ndarray]) -> int:
    """Bytes of the arrays' data."""
    return sum(int(np.asarray(a).nbytes) for a in states.values())


def entry_nbytes(states: Mapping[str, np.ndarray]) -> int:
    """What one entry costs LocalStateCache's budget: the data plus the fixed overheads above."""
    return state_nbytes(states) + ENTRY_OVERHEAD_BYTES + ARRAY_OVERHEAD_BYTES * len(states)


def _frozen(states: Mapping[str, np.ndarray]) -> States:
    # Always a copy: a caller's array may be a view of a whole batch output (caching the view would pin
    # that buffer, uncounted) or be written to later. Read-only, so no caller can change what others read.
    out = {}
    for name, array in states.items():
        copy = np.array(array, copy=True, order="C")
        copy.flags.writeable = False
        out[str(name)] = copy
    return out


@dataclass(frozen=True)
class CacheStats:
    hits: int = 0
    misses: int = 0
    entries: int = 0
    bytes: int = 0  # entry_nbytes of what is stored, always <= max_bytes
    evictions: int = 0
    rejected: int = 0  # entries larger than the whole budget, not stored


class LocalStateCache:
    """A byte-bounded LRU of per-row states; thread-safe (Triton's python backend may call from threads)."""

    def __init__(self, max_bytes: int) -> None:
        if int(max_bytes) < 0:
            raise ConfigError(f"user-state cache: max_bytes {max_bytes} is negative; pass a byte budget >= 0")
        self.max_bytes = int(max_bytes)
        self._entries: OrderedDict[bytes, tuple[States, int]] = OrderedDict()
        self._lock = threading.Lock()
        self._bytes = self._hits = self._misses = self._evictions = self._rejected = 0

    def get(self, key: bytes) -> States | None:
        """The states (read-only arrays, in a new dict) and the entry becomes most recently used; or None."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self._misses += 1
                return None
            self._entries.move_to_end(key)
            self._hits += 1
            return dict(entry[0])

    def put(self, key: bytes, states: Mapping[str, np.ndarray]) -> bool:
        """Store a read-only copy as most recently used, evicting least recently used entries until the
        total is within max_bytes. False (counted as rejected) for an entry larger than the whole budget."""
        frozen = _frozen(states)  # copied outside the lock: other threads keep reading meanwhile
        size = entry_nbytes(frozen)
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            if size > self.max_bytes:
                self._rejected += 1
                return False
            self._entries[key] = (frozen, size)
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, (_, evicted) = self._entries.popitem(last=False)
                self._bytes -= evicted
                self._evictions += 1
            return True

    def get_many(self, keys: Sequence[bytes]) -> list[States | None]:
        return [self.get(key) for key in keys]

    def put_many(self, items: Iterable[tuple[bytes, Mapping[str, np.ndarray]]]) -> None:
        for key, states in items:
            self.put(key, states)

    def __contains__(self, key: bytes) -> bool:  # no effect on recency or stats
        with self._lock:
            return key in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def keys(self) -> list[bytes]:
        """Least to most recently used."""
        with self._lock:
            return list(self._entries)

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(self._hits, self._misses, len(self._entries), self._bytes, self._evictions,
                              self._rejected)


# ----- both tiers -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TieredStats:
    local_hits: int = 0
    shared_hits: int = 0
    misses: int = 0  # in neither tier: the caller runs the user encoder
    entries: int = 0  # in-process tier
    bytes: int = 0
    evictions: int = 0
    rejected: int = 0
    shared_errors: int = 0  # failed Redis round trips (each one a miss or a dropped put, never an exception)


class TieredStateCache:
    """In-process LRU first, then the shared tier (a RedisStateCache, or anything with get_many/put_many)
    for the keys it lacks; shared hits are promoted into the in-process tier. Either tier may be None."""

    def __init__(self, local: LocalStateCache | None, shared=None) -> None:
        self.local = local
        self.shared = shared
        self._lock = threading.Lock()
        self._local_hits = self._shared_hits = self._misses = 0

    def get_many(self, keys: Sequence[bytes]) -> list[States | None]:
        found = self.local.get_many(keys) if self.local is not None else [None] * len(keys)
        local_hits = sum(s is not None for s in found)
        missing = [i for i, s in enumerate(found) if s is None]
        shared_hits = 0
        if missing and self.shared is not None:
            for i, states in zip(missing, self.shared.get_many([keys[i] for i in missing]), strict=True):
                if states is not None:
                    found[i] = states
                    shared_hits += 1
                    if self.local is not None:
                        self.local.put(keys[i], states)
        with self._lock:
            self._local_hits += local_hits
            self._shared_hits += shared_hits
            self._misses += len(keys) - local_hits - shared_hits
        return found

    def put_many(self, items: Sequence[tuple[bytes, Mapping[str, np.ndarray]]]) -> None:
        items = list(items)
        if self.local is not None:
            self.local.put_many(items)
        if self.shared is not None and items:
            self.shared.put_many(items)

    def get(self, key: bytes) -> States | None:
        return self.get_many([key])[0]

    def put(self, key: bytes, states: Mapping[str, np.ndarray]) -> None:
        self.put_many([(key, states)])

    def stats(self) -> TieredStats:
        local = self.local.stats() if self.local is not None else CacheStats()
        errors = self.shared.stats().errors if self.shared is not None else 0
        with self._lock:
            return TieredStats(self._local_hits, self._shared_hits, self._misses, local.entries, local.bytes,
                               local.evictions, local.rejected, errors)


# ----- settings -------------------------------------------------------------------------------------

_SIZE = re.compile(r"^\s*(\d+)\s*(B|KiB|MiB|GiB)?\s*$")
_UNITS = {None: 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}


# Triton model parameter -> CacheSettings field (the module docstring documents them).
PARAMETERS = {"user_cache_bytes": "max_bytes", "user_cache_redis_url": "redis_url",
              "user_cache_redis_cluster": "redis_cluster", "user_cache_redis_timeout_s": "redis_timeout_s",
              "user_cache_ttl_s": "ttl_s", "user_cache_retry_after_s": "retry_after_s",
              "user_cache_key_prefix": "key_prefix"}


@dataclass(frozen=True)
class CacheSettings:
    max_bytes: int = 512 * MIB
    redis_url: str | None = None
    redis_cluster: bool = False
    redis_timeout_s: float = 0.25
    ttl_s: int = 3600
    retry_after_s: float = 5.0
    key_prefix: str = "onerank:ustate:"

    @classmethod
    def from_parameters(cls, parameters: Mapping[str, str]) -> CacheSettings:
        """Read the `user_cache_*` entries of a Triton model config's string parameters; others are ignored."""
        values: dict = {}
        for name, raw in parameters.items():
            if not name.startswith("user_cache_"):
                continue
            if name not in PARAMETERS:
                raise ConfigError(f"model parameter {name}: unknown; use one of {', '.join(PARAMETERS)}")
            values[PARAMETERS[name]] = _parse(name, str(raw).strip())
        return cls(**values)

    def parameters(self) -> dict[str, str]:
        """The inverse of from_parameters (for writing a model config)."""
        names = {field: name for name, field in PARAMETERS.items()}
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                out[names[f.name]] = str(value).lower() if isinstance(value, bool) else str(value)
        return out


def _parse(name: str, raw: str):
    if name == "user_cache_bytes":
        match = _SIZE.match(raw)
        if not match:
            raise ConfigError(f"model parameter {name}={raw!r}: not a size; use bytes, or a number with "
                              "KiB, MiB or GiB (e.g. 512MiB), or 0 to turn the in-process cache off")
        return int(match[1]) * _UNITS[match[2]]
    if name == "user_cache_redis_url":
        if raw and not raw.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError(f"model parameter {name}={raw!r}: not a Redis URL; use redis://host:port/db, "
                              "rediss:// (TLS) or unix:///path/to/socket, or leave it empty for no shared tier")
        return raw or None
    if name == "user_cache_redis_cluster":
        if raw.lower() not in ("true", "false"):
            raise ConfigError(f"model parameter {name}={raw!r}: use true or false")
        return raw.lower() == "true"
    if name == "user_cache_key_prefix":
        return raw
    try:
        value = int(raw) if name == "user_cache_ttl_s" else float(raw)
    except ValueError:
        value = None
    if value is None or not value > 0 or value == float("inf"):
        kind = "a whole number of seconds" if name == "user_cache_ttl_s" else "a number of seconds"
        raise ConfigError(f"model parameter {name}={raw!r}: use {kind} > 0")
    return value


def build_cache(settings: CacheSettings, *, logger=None) -> TieredStateCache:
    """The cache the serving model uses: the in-process tier (unless max_bytes is 0) and Redis if a URL is set."""
    local = LocalStateCache(settings.max_bytes) if settings.max_bytes > 0 else None
    shared = None
    if settings.redis_url:
        from onerank_export.serving.redis_tier import RedisStateCache

        shared = RedisStateCache(settings.redis_url, ttl_seconds=settings.ttl_s, key_prefix=settings.key_prefix,
                                 socket_timeout=settings.redis_timeout_s, retry_after=settings.retry_after_s,
                                 cluster=settings.redis_cluster, logger=logger)
    return TieredStateCache(local, shared)
