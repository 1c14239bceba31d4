"""A redis-py client from a URL, shared by the user-state cache's tier (serving/redis_tier.py) and the
embedding store's Redis backend (embeddings/redis_backend.py), so both fail the same way: fast (no
client-side retries, socket timeouts on connect and on every reply) and in one line.

redis-py is imported on first use only: most commands never talk to Redis.
"""

from __future__ import annotations

from onerank_export.errors import ConfigError, first_line


def connect(url: str, *, socket_timeout: float, cluster: bool = False):
    """A redis-py client for `url` (redis://, rediss://, unix://); a cluster node URL with cluster=True.
    Connects on first use, not here. No client-side retries: a failed call fails fast to the caller."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    try:
        if cluster:
            from redis.cluster import RedisCluster

            return RedisCluster.from_url(url, socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout)
        return redis.Redis.from_url(url, socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout,
                                    retry=Retry(NoBackoff(), 0))
    except ValueError as exc:
        raise ConfigError(f"Redis URL {url!r}: {first_line(exc)}; use redis://host:port/db, rediss://host:port/db "
                          "or unix:///path/to/redis.sock") from None


def mask_url(url: str) -> str:
    """The URL without its password, for logs and error messages."""
    head, at, tail = url.rpartition("@")
    return f"{head.split('://')[0]}://***@{tail}" if at else url
