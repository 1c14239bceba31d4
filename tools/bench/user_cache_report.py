"""Printing of bench_user_cache.py: one line per measured row as it lands, the markdown tables for
docs/benchmarks.md, and the latency plot."""

from __future__ import annotations

from pathlib import Path

MIB = 2**20
nan = float("nan")


def print_latency_row(r: dict) -> None:
    f = r["flops"]
    print(f"L={r['L']:5d} N={r['N']:4d} ({r['reps']} reps, load {r['load_avg_1m']:.2f}, others "
          f"{r['foreign_cores']:.2f} cores): "
          f"single {r['single_p50_ms']:7.2f} "
          f"miss {r['miss_p50_ms']:7.2f} hit {r['hit_p50_ms']:7.2f} ms  hit x{r['hit_speedup']:.2f} "
          f"(FLOP bound x{f['hit_speedup_bound']:.2f})  miss {100 * r['miss_overhead']:+.1f}%", flush=True)


def print_mix_row(r: dict) -> None:
    print(f"mix L={r['L']} N={r['N']} R={r['repeat']:2d} (others {r['foreign_cores']:.2f} cores): "
          f"single {r['single_rps']:6.1f} req/s, cached "
          f"{r['cached_rps']:6.1f} req/s (x{r['speedup']:.2f}), hit rate {r['hit_rate']:.3f}", flush=True)


def print_triton(t: dict) -> None:
    if "skipped" in t:
        print(f"tritonserver: skipped: {t['skipped']}", flush=True)
        return
    for r in t["rows"]:
        print(f"triton L={r['L']} N={r['N']}: single {r['single_p50_ms']:.2f} miss {r['miss_p50_ms']:.2f} "
              f"hit {r['hit_p50_ms']:.2f} ms", flush=True)


def print_rss(r: dict) -> None:
    print(f"RSS: baseline {r['baseline_bytes'] / MIB:.1f} MiB, peak {r['peak_bytes'] / MIB:.1f} MiB, limit "
          f"{r['limit_bytes'] / MIB:.0f} MiB, cache {r['cache_bytes'] / MIB:.1f} MiB over {r['histories']} histories "
          f"-> {r['verdict']}", flush=True)


def markdown(res: dict) -> str:
    h = res["host"]
    out = [f"CPU: {h['cpu']}; matmul peak (torch fp32 1024^3, {h['threads']} threads): "
           f"**{h['matmul_peak_gflops']:.0f} GFLOP/s**; load average (1 min) {h['load_avg_start'][0]:.2f} at the "
           f"start, {h['load_avg_end'][0]:.2f} at the end. Model: {h['model']}.", "",
           "| L | N | single p50 (p90) ms | miss p50 (p90) ms | hit p50 (p90) ms | hit speedup | FLOP bound | "
           "miss overhead | states KB/row | user share: time (FLOPs) | reps | load (others' cores) |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["latency"] + [dict(x, rerun=True) for x in res["headline_reruns"]]:
        f = r["flops"]
        out.append(f"| {r['L']}{' (rerun)' if r.get('rerun') else ''} | {r['N']} | {r['single_p50_ms']:.2f} "
                   f"({r['single_p90_ms']:.2f}) | {r['miss_p50_ms']:.2f} ({r['miss_p90_ms']:.2f}) | "
                   f"{r['hit_p50_ms']:.2f} ({r['hit_p90_ms']:.2f}) | {r['hit_speedup']:.2f}x | "
                   f"{f['hit_speedup_bound']:.2f}x | {100 * r['miss_overhead']:+.1f}% | {r['states_kb_per_row']:.0f} | "
                   f"{100 * r['user_share_measured']:.0f}% ({100 * f['user_share']:.0f}%) | {r['reps']} | "
                   f"{r['load_avg_1m']:.2f} ({r['foreign_cores']:.2f}) |")
    out += ["", "| L | N | repeats R | requests (distinct) | single req/s | cached req/s | speedup | hit rate "
            "(expected 1 - 1/R) | others' cores |", "|---|---|---|---|---|---|---|---|---|"]
    for r in res["traffic_mix"]:
        out.append(f"| {r['L']} | {r['N']} | {r['repeat']} | {r['requests']} ({r['distinct']}) | {r['single_rps']:.1f} "
                   f"| {r['cached_rps']:.1f} | {r['speedup']:.2f}x | {r['hit_rate']:.3f} "
                   f"({r['expected_hit_rate']:.3f}) | {r['foreign_cores']:.2f} |")
    t = res["triton"]
    out.append("")
    if "skipped" in t:
        out.append(f"tritonserver: skipped: {t['skipped']}")
    else:
        out += [f"tritonserver ({t['server']}, HTTP, 1 client): {t['note']}", "",
                "| L | N | single p50 (p90) ms | miss p50 (p90) ms | hit p50 (p90) ms | hit speedup | miss overhead "
                "| in-process single / hit p50 ms | reps |", "|---|---|---|---|---|---|---|---|---|"]
        for r in t["rows"]:
            out.append(f"| {r['L']} | {r['N']} | {r['single_p50_ms']:.2f} ({r['single_p90_ms']:.2f}) | "
                       f"{r['miss_p50_ms']:.2f} ({r['miss_p90_ms']:.2f}) | {r['hit_p50_ms']:.2f} "
                       f"({r['hit_p90_ms']:.2f}) | {r['single_p50_ms'] / r['hit_p50_ms']:.2f}x | "
                       f"{100 * (r['miss_p50_ms'] / r['single_p50_ms'] - 1):+.1f}% | "
                       f"{r.get('inproc_single_p50_ms', nan):.2f} / {r.get('inproc_hit_p50_ms', nan):.2f} "
                       f"| {r['reps']} |")
    r = res["rss"]
    out += ["", "| histories (L, N) | states/row | limit | baseline RSS | peak RSS | after | peak - baseline | "
            "cache bytes (entries, evictions) | unbounded would be | verdict: peak <= baseline + limit + "
            f"{r['slack_bytes'] // MIB} MiB |", "|---|---|---|---|---|---|---|---|---|---|",
            f"| {r['histories']:,} ({r['L']}, {r['N']}) | {r['states_bytes_per_row'] / 1024:.0f} KB | "
            f"{r['limit_bytes'] / MIB:.0f} MiB | {r['baseline_bytes'] / MIB:.1f} MiB | {r['peak_bytes'] / MIB:.1f} MiB "
            f"| {r['after_bytes'] / MIB:.1f} MiB | {(r['peak_bytes'] - r['baseline_bytes']) / MIB:.1f} MiB | "
            f"{r['cache_bytes'] / MIB:.1f} MiB ({r['entries']}, {r['evictions']:,}) | "
            f"{r['unbounded_bytes'] / MIB:,.0f} MiB | {r['verdict']} |",
            "", "RSS samples (requests: MiB): " + ", ".join(f"{i}: {b / MIB:.0f}" for i, b in r["samples"])]
    return "\n".join(out) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    labels = [f"L={r['L']}\nN={r['N']}" for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(9, 4))
    for i, (key, name) in enumerate([("single", "single graph"), ("miss", "cache miss"), ("hit", "cache hit")]):
        ax.bar(x + (i - 1) * 0.27, [r[f"{key}_p50_ms"] for r in rows], 0.27, label=name)
    ax.set(yscale="log", ylabel="p50 latency (ms)", xticks=x, xticklabels=labels,
           title="User-state cache, in-process ONNX Runtime, B=1 (d=64, 2 layers, random weights)")
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
