"""Per-entry get/put latency of the user-state cache's tiers for one ~1 MB row state (not a test).

    python tools/bench/bench_cache_tiers.py [--mb 1] [--repeat 200] [--batch 16]

Starts its own redis-server on loopback (serving/redis_server.py) and prints medians in microseconds.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from onerank_export.serving.redis_server import RedisServer, redis_server_version
from onerank_export.serving.redis_tier import RedisStateCache, decode, encode
from onerank_export.serving.user_cache import LocalStateCache, TieredStateCache, history_key, state_nbytes


def timed(fn, repeat: int) -> float:
    samples = []
    for i in range(repeat):
        start = time.perf_counter()
        fn(i)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    half = int(args.mb * (1 << 20)) // 4  # two fp16 arrays of `half` elements
    rng = np.random.default_rng(0)
    states = {"user_key.0": rng.standard_normal(half).astype(np.float16),
              "user_value.0": rng.standard_normal(half).astype(np.float16), "user_key_mask": np.ones(1024, bool)}
    keys = [history_key("bench", np.arange(i, i + 64), np.zeros(64, np.int64)) for i in range(args.repeat)]
    rows = []
    local = LocalStateCache(4 * state_nbytes(states) * args.repeat)
    rows.append(("local put (copy)", timed(lambda i: local.put(keys[i], states), args.repeat)))
    rows.append(("local get (hit)", timed(lambda i: local.get(keys[i]), args.repeat)))
    rows.append(("safetensors encode", timed(lambda i: encode(keys[i], states), args.repeat)))
    blob = encode(keys[0], states)
    rows.append(("safetensors decode", timed(lambda i: decode(keys[0], blob), args.repeat)))
    with RedisServer() as server:
        redis = RedisStateCache(server.url, socket_timeout=2.0)
        rows.append(("redis put (1 row)", timed(lambda i: redis.put(keys[i], states), args.repeat)))
        rows.append(("redis get (1 row, hit)", timed(lambda i: redis.get(keys[i]), args.repeat)))
        b = args.batch
        n = args.repeat // b
        rows.append((f"redis put_many ({b} rows), per row",
                     timed(lambda i: redis.put_many([(k, states) for k in keys[i * b:(i + 1) * b]]), n) / b))
        rows.append((f"redis get_many ({b} rows), per row",
                     timed(lambda i: redis.get_many(keys[i * b:(i + 1) * b]), n) / b))
        tiered = TieredStateCache(LocalStateCache(4 * state_nbytes(states) * args.repeat), redis)
        rows.append(("tiered get (shared hit + promote)", timed(lambda i: tiered.get(keys[i]), args.repeat)))
        rows.append(("tiered get (local hit)", timed(lambda i: tiered.get(keys[i]), args.repeat)))
        assert redis.stats().errors == 0, redis.stats()
        redis.close()
    print(f"state {state_nbytes(states) / (1 << 20):.2f} MiB, redis-server {redis_server_version()}, "
          f"median of {args.repeat}")
    for name, us in rows:
        print(f"  {name:38s} {us:9.1f} us")


if __name__ == "__main__":
    main()
