"""Which lookup backend a model uses, from its parameters (the Triton lookup model's config.pbtxt
`parameters`, or a dict in-process): `open_lookup(parameters)` -> an object with `.lookup(ids)` (float32
rows [*ids.shape, D]), `.rows` and `.dim`.

    embedding_backend          mmap (default) | redis
    embedding_verify           mmap: yes to check the files' sha256 at load
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


def open_lookup(parameters: Mapping[str, str], *, base=None, table: str = "item", rows: int | None = None,
                dim: int | None = None, lazy: bool = True):
    """The lookup object for `parameters` (names as above, with or without the `onerank.` prefix of a
    config.pbtxt); a relative embedding_store is relative to `base` (the model directory). `rows`/`dim`: the
    dense model's expectations, checked at load (mmap) or at the first lookup Redis can answer (redis, lazy)."""
    params = {str(k).removeprefix("onerank."): v for k, v in parameters.items()}
    backend = backend_of(params)
    store = params.get("embedding_store") or None
    if store and base is not None:
        store = Path(base) / store
    if backend == "mmap":
        if not store:
            raise ConfigError("embedding_backend mmap needs embedding_store (the store directory) in the model's "
                              "parameters")
        verify = str(params.get("embedding_verify") or "no").strip().lower() in ("yes", "true", "1")
        return open_store(store_dir(store), verify=verify).table(table, rows=rows, dim=dim)
    if backend != "redis":
        raise ConfigError(f"embedding_backend {backend!r}: use one of {', '.join(BACKENDS)}")
    url = params.get("embedding_redis_url")
    if not url:
        raise ConfigError("embedding_backend redis needs embedding_redis_url (e.g. redis://host:6379/0) in the "
                          "model's parameters")
    index = _read_index(store) if store else None
    prefix = params.get("embedding_redis_prefix") or None
    if prefix is None:
        if index is None:
            raise ConfigError("embedding_backend redis needs embedding_redis_prefix, or embedding_store to derive "
                              "it from the store's checkpoint sha256")
        prefix = default_prefix(str(index.get("checkpoint_sha256", "")))
    return RedisTable(url, prefix, table=table, expect=index["tables"].get(table) if index else None, rows=rows,
                      dim=dim, lazy=lazy, cluster=_flag(params, "embedding_redis_cluster"),
                      batch_rows=_number(params, "embedding_redis_batch_rows", LOOKUP_BATCH_ROWS, int),
                      socket_timeout=_number(params, "embedding_redis_timeout_s", 1.0, float))


def backend_of(parameters: Mapping[str, str]) -> str:
    """The backend the parameters name (`embedding_backend`, with or without the `onerank.` prefix), mmap
    when unset; not validated here (open_lookup refuses an unknown one)."""
    params = {str(k).removeprefix("onerank."): v for k, v in parameters.items()}
    return str(params.get("embedding_backend") or "mmap").strip().lower()


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
