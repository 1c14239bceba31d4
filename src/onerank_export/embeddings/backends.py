"""Which lookup backend a model uses, from its parameters (the Triton lookup model's config.pbtxt
`parameters`, or a dict in-process): `open_lookup(parameters)` -> an object with `.lookup(ids)` (float32
rows [*ids.shape, D]), `.rows` and `.dim`.

    embedding_backend          mmap (default) | redis
    embedding_store            the store directory (mmap: required; redis: optional, its index.json fixes the
                               default prefix and the rows/dim/dtype/sha256 Redis must hold; its data files
                               need not be on the serving host)
    embedding_redis_url        redis: required (redis://, rediss://, unix://)
    embedding_redis_prefix     redis: default onerank:emb:<checkpoint_sha256[:12]>: from the store's index
    embedding_redis_cluster    redis: true to use a Redis Cluster client (the URL names any node)
    embedding_redis_batch_rows redis: keys per MGET (default 256)
    embedding_redis_timeout_s  redis: socket timeout per call (default 1.0): a hung Redis fails the request
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from onerank_export.embeddings.redis_backend import LOOKUP_BATCH_ROWS, RedisTable, default_prefix
from onerank_export.embeddings.source import store_dir
from onerank_export.embeddings.store import INDEX, StoreError, open_store
from onerank_export.errors import ConfigError

BACKENDS = ("mmap", "redis")


def open_lookup(parameters: Mapping[str, str], *, table: str = "item", rows: int | None = None,
                dim: int | None = None):
    """The lookup object for `parameters`; `rows`/`dim`: the dense model's expectations, checked here
    (at load) rather than on the first request."""
    backend = str(parameters.get("embedding_backend") or "mmap").strip().lower()
    store = parameters.get("embedding_store") or None
    if backend == "mmap":
        if not store:
            raise ConfigError("embedding_backend mmap needs embedding_store (the store directory) in the model's "
                              "parameters")
        return open_store(store_dir(store)).table(table, rows=rows, dim=dim)
    if backend != "redis":
        raise ConfigError(f"embedding_backend {backend!r}: use one of {', '.join(BACKENDS)}")
    url = parameters.get("embedding_redis_url")
    if not url:
        raise ConfigError("embedding_backend redis needs embedding_redis_url (e.g. redis://host:6379/0) in the "
                          "model's parameters")
    index = _read_index(store) if store else None
    prefix = parameters.get("embedding_redis_prefix") or None
    if prefix is None:
        if index is None:
            raise ConfigError("embedding_backend redis needs embedding_redis_prefix, or embedding_store to derive "
                              "it from the store's checkpoint sha256")
        prefix = default_prefix(str(index.get("checkpoint_sha256", "")))
    expect = index["tables"].get(table) if index else None
    looked_up = RedisTable(url, prefix, table=table, expect=expect,
                           cluster=_flag(parameters, "embedding_redis_cluster"),
                           batch_rows=_number(parameters, "embedding_redis_batch_rows", LOOKUP_BATCH_ROWS, int),
                           socket_timeout=_number(parameters, "embedding_redis_timeout_s", 1.0, float))
    for name, want, have in (("dim", dim, looked_up.dim), ("rows", rows, looked_up.rows)):
        if want is not None and want != have:
            raise StoreError(f"embedding table '{table}' in Redis under {prefix!r} has {name} {have}, the model "
                             f"expects {want}: push this model's store")
    return looked_up


def _read_index(store) -> dict:
    path = store_dir(store) / INDEX
    try:
        index = json.loads(Path(path).read_text())
        if not isinstance(index.get("tables"), dict):
            raise ValueError("no tables")
        return index
    except (OSError, ValueError, AttributeError) as exc:
        raise StoreError(f"{path}: not a readable embedding store index ({exc.__class__.__name__}); rebuild the "
                         "store") from None


def _flag(parameters: Mapping[str, str], name: str) -> bool:
    value = str(parameters.get(name) or "false").strip().lower()
    if value not in ("true", "false", "1", "0", "yes", "no"):
        raise ConfigError(f"{name} {value!r}: use true or false")
    return value in ("true", "1", "yes")


def _number(parameters: Mapping[str, str], name: str, default, kind):
    value = parameters.get(name)
    if value in (None, ""):
        return default
    try:
        number = kind(value)
    except ValueError:
        number = 0
    if number <= 0:
        raise ConfigError(f"{name} {value!r}: must be a number > 0")
    return number
