"""The tritonserver part of bench_user_cache.py: p50 of the plain `onerank` model (a repository built
without the user cache) vs the cached model on a miss and on a hit, over HTTP, one client.

Both repositories are cpu-target, latency profile (1 instance x all cores, no batching delay), and both
servers run at once, so single, miss and hit are interleaved per iteration like the in-process table.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
from user_cache_support import fresh_histories, pct, timed


def _repositories(tmp: Path, cfg, paths: dict[str, Path]):
    """The plain cpu-target repository and the --user-cache one (in-process tier, the default budget).
    The halves go in as exported: the cached model's sessions apply the CPU rewrite when they load."""
    from onerank_export.export.ort_cpu_graph import write_ort_cpu_model
    from onerank_export.serving.profiles import Target, serving_plan
    from onerank_export.serving.repository import UserCacheModels, write_model_repository
    from onerank_export.serving.user_cache import CacheSettings

    plan = serving_plan(Target.CPU, "--target cpu", "latency")
    cpu_single = write_ort_cpu_model(paths["single"], tmp / "single.cpu.onnx")
    plain = write_model_repository(tmp / "plain", cfg, plan, {"fp32": paths["single"]}, {}, None,
                                   cpu_onnx={"fp32": cpu_single})
    cached = write_model_repository(tmp / "cached", cfg, plan, {"fp32": paths["single"]}, {}, None,
                                    cpu_onnx={"fp32": cpu_single},
                                    user_cache=UserCacheModels(paths["encoder"], paths["scorer"], CacheSettings()))
    return plain, cached


def run(cfg, paths: dict[str, Path], shapes, reps: int) -> dict:
    from onerank_export.serving.client import OneRankClient
    from onerank_export.serving.server import TritonServer
    from onerank_export.spec import random_request

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        plain, cached = _repositories(Path(tmp), cfg, paths)
        with TritonServer(plain.path, models=[plain.python_model]) as s_plain, \
                TritonServer(cached.path, models=[cached.python_model], metrics_port=0) as s_cached:
            single = OneRankClient(s_plain.http_url, validate=False).score
            score = OneRankClient(s_cached.http_url, validate=False).score
            for L, N in shapes:
                rng = np.random.default_rng(L + N)
                feed = random_request(cfg, rng, 1, L, N, full=True)
                fresh = fresh_histories(cfg, rng, reps + 3, L)
                single(feed), score(feed), score({**feed, **fresh.pop()})  # warm-up; `feed` is now cached
                t = {"single": [], "miss": [], "hit": []}
                for _ in range(reps):
                    t["single"].append(timed(single, feed)[0])
                    t["miss"].append(timed(score, {**feed, **fresh.pop()})[0])
                    t["hit"].append(timed(score, feed)[0])
                row = {"L": L, "N": N, "reps": reps}
                for k, xs in t.items():
                    row[f"{k}_p50_ms"], row[f"{k}_p90_ms"] = pct(xs, 50), pct(xs, 90)
                rows.append(row)
            metrics = _cache_metrics(s_cached.metrics_url, cached.python_model)
            rss = {"plain_rss_bytes": s_plain.rss_bytes(), "cached_rss_bytes": s_cached.rss_bytes()}
    return {"server": "tritonserver from nvidia-pytriton, python backend, cpu target, latency profile",
            "note": "two servers at once (plain repository and --user-cache repository), requests interleaved",
            "rows": rows, "metrics": metrics, **rss, "finished": time.strftime("%H:%M:%S")}


def _cache_metrics(url: str, model: str) -> dict:
    """The cache's Triton custom metrics after the run: hits are the hit requests plus one warm-up."""
    import urllib.request

    from onerank_export.serving.cache_metrics import parse_cache_metrics

    with urllib.request.urlopen(url, timeout=10) as r:
        return parse_cache_metrics(r.read().decode(), model)


def unavailable() -> str | None:
    """Why this part cannot run here, or None."""
    import inspect
    import shutil

    from onerank_export.serving.repository import write_model_repository

    if "user_cache" not in inspect.signature(write_model_repository).parameters:
        return "this checkout's model repository has no user-cache support (write_model_repository(user_cache=...))"
    try:
        import pytriton  # noqa: F401
    except ImportError:
        return "nvidia-pytriton (tritonserver) is not installed" if shutil.which("tritonserver") is None else None
    return None
