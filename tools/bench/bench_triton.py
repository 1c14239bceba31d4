#!/usr/bin/env python
"""Serving throughput and latency through a real Triton server vs the in-process ONNX Runtime runner.

    python tools/bench/bench_triton.py [--seconds 10] [--protocol http] [--out tools/bench/results]

The demo checkpoint is exported and served from the CPU repository (python backend + ONNX
Runtime) on loopback. For N in {128, 512} at L=256 and concurrency in {1, 4, 8} closed-loop
clients, each cell runs for --seconds and reports requests/s, candidates/s and p50/p99 latency.
The in-process row runs the same ONNX in one ONNX Runtime session shared by the same number of
threads (the floor the server's overhead is measured against). Prints a table, writes triton.json.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHAPES = [(256, 128), (256, 512)]  # (L, N)
CONCURRENCY = (1, 4, 8)


def closed_loop(make_score, feed, clients: int, seconds: float) -> dict:
    """`clients` threads, each with its own scorer (HTTP clients are not shareable across threads)."""
    def worker(_: int) -> list[float]:
        score = make_score()
        out = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            score(feed)
            out.append(time.perf_counter() - t0)
        return out

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        runs = list(pool.map(worker, range(clients)))
    lat = np.array([x for r in runs for x in r]) * 1e3
    n = int(feed["cand_item_ids"].shape[1])
    return {"requests": int(lat.size), "rps": lat.size / seconds, "candidates_per_s": lat.size * n / seconds,
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--protocol", choices=["http", "grpc"], default="http")
    parser.add_argument("--out", type=Path, default=Path("tools/bench/results"))
    args = parser.parse_args()

    from onerank_export.export.onnx_export import export_onnx
    from onerank_export.model.checkpoint import load_checkpoint
    from onerank_export.model.demo_checkpoint import ensure_demo_checkpoint
    from onerank_export.parity.cases import random_request
    from onerank_export.parity.runners import OnnxRuntimeRunner
    from onerank_export.serving.client import OneRankClient
    from onerank_export.serving.repository import CPU_DIR, write_model_repository
    from onerank_export.serving.server import TritonServer

    model = load_checkpoint(ensure_demo_checkpoint())
    cfg = model.cfg
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        (out / "onnx").mkdir()
        onnx_path = export_onnx(model, out / "onnx" / "onerank.fp32.onnx").path
        write_model_repository(out, cfg, {"fp32": onnx_path}, {}, None)
        ort_runner = OnnxRuntimeRunner(onnx_path, threads=os.cpu_count())
        ort_runner.activate()
        with TritonServer(out / CPU_DIR) as server:
            url = server.http_url if args.protocol == "http" else server.grpc_url
            def triton_scorer():
                return OneRankClient(url, protocol=args.protocol, validate=False).score

            def ort_scorer():
                return ort_runner.infer

            for L, N in SHAPES:
                feed = random_request(cfg, np.random.default_rng(0), 1, L, N, full=True)
                closed_loop(triton_scorer, feed, 1, 1.0)  # warm-up
                for c in CONCURRENCY:
                    for runner, fn in ((f"triton-{args.protocol}", triton_scorer), ("ort in-process", ort_scorer)):
                        r = {"runner": runner, "L": L, "N": N, "concurrency": c,
                             **closed_loop(fn, feed, c, args.seconds)}
                        rows.append(r)
                        print(f"{runner:>16} L={L} N={N:4d} c={c}: {r['rps']:7.1f} req/s "
                              f"{r['candidates_per_s']:9.0f} cand/s  p50 {r['p50_ms']:6.1f} ms  "
                              f"p99 {r['p99_ms']:6.1f} ms", flush=True)
            rss = server.rss_bytes()
    print(f"\nserver RSS at the end: {rss / 2**20:.0f} MiB; {os.cpu_count()} cores")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "triton.json").write_text(json.dumps({"rows": rows, "cores": os.cpu_count(),
                                                      "seconds_per_cell": args.seconds}, indent=2))
    print(f"wrote {args.out / 'triton.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
