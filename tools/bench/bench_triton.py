#!/usr/bin/env python
"""Serving latency and throughput through a real Triton server, per serving profile, vs in-process ORT.

    python tools/bench/bench_triton.py [--seconds 8] [--protocol http] [--out tools/bench/results]

The demo checkpoint is exported, rewritten for ONNX Runtime's CPU provider (what a cpu-target
build serves) and written as a cpu-target repository once per serving profile (latency:
1 instance x all cores, no batching delay; throughput: 2 instances x cores/2, 200 us delay); the
bundled tritonserver serves its python-backend model on loopback. For N in {128, 512} at L=256
and concurrency in {1, 4, 8} closed-loop clients, each cell runs --seconds and reports requests/s,
candidates/s and p50/p99 latency. The in-process row runs the same ONNX in one ONNX Runtime
session with every core (what the profiles are compared with). The table names the CPU and a
matmul peak measured in the same run; the JSON (triton.json) keeps every cell.
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

sys.path.insert(0, str(Path(__file__).parent))
from hostinfo import cpu_model, measure_peak_gflops

SHAPES = [(256, 128), (256, 512)]  # (L, N)
CONCURRENCY = (1, 4, 8)
PROFILES = ("latency", "throughput")


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


def write_repository(out: Path, cfg, fp32: Path, cpu_fp32: Path, profile: str):
    from onerank_export.serving.profiles import Target, serving_plan
    from onerank_export.serving.repository import write_model_repository

    plan = serving_plan(Target.CPU, "--target cpu", profile)
    return write_model_repository(out, cfg, plan, {"fp32": fp32}, {}, None, cpu_onnx={"fp32": cpu_fp32})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--protocol", choices=["http", "grpc"], default="http")
    parser.add_argument("--out", type=Path, default=Path("tools/bench/results"))
    args = parser.parse_args()

    from onerank_export.export.onnx_export import export_onnx
    from onerank_export.export.ort_cpu_graph import write_ort_cpu_model
    from onerank_export.model.checkpoint import load_checkpoint
    from onerank_export.model.demo_checkpoint import ensure_demo_checkpoint
    from onerank_export.parity.runners import OnnxRuntimeRunner
    from onerank_export.serving.client import OneRankClient
    from onerank_export.serving.server import TritonServer
    from onerank_export.spec import random_request

    cores = os.cpu_count() or 1
    peak = measure_peak_gflops(cores)
    print(f"CPU: {cpu_model()}; matmul peak (torch fp32 1024^3, {cores} threads): {peak:.1f} GFLOP/s", flush=True)
    model = load_checkpoint(ensure_demo_checkpoint())
    cfg = model.cfg
    feeds = {(L, N): random_request(cfg, np.random.default_rng(0), 1, L, N, full=True) for L, N in SHAPES}
    rows, plans = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(model, Path(tmp) / "onerank.fp32.onnx").path
        cpu_fp32 = write_ort_cpu_model(fp32, Path(tmp) / "onerank.fp32.cpu.onnx")
        ort_runner = OnnxRuntimeRunner(cpu_fp32, threads=cores)
        ort_runner.activate()
        for (L, N), feed in feeds.items():
            closed_loop(lambda: ort_runner.infer, feed, 1, 1.0)  # warm-up
            for c in CONCURRENCY:
                rows.append({"runner": "ort in-process", "profile": "", "L": L, "N": N, "concurrency": c,
                             **closed_loop(lambda: ort_runner.infer, feed, c, args.seconds)})
                _print(rows[-1])
        for profile in PROFILES:
            repo = write_repository(Path(tmp) / profile, cfg, fp32, cpu_fp32, profile)
            plans[profile] = repo.plan.describe()
            with TritonServer(repo.path, models=[repo.python_model]) as server:
                url = server.http_url if args.protocol == "http" else server.grpc_url

                def triton_scorer(url=url):
                    return OneRankClient(url, protocol=args.protocol, validate=False).score

                for (L, N), feed in feeds.items():
                    closed_loop(triton_scorer, feed, 1, 1.0)  # warm-up
                    for c in CONCURRENCY:
                        rows.append({"runner": f"triton-{args.protocol}", "profile": profile, "L": L, "N": N,
                                     "concurrency": c, **closed_loop(triton_scorer, feed, c, args.seconds)})
                        _print(rows[-1])
    summary = summarise(rows)
    print()
    for line in summary["lines"]:
        print(line)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "triton.json").write_text(json.dumps({"cpu": cpu_model(), "matmul_peak_gflops": peak, "rows": rows,
                                                      "plans": plans, "summary": summary, "cores": cores,
                                                      "seconds_per_cell": args.seconds}, indent=2))
    print(f"wrote {args.out / 'triton.json'}")
    return 0


def _print(r: dict) -> None:
    name = f"{r['runner']} {r['profile']}".strip()
    print(f"{name:>26} L={r['L']} N={r['N']:4d} c={r['concurrency']}: {r['rps']:7.1f} req/s "
          f"{r['candidates_per_s']:9.0f} cand/s  p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:6.2f} ms", flush=True)


def summarise(rows: list[dict]) -> dict:
    """The issue's two ratios: latency profile p50 at concurrency 1 over in-process p50, and
    throughput profile req/s at concurrency 8 over in-process req/s."""
    def cell(runner, profile, L, N, c):
        return next(r for r in rows if r["runner"].startswith(runner) and r["profile"] == profile
                    and (r["L"], r["N"], r["concurrency"]) == (L, N, c))

    out, lines = {}, []
    for L, N in SHAPES:
        ort1, ort8 = cell("ort", "", L, N, 1), cell("ort", "", L, N, 8)
        lat, thr = cell("triton", "latency", L, N, 1), cell("triton", "throughput", L, N, 8)
        p50_ratio, rps_ratio = lat["p50_ms"] / ort1["p50_ms"], thr["rps"] / ort8["rps"]
        out[f"L{L}_N{N}"] = {"latency_p50_ratio_c1": p50_ratio, "throughput_rps_ratio_c8": rps_ratio}
        lines.append(f"L={L} N={N}: latency profile p50 {lat['p50_ms']:.2f} ms vs in-process {ort1['p50_ms']:.2f} ms "
                     f"= {p50_ratio:.2f}x (goal <= 1.3x); throughput profile {thr['rps']:.1f} req/s at c=8 vs "
                     f"in-process {ort8['rps']:.1f} = {rps_ratio:.2f}x (goal >= 1.0x)")
    out["lines"] = lines
    return out


if __name__ == "__main__":
    sys.exit(main())
