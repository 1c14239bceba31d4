"""The Redis embedding backend's push rate and lookup latency (not a test; docs/embeddings.md "Redis backend").

    python tools/bench/bench_embeddings_redis.py [--rows 1000000] [--dim 64] [--repeat 300]

Writes a synthetic fp32 item table through the real store writer (embeddings/store.py), starts its own
redis-server on loopback (serving/redis_server.py), pushes the store (`embeddings push`'s function, at
several batch sizes), then times RedisTable.lookup for one request's ids (L=256 history + N=512 candidates
= 768 ids) at MGET batch sizes 64/256/1024, beside the mmap store's lookup. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from hostinfo import cpu_model
from safetensors.numpy import save_file

from onerank_export.embeddings.redis_backend import RedisTable, push
from onerank_export.embeddings.store import open_store, write_store
from onerank_export.serving.redis_server import RedisServer, redis_server_version


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered) * 1e3, ordered[int(0.99 * (len(ordered) - 1))] * 1e3


def timed(fn, requests: list[np.ndarray]) -> tuple[float, float]:
    for ids in requests[:10]:
        fn(ids)  # warm: connections, page cache
    samples = []
    for ids in requests:
        start = time.perf_counter()
        fn(ids)
        samples.append(time.perf_counter() - start)
    return percentiles(samples)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=300)
    parser.add_argument("--push-batches", default="1024,4096,16384")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="bench-emb-") as tmp:
        ckpt = Path(tmp) / "ckpt"
        ckpt.mkdir()
        save_file({"item_emb.weight": rng.standard_normal((args.rows, args.dim), dtype=np.float32)},
                  str(ckpt / "model.safetensors"))
        write_store(ckpt, Path(tmp) / "store", "fp32", checkpoint_sha256="0" * 64)
        (ckpt / "model.safetensors").unlink()
        store = open_store(Path(tmp) / "store").table()
        table_mb = args.rows * args.dim * 4 / 2**20
        print(f"host: {cpu_model()}; redis-server {redis_server_version()} on loopback; table {args.rows} x "
              f"{args.dim} fp32 ({table_mb:.0f} MiB)\n")
        with RedisServer() as server:
            print("| push batch rows | seconds | rows/s | MiB/s |\n|---|---|---|---|")
            for batch in (int(b) for b in args.push_batches.split(",")):
                report = push(Path(tmp) / "store", server.url, prefix="bench:", batch_rows=batch)
                print(f"| {batch} | {report.seconds:.1f} | {report.rows_per_s:,.0f} | "
                      f"{report.bytes / 2**20 / report.seconds:.0f} |")
            requests = [np.concatenate([rng.integers(1, args.rows, 256), rng.integers(1, args.rows, 512)])
                        for _ in range(args.repeat)]
            print("\n| lookup of 768 ids (L=256 + N=512) | median ms | p99 ms |\n|---|---|---|")
            p50, p99 = timed(store.lookup, requests)
            print(f"| mmap store (page cache warm) | {p50:.3f} | {p99:.3f} |")
            for batch in (64, 256, 1024):
                table = RedisTable(server.url, "bench:", batch_rows=batch)
                p50, p99 = timed(table.lookup, requests)
                print(f"| Redis, MGET batch {batch} ({-(-768 // batch)} MGETs, one round trip) | {p50:.3f} | "
                      f"{p99:.3f} |")
                table.close()


if __name__ == "__main__":
    main()
