"""The Redis lookup backend: a store's table in Redis, for tables past one host (docs/embeddings.md, "Redis
backend"). `push` bulk-loads a table from a store directory; `RedisTable.lookup` reads rows back.

Layout, one key per row so a Redis Cluster spreads the rows over its shards by key hash:
  <prefix><table>:<row>  the row's bytes as stored (little-endian, the store's dtype); for int8 followed by the
                         row's float32 scale (4 bytes), so one GET dequantizes a row
  <prefix>index          JSON: the store's index with this table's entry. `push` writes it LAST, after every row
                         key is counted and a random sample is read back byte-equal, and deletes it FIRST; a
                         reader refuses a prefix without it, so an interrupted or failed push is never served.
Failures are one line naming the table and row: Redis down or a row key missing is ServiceUnavailable (Triton
UNAVAILABLE: the request may work later), an id past the table under the "error" policy is RequestError
(INVALID_ARGUMENT).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from onerank_export.embeddings.source import StoreSource
from onerank_export.embeddings.store import FORMAT
from onerank_export.errors import ConfigError, RequestError, ServiceUnavailable, StageError, first_line
from onerank_export.redis_client import connect, mask_url

LOOKUP_BATCH_ROWS = 256  # keys per MGET; the pipeline sends all of a request's MGETs in one round trip
PUSH_BATCH_ROWS = 4096  # rows per MSET (~1 MB at D=64 fp32)
VERIFY_SAMPLE_ROWS = 1024
DTYPES = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2"), "int8": np.dtype("i1")}
Progress = Callable[[int, int, float], None]  # (rows pushed, rows in the table, seconds so far)


def default_prefix(checkpoint_sha256: str) -> str:
    return f"onerank:emb:{checkpoint_sha256[:12]}:"


def index_key(prefix: str) -> bytes:
    return f"{prefix}index".encode()


def row_keys(prefix: str, table: str, rows: np.ndarray | range) -> list[bytes]:
    head = f"{prefix}{table}:".encode()
    return [head + b"%d" % row for row in rows]


def value_size(entry: Mapping) -> int:
    """Bytes of one row's value: D elements of the store's dtype, + a float32 scale for int8."""
    return int(entry["dim"]) * DTYPES[entry["dtype"]].itemsize + (4 if entry["dtype"] == "int8" else 0)


def decode_rows(values: np.ndarray, entry: Mapping) -> np.ndarray:
    """float32 [n, D] from n values (uint8 [n, value_size]), dequantized as the store does."""
    dim, dtype = int(entry["dim"]), entry["dtype"]
    width = dim * DTYPES[dtype].itemsize
    rows = np.ascontiguousarray(values[:, :width]).view(DTYPES[dtype])
    if dtype == "int8":
        scales = np.ascontiguousarray(values[:, width:]).view("<f4")  # [n, 1]
        return rows.astype(np.float32) * scales
    return rows.astype(np.float32)


def _redis_errors() -> tuple[type[BaseException], ...]:
    import redis

    return (redis.RedisError, OSError)


def _read_index(client, prefix: str, where: str) -> dict | None:
    """The JSON under <prefix>index, None when there is none; one line when it is not ours."""
    raw = client.get(index_key(prefix))
    if raw is None:
        return None
    try:
        meta = json.loads(raw)
        if meta.get("format") != FORMAT or not isinstance(meta.get("tables"), dict):
            raise ValueError(f"format {meta.get('format')!r}")
        return meta
    except (ValueError, AttributeError) as exc:
        raise StageError(f"Redis at {where}: key {prefix}index is not an embedding-store index ({first_line(exc)}); "
                         "use another prefix") from None


# ----- push --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PushReport:
    table: str
    prefix: str
    rows: int
    bytes: int
    seconds: float
    sampled: int

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("inf")


def push(store_dir, url: str, *, table: str = "item", prefix: str | None = None,
         batch_rows: int = PUSH_BATCH_ROWS, sample_rows: int = VERIFY_SAMPLE_ROWS, progress: Progress | None = None,
         cluster: bool = False, socket_timeout: float = 10.0, client=None, seed: int = 0) -> PushReport:
    """Load `table` of the store at `store_dir` into Redis under `prefix`, verify it, then claim it (the
    index key). Re-pushing the same table is idempotent; a prefix holding another dim or dtype is refused
    before anything is written. `client`: injected by tests."""
    if batch_rows < 1:
        raise ConfigError(f"--batch-rows {batch_rows}: must be at least 1")
    source = StoreSource(store_dir, table)
    prefix = prefix if prefix is not None else default_prefix(source.checkpoint_sha256)
    where = mask_url(url)
    client = client if client is not None else connect(url, socket_timeout=socket_timeout, cluster=cluster)
    started = time.perf_counter()
    written = [0]  # rows written so far, for the error message of a push that dies half-way
    try:
        client.ping()
        _refuse_other_layouts(client, source, prefix, where)
        client.delete(index_key(prefix))  # unclaim first: from here on a reader refuses the prefix
        _write_rows(client, source, prefix, batch_rows, cluster, progress, started, written)
        source.check_hashes()  # computed while streaming: a store whose bytes changed is never claimed
        _verify_count(client, source, prefix, batch_rows, where)
        sampled = _verify_sample(client, source, prefix, sample_rows, seed, where, cluster)
        meta = {"format": FORMAT, "version": 1, "checkpoint_sha256": source.checkpoint_sha256,
                "tables": {table: dict(source.entry)}}
        client.set(index_key(prefix), json.dumps(meta, sort_keys=True).encode())
    except _redis_errors() as exc:
        claimed = "" if written[0] in (0, source.rows) else f" after {written[0]} of {source.rows} rows"
        raise StageError(f"push of table {table} to Redis at {where} failed{claimed}: {first_line(exc)}; nothing "
                         f"is claimed (no {prefix}index key): re-run the push when Redis answers") from None
    finally:
        source.close()
    seconds = time.perf_counter() - started
    return PushReport(table, prefix, source.rows, source.rows * source.value_size, seconds, sampled)


def _refuse_other_layouts(client, source: StoreSource, prefix: str, where: str) -> None:
    meta = _read_index(client, prefix, where)
    old = (meta or {}).get("tables", {}).get(source.table)
    fix = f"push to another --prefix, or delete the keys under {prefix!r} first"
    if old is not None and (int(old.get("dim", -1)), old.get("dtype")) != (source.dim, source.dtype):
        raise StageError(f"Redis prefix {prefix!r} at {where} holds table {source.table} with dim {old.get('dim')} "
                         f"({old.get('dtype')}); this store's is dim {source.dim} ({source.dtype}): {fix}")
    if old is None:  # an unclaimed (interrupted) push may still have left rows of another layout
        size = client.strlen(row_keys(prefix, source.table, [0])[0])
        if size and size != source.value_size:
            raise StageError(f"Redis prefix {prefix!r} at {where} holds {source.table} rows of {size} bytes (another "
                             f"dim or dtype, unclaimed); this store's rows are {source.value_size} bytes "
                             f"(dim {source.dim}, {source.dtype}): {fix}")


def _write_rows(client, source: StoreSource, prefix: str, batch_rows: int, cluster: bool,
                progress: Progress | None, started: float, written: list[int]) -> None:
    mset = client.mset_nonatomic if cluster else client.mset
    for start in range(0, source.rows, batch_rows):
        stop = min(start + batch_rows, source.rows)
        # bytes, not memoryview slices: redis-py sends each memoryview argument in a sendall of its own
        block = source.values(start, stop).tobytes()  # [n, value_size], also hashed
        size = source.value_size
        mset(dict(zip(row_keys(prefix, source.table, range(start, stop)),
                      (block[i * size:(i + 1) * size] for i in range(stop - start)), strict=True)))
        written[0] = stop
        if progress is not None:
            progress(stop, source.rows, time.perf_counter() - started)


def _verify_count(client, source: StoreSource, prefix: str, batch_rows: int, where: str) -> None:
    """EXISTS over every row key: exact, and without moving the values back."""
    found = 0
    for start in range(0, source.rows, batch_rows):
        found += client.exists(*row_keys(prefix, source.table, range(start, min(start + batch_rows, source.rows))))
    if found != source.rows:
        raise StageError(f"push of table {source.table} to Redis at {where}: {found} of {source.rows} row keys under "
                         f"{prefix!r} exist after writing them (evicted? check maxmemory-policy noeviction); nothing "
                         "is claimed")


def _verify_sample(client, source: StoreSource, prefix: str, sample_rows: int, seed: int, where: str,
                   cluster: bool) -> int:
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(source.rows, size=min(sample_rows, source.rows), replace=False))
    keys = row_keys(prefix, source.table, rows)
    values = client.mget_nonatomic(keys) if cluster else client.mget(keys)
    for row, value in zip(rows.tolist(), values, strict=True):
        expected = source.values(row, row + 1).tobytes()
        if value != expected:
            got = "missing" if value is None else f"{len(value)} bytes differing from the store's {len(expected)}"
            raise StageError(f"push of table {source.table} to Redis at {where}: row {row} read back {got}; nothing "
                             "is claimed: re-run the push (is another writer using this prefix?)")
    return len(rows)


# ----- lookup ------------------------------------------------------------------------------------


class RedisTable:
    """A pushed table's rows from Redis: lookup(ids) -> float32 [*ids.shape, D], like the store's Table."""

    def __init__(self, url: str, prefix: str, *, table: str = "item", batch_rows: int = LOOKUP_BATCH_ROWS,
                 socket_timeout: float = 1.0, cluster: bool = False, expect: Mapping | None = None,
                 rows: int | None = None, dim: int | None = None, lazy: bool = False, client=None) -> None:
        """`expect`: the store index entry this table must match (rows, dim, dtype, sha256), e.g. the build's
        own store, so Redis serves the rows the build verified; `rows`/`dim`: the model's expectations.
        `lazy`: a Redis that is down (or not pushed yet) at start does not fail here: every lookup retries
        reading the index and answers ServiceUnavailable until it can, so a server can start before Redis.
        `client`: injected by tests."""
        if batch_rows < 1:
            raise ConfigError(f"embedding_redis_batch_rows {batch_rows}: must be at least 1")
        self.url, self.prefix, self.name, self.batch_rows, self.cluster = url, prefix, table, batch_rows, cluster
        self.where = mask_url(url)
        self.client = client if client is not None else connect(url, socket_timeout=socket_timeout, cluster=cluster)
        self.expect = dict(expect or {})
        self.expect.update({k: v for k, v in (("rows", rows), ("dim", dim)) if v is not None})
        self.entry: dict | None = None
        self.rows = self.dim = self.dtype = None
        try:
            self._load()
        except ServiceUnavailable as exc:
            if not lazy:
                raise
            self.load_error = exc

    def _load(self) -> None:
        table, prefix = self.name, self.prefix
        try:
            meta = _read_index(self.client, prefix, self.where)
        except _redis_errors() as exc:
            raise ServiceUnavailable(f"embedding table {table}: Redis at {self.where} unreachable "
                                     f"({first_line(exc)}); start it or fix embedding_redis_url") from None
        entry = (meta or {}).get("tables", {}).get(table)
        if entry is None:
            raise ServiceUnavailable(f"embedding table {table}: Redis at {self.where} has no {prefix}index key naming "
                                     "it (never pushed, or the push did not finish): run `onerank-export embeddings "
                                     f"push --store DIR --redis {self.where} --prefix {prefix}`")
        if entry.get("dtype") not in DTYPES or int(entry.get("rows", 0)) < 1 or int(entry.get("dim", 0)) < 1:
            raise ServiceUnavailable(f"embedding table {table} in Redis at {self.where} ({prefix}index): rows "
                                     f"{entry.get('rows')}, dim {entry.get('dim')}, dtype {entry.get('dtype')!r} "
                                     "is not a servable table; re-run the push")
        for field in ("rows", "dim", "dtype", "sha256", "scale_sha256"):
            if field in self.expect and self.expect[field] != entry.get(field):
                raise ServiceUnavailable(f"embedding table {table} in Redis at {self.where} ({prefix}index) has "
                                         f"{field} {entry.get(field)!r}, the model's {self.expect[field]!r}: push "
                                         "this model's store (`onerank-export embeddings push`)")
        self.entry = dict(entry)
        self.rows, self.dim, self.dtype = int(entry["rows"]), int(entry["dim"]), entry["dtype"]
        self.pad_row, self.oov = int(entry.get("pad_row", 0)), entry.get("oov", "pad")
        self.value_size = value_size(entry)
        self.load_error = None

    def lookup(self, ids) -> np.ndarray:
        if self.entry is None:
            self._load()  # lazy: until Redis holds the table, ServiceUnavailable per request
        ids = np.asarray(ids)
        flat = ids.reshape(-1).astype(np.int64)
        outside = (flat < 0) | (flat >= self.rows)
        if outside.any():
            if self.oov != "pad":
                row = int(flat[outside][0])
                raise RequestError(f"embedding table {self.name}: id {row} outside rows 0..{self.rows - 1} "
                                   f"({int(outside.sum())} such ids; out-of-vocabulary policy 'error'); send ids "
                                   "below the table size or build the store with --oov pad")
            flat = np.where(outside, self.pad_row, flat)
        unique, inverse = np.unique(flat, return_inverse=True)  # histories repeat ids (and pad rows)
        return decode_rows(self._fetch(unique), self.entry)[inverse].reshape(*ids.shape, self.dim)

    def _fetch(self, rows: np.ndarray) -> np.ndarray:
        """uint8 [len(rows), value_size]: pipelined MGETs of batch_rows keys, one round trip."""
        keys = row_keys(self.prefix, self.name, rows.tolist())
        batches = [keys[i:i + self.batch_rows] for i in range(0, len(keys), self.batch_rows)]
        try:
            if self.cluster:
                replies = [self.client.mget_nonatomic(batch) for batch in batches]
            else:
                pipe = self.client.pipeline(transaction=False)
                for batch in batches:
                    pipe.mget(batch)
                replies = pipe.execute()
        except _redis_errors() as exc:
            raise ServiceUnavailable(f"embedding table {self.name}: Redis at {self.where} failed looking up "
                                     f"{len(rows)} rows (first row {int(rows[0])}): {first_line(exc)}; check that "
                                     "Redis is up") from None
        values = [value for reply in replies for value in reply]
        for row, value in zip(rows.tolist(), values, strict=True):
            if value is None or len(value) != self.value_size:
                what = "missing" if value is None else f"{len(value)} bytes, not {self.value_size}"
                raise ServiceUnavailable(f"embedding table {self.name}, row {row}: key {self.prefix}{self.name}:{row} "
                                         f"in Redis at {self.where} is {what}; re-run `onerank-export embeddings "
                                         "push` for this store")
        return np.frombuffer(b"".join(values), dtype=np.uint8).reshape(len(rows), self.value_size)

    def close(self) -> None:
        self.client.close()
