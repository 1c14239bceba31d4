#!/usr/bin/env python
"""Request latency of each runner over N and L: p50/p99, candidates/s, FLOPs, achieved FLOP/s
against a matmul peak measured in the same run, and peak memory.

    python tools/bench/bench_latency.py [--quick] [--out tools/bench/results]

Every (runner, shape) runs in a fresh subprocess so its peak RSS is its own. The model is the
default architecture with its L/N maxima raised to cover the sweep (random weights: latency
does not depend on their values). Prints a table, writes latency.json and latency_vs_n.png.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from hostinfo import cpu_model, measure_peak_gflops

SWEEP = [(256, 128), (256, 512), (256, 2048), (64, 512), (1024, 512)]  # (L, N)
# eager-dense runs twice: as it comes, and with denormals flushed (the ORT sessions flush them,
# see export/ort_session.py); the faster of the two is the reference the ratios are taken against.
RUNNERS = ("eager-dense", "eager-dense-ftz", "eager-serving", "ort-fp32", "ort-fp16", "ort-int8")
THREADS = 2
# The headline cell's runners run this many interleaved rounds: one p50 per process varies between
# runs on a shared VM (docs/benchmarks.md#latency-benchmark-settings).
HEADLINE, HEADLINE_ROUNDS = (256, 512), 3
# glibc's dynamic mmap threshold makes eager torch bimodal: its large temporaries are mmapped and
# page-faulted on every call, or not, depending on allocation history
# (docs/benchmarks.md#latency-benchmark-settings). Fixed thresholds give every runner its fast
# mode; ONNX Runtime uses its own arena and does not move.
CHILD_ENV = {"PYTHONWARNINGS": "ignore", "MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}


def bench_config():
    from onerank_export.config import OneRankConfig

    return OneRankConfig(max_hist_len=1024, max_candidates=2048)


def count_flops(fn) -> int:
    """Matmul + attention FLOPs of one call (torch's counter, taught the CPU SDPA kernel it lacks)."""
    import torch
    from torch.utils import flop_counter as fc

    op = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    if op not in fc.flop_registry:
        @fc.register_flop_formula(op)
        def _sdpa_cpu(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
            return fc.sdpa_flop_count(query_shape, key_shape, value_shape)

    with torch.inference_mode(), fc.FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def child(runner: str, hist_len: int, cands: int, onnx_path: str, min_seconds: float) -> dict:
    """Runs in its own process: one runner, one shape."""
    import resource

    import numpy as np
    import torch

    from onerank_export.export.serving_graph import ServingGraph
    from onerank_export.model.onerank import OneRankModel
    from onerank_export.parity.cases import random_request

    torch.set_num_threads(THREADS)
    torch.set_flush_denormal(runner == "eager-dense-ftz")
    torch.manual_seed(0)
    cfg = bench_config()
    model = OneRankModel(cfg).eval()
    feed = random_request(cfg, np.random.default_rng(0), 1, hist_len, cands, full=True)
    tensors = {k: torch.from_numpy(v) for k, v in feed.items()}
    serving = ServingGraph(model).eval()
    dense = runner.startswith("eager-dense")
    flops = count_flops(lambda: model(**tensors) if dense else serving(**tensors))
    if runner.startswith("ort-"):
        from onerank_export.export.ort_session import cpu_session

        session = cpu_session(onnx_path, THREADS)
        fn = lambda: session.run(None, feed)  # noqa: E731
    else:
        module = model if dense else serving
        fn = lambda: module(**tensors)  # noqa: E731
    baseline_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    with torch.inference_mode():
        for _ in range(2):
            fn()
        start = time.perf_counter()
        while len(times) < 5 or (time.perf_counter() - start < min_seconds and len(times) < 200):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times_ms = np.array(times) * 1e3
    p50 = float(np.percentile(times_ms, 50))
    return {"runner": runner, "hist_len": hist_len, "num_candidates": cands, "batch": 1,
            "iterations": len(times), "p50_ms": p50, "p99_ms": float(np.percentile(times_ms, 99)),
            "candidates_per_s": cands / (p50 / 1e3), "flops": flops, "achieved_gflops": flops / (p50 / 1e3) / 1e9,
            "peak_rss_mb": peak_kb / 1024, "peak_rss_delta_mb": (peak_kb - baseline_kb) / 1024}


def export_bench_onnx(directory: Path, precisions: list[str]) -> dict[str, str]:
    """fp32 export, and the fp16 / int8 variants the calibration package makes from it (calibrated
    on random requests: the weights are random too, and latency does not depend on the values)."""
    import numpy as np
    import onnx
    import torch

    from onerank_export.calibration.fp16 import convert_fp16
    from onerank_export.calibration.int8 import quantize_int8
    from onerank_export.export.onnx_export import export_onnx
    from onerank_export.model.onerank import OneRankModel
    from onerank_export.parity.cases import random_request

    torch.manual_seed(0)
    cfg = bench_config()
    path = directory / "bench.fp32.onnx"
    export_onnx(OneRankModel(cfg).eval(), path)
    paths = {"fp32": str(path)}
    rng = np.random.default_rng(0)
    batches = [random_request(cfg, rng, 4, 64, 64) for _ in range(4)]
    for precision in precisions:
        if precision == "fp16":
            proto = convert_fp16(onnx.load(str(path)), batches).proto
        elif precision == "int8":
            proto = quantize_int8(path, batches, method="minmax").proto
        else:
            continue
        paths[precision] = str(directory / f"bench.{precision}.onnx")
        onnx.save(proto, paths[precision])
    return paths


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("tools/bench/results"))
    ap.add_argument("--quick", action="store_true", help="short runs (smoke test of the script)")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    min_seconds = 0.5 if args.quick else 3.0
    if args.child:
        runner, hist_len, cands, onnx_path = args.child
        print(json.dumps(child(runner, int(hist_len), int(cands), onnx_path, min_seconds)))
        return 0

    from rich.console import Console
    from rich.table import Table

    console = Console(width=140)
    args.out.mkdir(parents=True, exist_ok=True)
    peak = measure_peak_gflops(THREADS)
    console.print(f"CPU: {cpu_model()}; matmul peak (torch fp32 1024^3, {THREADS} threads): {peak:.1f} GFLOP/s")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        onnx_paths = export_bench_onnx(Path(tmp), ["fp32", "fp16", "int8"])

        def run(runner: str, hist_len: int, cands: int) -> dict | None:
            onnx_path = onnx_paths.get(runner.removeprefix("ort-"), "")
            cmd = [sys.executable, __file__, "--child", runner, str(hist_len), str(cands), onnx_path]
            if args.quick:
                cmd.insert(2, "--quick")
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **CHILD_ENV})
            if proc.returncode != 0:
                console.print(f"[red]{runner} L={hist_len} N={cands} failed[/]: {proc.stderr.strip()[-400:]}")
                return None
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            row["percent_of_peak"] = 100 * row["achieved_gflops"] / peak
            console.print(f"  {runner:14s} L={hist_len:5d} N={cands:5d}  p50 {row['p50_ms']:8.2f} ms")
            return row

        for hist_len, cands in SWEEP:
            rounds = HEADLINE_ROUNDS if (hist_len, cands) == HEADLINE and not args.quick else 1
            # Rounds are interleaved (every runner once, then again), so a slow spell of the VM
            # lands on all runners instead of on one; the row kept is each runner's median round.
            by_runner: dict[str, list[dict | None]] = {r: [] for r in RUNNERS}
            for _ in range(rounds):
                for runner in RUNNERS:
                    by_runner[runner].append(run(runner, hist_len, cands))  # None if it failed
            for runs in by_runner.values():
                ok = sorted((r for r in runs if r is not None), key=lambda r: r["p50_ms"])
                if ok:
                    row = dict(ok[len(ok) // 2])  # the median of an odd count; the slower middle of an even one
                    row["p50_ms_rounds"] = [r and r["p50_ms"] for r in runs]  # in the order they ran
                    rows.append(row)
    table = Table(title=f"request latency, B=1, {THREADS} threads (peak {peak:.0f} GFLOP/s)")
    for col in ("runner", "L", "N", "p50 ms", "p99 ms", "cand/s", "GFLOP/req", "GFLOP/s", "% peak", "peak MB",
                "+MB infer"):
        table.add_column(col, justify="left" if col == "runner" else "right")
    for r in rows:
        table.add_row(r["runner"], str(r["hist_len"]), str(r["num_candidates"]), f"{r['p50_ms']:.2f}",
                      f"{r['p99_ms']:.2f}", f"{r['candidates_per_s']:,.0f}", f"{r['flops'] / 1e9:.3f}",
                      f"{r['achieved_gflops']:.1f}", f"{r['percent_of_peak']:.0f}", f"{r['peak_rss_mb']:.0f}",
                      f"{r['peak_rss_delta_mb']:.0f}")
    console.print(table)
    summary = summarise(rows)
    for line in summary["lines"]:
        console.print(line)
    result = {"cpu": cpu_model(), "threads": THREADS, "matmul_peak_gflops": peak, "rows": rows, "summary": summary,
              "host": os.uname().nodename, "cpu_count": os.cpu_count()}
    (args.out / "latency.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(rows, args.out / "latency_vs_n.png")
    console.print(f"wrote {args.out / 'latency.json'} and {args.out / 'latency_vs_n.png'}")
    return 0


def summarise(rows: list[dict]) -> dict:
    def p50(runner, hist_len, cands):
        return next((r["p50_ms"] for r in rows if (r["runner"], r["hist_len"], r["num_candidates"]) ==
                     (runner, hist_len, cands)), float("nan"))

    dense_plain, dense_ftz, serving, ort, ort16, ort8 = (p50(r, *HEADLINE) for r in RUNNERS)
    dense = min(dense_plain, dense_ftz)
    growth = p50("ort-fp32", 256, 2048) / p50("ort-fp32", 256, 128)
    out = {"ort_vs_dense_L256_N512": dense / ort, "ort_vs_serving_L256_N512": serving / ort,
           "ort_growth_N128_to_N2048": growth, "int8_vs_fp32_ort_L256_N512": ort / ort8,
           "fp16_vs_fp32_ort_L256_N512": ort / ort16}
    out["eager_dense_reference_ms"] = dense
    rounds = {r["runner"]: r["p50_ms_rounds"] for r in rows if (r["hist_len"], r["num_candidates"]) == HEADLINE}
    per_round = [s / o for s, o in zip(rounds.get("eager-serving", []), rounds.get("ort-fp32", []), strict=False)
                 if s and o]  # paired by round; a failed round has no ratio
    out["ort_vs_serving_L256_N512_rounds"] = per_round
    out["lines"] = [f"L=256 N=512: ORT fp32 is {out['ort_vs_dense_L256_N512']:.2f}x faster than eager-dense "
                    f"(the faster of {dense_plain:.2f} ms as it comes and {dense_ftz:.2f} ms with denormals flushed), "
                    f"{out['ort_vs_serving_L256_N512']:.2f}x faster than eager-serving (medians of "
                    f"{len(rounds.get('ort-fp32', []))} interleaved rounds; round by round: "
                    f"{', '.join(f'{x:.2f}x' for x in per_round)})",
                    f"ORT fp32 latency grows {growth:.1f}x from N=128 to N=2048 (16x more candidates)",
                    f"L=256 N=512: ORT int8 runs at {out['int8_vs_fp32_ort_L256_N512']:.2f}x and ORT fp16 at "
                    f"{out['fp16_vs_fp32_ort_L256_N512']:.2f}x the speed of ORT fp32 on this CPU "
                    "(tools/bench/profile_int8.py says why)"]
    return out


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for runner in sorted({r["runner"] for r in rows}):
        pts = sorted((r["num_candidates"], r["p50_ms"]) for r in rows if r["runner"] == runner and r["hist_len"] == 256)
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=runner)
    ax.set(xscale="log", yscale="log", xlabel="candidates per request (N)", ylabel="p50 latency (ms)",
           title="OneRank request latency, L=256, B=1")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
