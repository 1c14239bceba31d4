"""Stage `user cache`: the serving graph's two halves for the cross-request user-state cache.

Exports the user encoder (history -> each layer's user keys and values) and the candidate scorer
(states + context + candidates -> scores) from the same code as the single graph
(export/serving_graph.py), and checks on the spot that scorer(encoder(x)) gives the single graph's
scores on a padded, an empty and a full history. The Triton stage then serves the `onerank` model
through the cache, and the parity stage checks the cached path (miss, then hit) against eager.
"""

from __future__ import annotations

import numpy as np

from onerank_export.config import OneRankConfig
from onerank_export.pipeline.options import BuildOptions
from onerank_export.pipeline.result import StageResult, Status
from onerank_export.pipeline.stages.base import Stage
from onerank_export.pipeline.stages.export import ONNX_DIR, onnx_file_name
from onerank_export.pipeline.state import MODEL, ONNX, USER_CACHE, BuildState
from onerank_export.precision import Precision

# The halves must compose to the single graph: the same ops on the same values, so only the ORT
# sessions' own run-to-run noise is allowed (measured: exactly 0.0 on the CPU provider).
HALVES_ATOL = 1e-6


class UserCacheStage(Stage):
    name = "user cache"
    requires = (MODEL, ONNX)
    provides = (USER_CACHE,)
    critical = True  # the repository serves these halves: without them there is nothing to serve

    def preflight(self, options: BuildOptions, config: OneRankConfig) -> None:
        if options.user_cache_redis:
            from onerank_export.serving.user_cache import CacheSettings

            CacheSettings.from_parameters({"user_cache_redis_url": options.user_cache_redis})

    def run(self, state: BuildState) -> StageResult:
        from onerank_export.export.onnx_config import CANDIDATE_SCORER_ONNX_CONFIG, USER_ENCODER_ONNX_CONFIG
        from onerank_export.export.onnx_export import export_onnx
        from onerank_export.serving.repository import UserCacheModels
        from onerank_export.serving.user_cache import CacheSettings
        from onerank_export.user_states import state_nbytes_per_row

        onnx_dir = state.work / ONNX_DIR
        paths = {}
        for role, config in (("user_encoder", USER_ENCODER_ONNX_CONFIG), ("candidate_scorer",
                                                                        CANDIDATE_SCORER_ONNX_CONFIG)):
            paths[role] = onnx_dir / onnx_file_name(Precision.FP32).replace("onerank.", f"onerank.{role}.")
            export_onnx(state.model, paths[role], checkpoint_sha256=state.checkpoint_sha256, export_config=config)
        worst = _compose_check(state, paths["user_encoder"], paths["candidate_scorer"])
        options = state.options
        settings = CacheSettings(max_bytes=options.user_cache_bytes, redis_url=options.user_cache_redis)
        state.user_cache = UserCacheModels(paths["user_encoder"], paths["candidate_scorer"], settings)
        cfg = state.config
        row = state_nbytes_per_row(cfg, cfg.serving.opt_hist_len)
        metrics = {"compose_max_abs": worst, "state_bytes_per_row_at_opt_hist_len": row,
                   "cache_bytes": settings.max_bytes, "redis": bool(settings.redis_url)}
        artifacts = {"onnx_user_encoder_fp32": paths["user_encoder"],
                     "onnx_candidate_scorer_fp32": paths["candidate_scorer"]}
        if worst > HALVES_ATOL:
            return StageResult(self.name, Status.FAILED, f"scorer(encoder(x)) differs from the single graph by "
                               f"{worst:.2e} (> {HALVES_ATOL:g})", artifacts, metrics)
        entries = settings.max_bytes // max(row, 1)
        return StageResult(self.name, Status.OK,
                           f"user encoder + candidate scorer, scorer(encoder(x)) vs single graph max_abs {worst:.1e}; "
                           f"{row / 1024:.0f} KiB of states per request at L={cfg.serving.opt_hist_len}, "
                           f"~{entries} histories per {settings.max_bytes >> 20} MiB instance cache"
                           + (", Redis shared tier" if settings.redis_url else ""), artifacts, metrics)


def _compose_check(state: BuildState, encoder_path, scorer_path) -> float:
    """Largest |scorer(encoder(x)) - single graph| over padded, empty and full histories."""
    from onerank_export import spec
    from onerank_export.export.ort_session import cpu_session
    from onerank_export.user_states import ENCODER_INPUTS, SCORER_REQUEST_INPUTS, state_names

    cfg = state.config
    single = cpu_session(str(state.onnx[Precision.FP32]), 1)
    encoder, scorer = cpu_session(str(encoder_path), 1), cpu_session(str(scorer_path), 1)
    rng = np.random.default_rng(state.options.seed)
    worst = 0.0
    for batch, hist_len, cands in ((3, min(cfg.max_hist_len, 37), min(cfg.max_candidates, 11)), (1, 1, 1)):
        feed = spec.random_request(cfg, rng, batch, hist_len, cands)
        feed["hist_item_ids"][0] = feed["hist_action_ids"][0] = 0  # an empty history
        states = encoder.run(list(state_names(cfg)), {n: feed[n] for n in ENCODER_INPUTS})
        (split,) = scorer.run(None, {**dict(zip(state_names(cfg), states, strict=True)),
                                     **{n: feed[n] for n in SCORER_REQUEST_INPUTS}})
        (whole,) = single.run(None, feed)
        worst = max(worst, float(np.abs(split - whole).max()))
    return worst
