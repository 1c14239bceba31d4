"""The Redis embedding backend's push rate and lookup latency (not a test; docs/embeddings.md "Redis backend").

    python tools/bench/bench_embeddings_redis.py [--rows 1000000] [--dim 64] [--repeat 300]
    python tools/bench/bench_embeddings_redis.py --store BUILD/embeddings --push-batches 4096   # a real store

Writes a synthetic fp32 item table through the real store writer (embeddings/store.py), starts its own
redis-server on loopback (serving/redis_server.py), pushes the store (`embeddings push`'s function, at
several batch sizes), then times RedisTable.lookup for one request's ids (L=256 history + N=512 candidates
= 768 ids) at MGET batch sizes 64/256/1024, beside the mmap store's lookup; every Redis lookup is checked
against the store's rows. `--store`: an existing store (e.g. a 20M-row split build's embeddings/) instead
of a synthetic one. Prints markdown tables (with the host's CPU, a measured matmul peak and Redis's memory)
and writes tools/bench/results/embeddings_redis.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from hostinfo import cpu_model, measure_peak_gflops
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
    parser.add_argument("--store", type=Path, help="an existing embedding store (--rows/--dim ignored)")
    parser.add_argument("--repeat", type=int, default=300)
    parser.add_argument("--push-batches", default="1024,4096,16384")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "embeddings_redis.json")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="bench-emb-") as tmp:
        store_dir = args.store or synthetic_store(Path(tmp), args.rows, args.dim, rng)
        store = open_store(store_dir).table()
        report = {"host": cpu_model(), "matmul_gflops_1_thread": round(measure_peak_gflops(1), 1),
                  "redis_server": redis_server_version(), "rows": store.rows, "dim": store.dim,
                  "dtype": store.dtype, "store_bytes": store.nbytes(), "push": [], "lookup_ms": {}}
        print(f"host: {report['host']}, matmul peak {report['matmul_gflops_1_thread']} GFLOP/s (1 thread); "
              f"redis-server {report['redis_server']} on loopback; table {store.rows} x {store.dim} {store.dtype} "
              f"({store.nbytes() / 2**20:.0f} MiB)\n")
        with RedisServer() as server:
            print("| push batch rows | seconds | rows/s | MiB/s |\n|---|---|---|---|")
            for batch in (int(b) for b in args.push_batches.split(",")):
                pushed = push(store_dir, server.url, prefix="bench:", batch_rows=batch)
                report["push"].append({"batch_rows": batch, "seconds": pushed.seconds,
                                       "rows_per_s": pushed.rows_per_s})
                print(f"| {batch} | {pushed.seconds:.1f} | {pushed.rows_per_s:,.0f} | "
                      f"{pushed.bytes / 2**20 / pushed.seconds:.0f} |")
            memory = _redis_memory(server.url)
            report["redis_used_memory_bytes"] = memory
            print(f"\nRedis used_memory after the push: {memory / 1e9:.2f} GB "
                  f"({memory / store.rows:.0f} bytes per row)")
            requests = [np.concatenate([rng.integers(1, store.rows, 256), rng.integers(1, store.rows, 512)])
                        for _ in range(args.repeat)]
            print("\n| lookup of 768 ids (L=256 + N=512) | median ms | p99 ms |\n|---|---|---|")
            p50, p99 = timed(store.lookup, requests)
            report["lookup_ms"]["mmap"] = {"p50": p50, "p99": p99}
            print(f"| mmap store (page cache warm) | {p50:.3f} | {p99:.3f} |")
            for batch in (64, 256, 1024):
                table = RedisTable(server.url, "bench:", batch_rows=batch)
                if not np.array_equal(table.lookup(requests[0]), store.lookup(requests[0])):
                    raise SystemExit("error: Redis rows differ from the store's rows")
                p50, p99 = timed(table.lookup, requests)
                report["lookup_ms"][f"redis_mget_{batch}"] = {"p50": p50, "p99": p99}
                print(f"| Redis, MGET batch {batch} ({-(-768 // batch)} MGETs, one round trip) | {p50:.3f} | "
                      f"{p99:.3f} |")
                table.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"\nwrote {args.out}")


def synthetic_store(tmp: Path, rows: int, dim: int, rng: np.random.Generator) -> Path:
    ckpt = tmp / "ckpt"
    ckpt.mkdir()
    save_file({"item_emb.weight": rng.standard_normal((rows, dim), dtype=np.float32)}, str(ckpt / "model.safetensors"))
    write_store(ckpt, tmp / "store", "fp32", checkpoint_sha256="0" * 64)
    (ckpt / "model.safetensors").unlink()
    return tmp / "store"


def _redis_memory(url: str) -> int:
    import redis

    return int(redis.Redis.from_url(url).info("memory")["used_memory"])


if __name__ == "__main__":
    main()
