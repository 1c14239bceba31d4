#!/usr/bin/env python
"""Embedding tables at scale (issue 13): build cost per mode and request latency inline vs split (not a test).

    python tools/bench/bench_scale.py [--rows 20000000] [--small-rows 2000000] [--reps 40] [--inline-big]
                                      [--skip-redis REASON] [--skip-builds] [--quick] [--work DIR] [--keep]

Writes synthetic checkpoints (the demo checkpoint's weights and config, the item table grown to --rows and to
--small-rows: the demo's rows, then random rows of the same scale; scale_support.make_checkpoint streams the
table, it is never in memory), then under `flock /tmp/onerank-big-run.lock` and `/usr/bin/time -v`:
`build --embeddings split --target cpu --engine skip` of the big one per store dtype (fp32, fp16, int8),
`--embeddings inline` + `--embeddings split` of the small one (the inline/split latency pair of one model),
and with --inline-big the big one inline too. Per build: wall time, peak RSS (time -v and the manifest's
memory block), output size, files over 100 MB (hard links marked: the table copies on disk).

Latency at L=256, N=512, B=1, the runners interleaved (one request each per rep): in process (the inline
graph in ONNX Runtime vs Table.lookup of the 768 ids + the dense graph; lookup share = lookup / total),
before and after touching every page of the store; then through tritonserver over HTTP, all servers up at
once: the inline repository, the split repositories with the mmap store, and the small split repository
with its lookup reading Redis (the store pushed with `embeddings push`'s function; --skip-redis REASON).
--quick: 200k/20k rows, fp32 store only, 10 reps. Run it alone: it holds the big-run lock only per build.
Prints markdown tables and writes tools/bench/results/scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from hostinfo import cpu_model, measure_peak_gflops
from scale_support import loadavg, make_checkpoint, run_build

DEMO_NOTE = "the demo checkpoint (onerank-export demo) must be cached: run the demo once"
L, N = 256, 512


def demo_checkpoint() -> Path:
    found = sorted((Path.home() / ".cache" / "onerank-export").glob("demo-*/model.safetensors"))
    if not found:
        raise SystemExit(f"error: no demo checkpoint found; {DEMO_NOTE}")
    return found[0].parent


def builds(work: Path, rows: int, small: int, dtypes: list[str], inline_big: bool) -> dict:
    big_ckpt, small_ckpt = work / f"ckpt{rows}", work / f"ckpt{small}"
    made = {}
    for ckpt, n in ((big_ckpt, rows), (small_ckpt, small)):
        if not (ckpt / "model.safetensors").exists():
            t0 = time.perf_counter()
            make_checkpoint(demo_checkpoint(), ckpt, n)
            made[n] = time.perf_counter() - t0
    plan = [(f"split-{d}-{rows}", big_ckpt, ["--embeddings", "split", "--embedding-dtype", d]) for d in dtypes]
    plan += [(f"inline-{small}", small_ckpt, ["--embeddings", "inline", "--precision", "none"]),
             (f"split-fp32-{small}", small_ckpt, ["--embeddings", "split"])]
    if inline_big:
        plan.append((f"inline-{rows}", big_ckpt, ["--embeddings", "inline", "--precision", "none"]))
    out = {"checkpoint_seconds": made}
    for name, ckpt, extra in plan:
        out[name] = run_build(ckpt, work / name, extra, work / f"{name}.log")
        print(f"{name}: rc {out[name]['rc']}, {out[name].get('wall_s')} s, "
              f"{(out[name].get('time_v_peak_rss_bytes') or 0) / 1e9:.2f} GB", flush=True)
    return out


def _feed(cfg, rng, vocab: int) -> dict[str, np.ndarray]:
    from onerank_export import spec

    feed = spec.random_request(cfg, rng, 1, L, N, full=True)
    for name in ("hist_item_ids", "cand_item_ids"):
        feed[name] = rng.integers(1, vocab, feed[name].shape).astype(feed[name].dtype)
    return feed


def _onnx(build: Path, dense: bool) -> Path:
    """The graph cpu_session opens (it applies the CPU rewrite to the dense graph, which split mode does not
    write rewritten to onnx/; the inline CPU file is already rewritten): the same graph code either way."""
    path = build / "onnx" / ("onerank.dense.fp32.onnx" if dense else "onerank.fp32.cpu.onnx")
    if not path.exists():
        raise SystemExit(f"error: {path} not found; rebuild {build.name} (or drop --skip-builds)")
    return path


def prefault(table) -> float:
    """Touch every page of a memory-mapped table (what a long-running server has done): seconds taken."""
    t0 = time.perf_counter()
    for start in range(0, table.rows, 1 << 20):
        float(np.asarray(table.data[start:start + (1 << 20)]).sum(dtype=np.float64))
    return time.perf_counter() - t0


def in_process(work: Path, inlines: dict[str, Path], splits: dict[str, Path], reps: int, warm: bool) -> dict:
    """Interleaved: per rep every runner scores a fresh request (the split ones time lookup and dense apart).

    warm=False: the store's pages are in the page cache (the build just wrote them) but not yet mapped by
    this process, so a lookup pays a page fault per row it has not touched; warm=True: every page touched
    first (prefault), the steady state of a server that has run a while."""
    from onerank_export.embeddings.split import ROW_INPUTS
    from onerank_export.embeddings.store import open_store
    from onerank_export.export.ort_session import cpu_session, default_threads
    from onerank_export.model.checkpoint import load_config

    threads = default_threads()
    runners = {}
    for name, inline in inlines.items():
        cfg = load_config(work / inline.name.replace("inline-", "ckpt"))
        runners[name] = (cpu_session(_onnx(inline, False), threads, spinning=False), None, cfg.item_vocab_size)
    for name, build in splits.items():
        vocab = open_store(build / "embeddings").table().rows
        table = open_store(build / "embeddings").table()
        if warm:
            print(f"prefault {name}: {prefault(table):.1f} s", flush=True)
        runners[name] = (cpu_session(_onnx(build, True), threads, spinning=False), table, vocab)
    rng = np.random.default_rng(1)
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in runners}
    for rep in range(reps + 5):
        for name, (session, table, vocab) in runners.items():
            feed = _feed(cfg, rng, vocab)
            t0 = time.perf_counter()
            if table is not None:
                feed.update({row: table.lookup(feed[ids]) for row, ids in ROW_INPUTS.items()})
            t1 = time.perf_counter()
            session.run(["scores"], feed)
            t2 = time.perf_counter()
            if rep >= 5:  # warm-up: page cache, ORT arenas
                times[name].append((t1 - t0, t2 - t1))
    result = {}
    for name, samples in times.items():
        lookup = statistics.median(s[0] for s in samples) * 1e3
        total = statistics.median(s[0] + s[1] for s in samples) * 1e3
        result[name] = {"rows": runners[name][2], "total_ms": total, "lookup_ms": lookup,
                        "dense_ms": statistics.median(s[1] for s in samples) * 1e3,
                        "lookup_share": lookup / total if runners[name][1] is not None else None, "reps": len(samples)}
    return result


def _redis_repository(build: Path, url: str) -> Path:
    """A copy of a split build (hard links) whose lookup model reads Redis instead of the store."""
    from onerank_export.serving.parameters import EMBEDDING_BACKEND_PARAMETER, EMBEDDING_REDIS_URL_PARAMETER

    copy = build.with_name(build.name + "-redis")
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(build, copy, copy_function=lambda s, d: Path(d).hardlink_to(s))
    config = next(copy.rglob("onerank_lookup/config.pbtxt"))
    text = config.read_text()
    config.unlink()  # a hard link: never write through it into the mmap build
    for key, value in ((EMBEDDING_BACKEND_PARAMETER, "redis"), (EMBEDDING_REDIS_URL_PARAMETER, url)):
        text += f'parameters {{ key: "{key}" value {{ string_value: "{value}" }} }}\n'
    config.write_text(text)
    return copy


def through_triton(work: Path, repos: dict[str, Path], vocab: dict[str, int], reps: int) -> dict:
    """One tritonserver per repository, all up at once, the requests interleaved across them (one request to
    each per rep, sequential): the servers share the 2 cores, but never at the same moment."""
    from contextlib import ExitStack

    from onerank_export.model.checkpoint import load_config
    from onerank_export.serving.client import OneRankClient
    from onerank_export.serving.server import TritonServer, resolve_repository, servable_models

    cfg = load_config(next(work.glob("ckpt*")))
    rng = np.random.default_rng(2)
    samples: dict[str, list[float]] = {name: [] for name in repos}
    with ExitStack() as stack:
        clients = {}
        for name, build in repos.items():
            repo = resolve_repository(build)
            load, _ = servable_models(repo)
            server = stack.enter_context(TritonServer(repo, models=load, startup_timeout=300))
            clients[name] = OneRankClient(server.http_url, validate=False)
        for rep in range(reps + 5):
            for name, client in clients.items():
                feed = _feed(cfg, rng, vocab[name])
                t0 = time.perf_counter()
                client.score(feed)
                if rep >= 5:
                    samples[name].append(time.perf_counter() - t0)
    return {name: {"p50_ms": statistics.median(s) * 1e3, "p90_ms": sorted(s)[int(0.9 * (len(s) - 1))] * 1e3,
                   "requests": len(s)} for name, s in samples.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000_000)
    parser.add_argument("--small-rows", type=int, default=2_000_000)
    parser.add_argument("--reps", type=int, default=40)
    parser.add_argument("--skip-redis", metavar="REASON")
    parser.add_argument("--skip-builds", action="store_true", help="reuse the builds in --work")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--inline-big", action="store_true",
                        help="also build the big checkpoint inline and time it in process (~2x the table in RAM)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/onerank-bench-scale"))
    parser.add_argument("--keep", action="store_true", help="keep --work (GBs) afterwards")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.small_rows, args.reps = 200_000, 20_000, 10
    dtypes = ["fp32"] if args.quick else ["fp32", "fp16", "int8"]
    args.work.mkdir(parents=True, exist_ok=True)
    report = {"cpu": cpu_model(), "matmul_peak_gflops": measure_peak_gflops(os.cpu_count() or 1),
              "loadavg_start": loadavg(),
              "rows": args.rows, "small_rows": args.small_rows, "L": L, "N": N}
    if args.skip_builds:
        report["builds"] = json.loads((args.work / "builds.json").read_text())
    else:
        report["builds"] = builds(args.work, args.rows, args.small_rows, dtypes, args.inline_big)
        (args.work / "builds.json").write_text(json.dumps(report["builds"], indent=1))
    print(f"CPU: {report['cpu']}; matmul peak {report['matmul_peak_gflops']:.0f} GFLOP/s; "
          f"load {report['loadavg_start']}")
    print_builds(report["builds"])
    inline = args.work / f"inline-{args.small_rows}"
    inlines = {f"inline-{args.small_rows}": inline}
    if args.inline_big:
        inlines[f"inline-{args.rows}"] = args.work / f"inline-{args.rows}"
    splits = {f"split-mmap-{args.small_rows}": args.work / f"split-fp32-{args.small_rows}",
              f"split-mmap-{args.rows}": args.work / f"split-fp32-{args.rows}"}
    report["in_process"] = {}
    for warm in (False, True):
        key = "prefaulted" if warm else "first_touch"
        report["in_process"][key] = in_process(args.work, inlines, splits, args.reps, warm)
        print(f"\n{key} (load average {loadavg()}):")
        print_in_process(report["in_process"][key])
    repos = {f"inline-{args.small_rows}": inline, **splits}
    vocab = {f"inline-{args.small_rows}": args.small_rows, f"split-mmap-{args.small_rows}": args.small_rows,
             f"split-mmap-{args.rows}": args.rows}
    server = None
    if args.skip_redis:
        report["redis_skipped"] = args.skip_redis
    else:
        from onerank_export.embeddings.redis_backend import push
        from onerank_export.serving.redis_server import RedisServer

        server = RedisServer().start()
        pushed = push(splits[f"split-mmap-{args.small_rows}"], server.url, batch_rows=4096)
        report["redis_push"] = {"rows": args.small_rows, "seconds": pushed.seconds, "rows_per_s": pushed.rows_per_s}
        name = f"split-redis-{args.small_rows}"
        repos[name] = _redis_repository(splits[f"split-mmap-{args.small_rows}"], server.url)
        vocab[name] = args.small_rows
    try:
        report["triton"] = through_triton(args.work, repos, vocab, args.reps)
        print_triton(report["triton"])
    finally:
        if server is not None:
            server.stop()
    report["loadavg_end"] = loadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scale.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out / 'scale.json'}")
    if not args.keep:
        shutil.rmtree(args.work, ignore_errors=True)
    return 0


def print_builds(builds: dict) -> None:
    print("\n| build | wall s | peak RSS GB (time -v) | checkpoint stage RSS GB | output GB (du) | files > 100 MB |"
          "\n|---|---|---|---|---|---|")
    for name, r in builds.items():
        if not isinstance(r, dict) or "rc" not in r:
            continue
        if r["rc"] != 0:
            print(f"| {name} | failed: {r.get('error')} | | | | |")
            continue
        after = (r.get("memory") or {}).get("peak_rss_after_stage", {})
        big = ", ".join(f"{f['path']} {f['bytes'] / 1e9:.2f} GB" + (" (hard link)" if f["hard_link_of_earlier"] else "")
                        for f in r["files_over_100MB"])
        print(f"| {name} | {r['wall_s']:.0f} | {r['time_v_peak_rss_bytes'] / 1e9:.2f} | "
              f"{after.get('checkpoint', 0) / 1e9:.2f} | {r['du_bytes'] / 1e9:.2f} | {big} |")


def print_triton(rows: dict) -> None:
    print(f"\n| tritonserver HTTP, L={L}, N={N}, B=1 | p50 ms | p90 ms | requests |\n|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | {r['requests']} |")


def print_in_process(rows: dict) -> None:
    print(f"\n| in-process, L={L}, N={N}, B=1 | rows | p50 ms | lookup ms | dense ms | lookup share |\n"
          "|---|---|---|---|---|---|")
    for name, r in rows.items():
        share = f"{r['lookup_share']:.1%}" if r["lookup_share"] is not None else "-"
        print(f"| {name} | {r['rows']:,} | {r['total_ms']:.2f} | {r['lookup_ms']:.3f} | {r['dense_ms']:.2f} | "
              f"{share} |")


if __name__ == "__main__":
    sys.exit(main())
