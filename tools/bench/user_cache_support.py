"""Helpers of bench_user_cache.py: the benchmark model and its three exported graphs (cached on
disk), the FLOP estimate per path, the ORT sessions and cached scorer, RSS and percentiles."""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path

import numpy as np

SEED = 0
MAX_HIST_LEN = 4096
MAX_CANDIDATES = 512
# The code that decides what the three graphs are (the package's export/ and model/ and these): a change
# to any of it re-exports.
GRAPH_SOURCES = ("user_states.py", "config.py", "spec.py")
GRAPHS = ("single", "encoder", "scorer")


def bench_config():
    """The demo architecture (OneRankConfig defaults: d=64, 2 layers, 4 heads, K=3) with max_hist_len raised."""
    from onerank_export.config import OneRankConfig

    return OneRankConfig(max_hist_len=MAX_HIST_LEN, max_candidates=MAX_CANDIDATES)


def ensure_exports(cache_root: Path | None = None) -> dict[str, Path]:
    """single / encoder / scorer fp32 ONNX of a synthetic checkpoint-free model (torch.manual_seed(SEED),
    random weights: latency does not depend on their values), exported once and kept in the user cache."""
    import onerank_export

    cfg = bench_config()
    src = Path(onerank_export.__file__).parent
    h = hashlib.sha256(cfg.to_json().encode() + str(SEED).encode())
    sources = [*(src / "export").glob("*.py"), *(src / "model").glob("*.py"), *map(src.joinpath, GRAPH_SOURCES)]
    for path in sorted(sources):
        h.update(path.read_bytes())
    cache_root = cache_root or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "onerank-export"
    out = cache_root / f"bench-user-cache-{h.hexdigest()[:16]}"
    paths = {g: out / f"{g}.fp32.onnx" for g in GRAPHS}
    if all(p.is_file() for p in paths.values()):
        return paths
    import torch

    from onerank_export.export.onnx_config import CANDIDATE_SCORER_ONNX_CONFIG, USER_ENCODER_ONNX_CONFIG
    from onerank_export.export.onnx_export import export_onnx
    from onerank_export.model.onerank import OneRankModel

    torch.manual_seed(SEED)
    model = OneRankModel(cfg).eval()
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    export_onnx(model, tmp / paths["single"].name)
    export_onnx(model, tmp / paths["encoder"].name, export_config=USER_ENCODER_ONNX_CONFIG)
    export_onnx(model, tmp / paths["scorer"].name, export_config=CANDIDATE_SCORER_ONNX_CONFIG)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return paths


def flops(cfg, hist_len: int, cands: int) -> dict[str, float]:
    """Matmul FLOPs (2 per multiply-add) of the user side and the candidate side, from the config and the
    serving graph's structure (export/serving_graph.py): per layer the user side is qkv (6Ud^2), the
    causal attention computed dense over [U, U] (4U^2 d), out projection (2Ud^2) and FFN (4U d d_ff),
    except the last layer, which only projects keys and values; the candidate side is the same over
    R = N(K+1) rows against U + 2 keys, with the last layer's queries the N K task rows only.
    Embeddings, norms, task heads and the matching score are left out (torch's FlopCounterMode counts
    ~1-4% more on the candidate side at L=1024 N=128 / L=256 N=512), so the hit bound is an upper bound."""
    d, ff, layers, k = cfg.d_model, cfg.d_ff, cfg.n_layers, cfg.num_tasks
    u = hist_len + cfg.num_anchor_tokens
    g = cands * (k + 1)
    user = cand = 0.0
    for i in range(layers):
        last = i == layers - 1
        user += 6 * u * d * d + (0 if last else 4 * u * u * d + 2 * u * d * d + 4 * u * d * ff)
        rows = cands * k if last else g
        # Scores use the extended query (3 extra columns per head: mask and the two in-group keys).
        cand += 6 * g * d * d + 2 * rows * (u + 2) * (2 * d + 3 * cfg.n_heads) + 2 * rows * d * d + 4 * rows * d * ff
    return {"user": user, "cand": cand, "single": user + cand,
            # A hit runs the candidate side only: if time followed FLOPs, single / hit could not exceed this.
            "hit_speedup_bound": (user + cand) / cand, "user_share": user / (user + cand)}


def sessions(paths: dict[str, Path], threads: int):
    """The single graph as the product's CPU sessions run it; the halves as every cached path runs them."""
    from onerank_export.export.ort_session import cpu_session
    from onerank_export.serving.cached_scoring import half_sessions

    encoder, scorer = half_sessions(paths["encoder"], paths["scorer"], threads)
    out = {"encoder": encoder, "scorer": scorer}
    if "single" in paths:
        out["single"] = cpu_session(str(paths["single"]), threads, inter_op_threads=1)
    return out


def cached_scorer(cfg, sess: dict, encoder_path: Path, max_bytes: int):
    from onerank_export.serving.cached_scoring import CachedUserScorer, model_identity
    from onerank_export.serving.user_cache import LocalStateCache, TieredStateCache

    identity = model_identity(encoder_path)
    return CachedUserScorer(cfg, sess["encoder"], sess["scorer"], TieredStateCache(LocalStateCache(max_bytes)),
                            identity)


def fresh_histories(cfg, rng: np.random.Generator, count: int, hist_len: int) -> list[dict[str, np.ndarray]]:
    """`count` distinct full histories (ids drawn from [1, vocab): a collision is ~impossible)."""
    return [{"hist_item_ids": rng.integers(1, cfg.item_vocab_size, (1, hist_len), dtype=np.int64),
             "hist_action_ids": rng.integers(1, cfg.action_vocab_size, (1, hist_len), dtype=np.int64)}
            for _ in range(count)]


def timed(fn, *args) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t0, out


def pct(xs, q: float) -> float:
    return float(np.percentile(np.asarray(xs) * 1e3, q))  # seconds -> ms


def rss_bytes() -> int:
    """This process's resident set (psutil is not a dependency; /proc is what it reads too)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def load_average() -> float:
    return os.getloadavg()[0]


class ForeignCpu:
    """CPU time other processes used while a block ran, in cores (busy jiffies of the whole machine from
    /proc/stat minus this process's own CPU time): the load average lags by a minute, this does not.
    0.0 is a quiet machine; on 2 cores, 1.0 is another process holding a whole core."""

    def __enter__(self) -> ForeignCpu:
        self.start = self._sample()
        return self

    def __exit__(self, *exc) -> None:
        busy0, own0, wall0 = self.start
        busy1, own1, wall1 = self._sample()
        self.cores = max(0.0, ((busy1 - busy0) - (own1 - own0)) / (wall1 - wall0))

    @staticmethod
    def _sample() -> tuple[float, float, float]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        tick = os.sysconf("SC_CLK_TCK")
        t = os.times()
        return (sum(fields[:8]) - idle) / tick, t.user + t.system, time.monotonic()
