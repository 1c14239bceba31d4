"""The user-state cache in a GPU-target repository: `onerank` is a python-backend model that keeps the
cache in host memory and calls the two halves as Triton models (BLS, serving/bls.py):

    onerank (python, KIND_CPU) ──BLS──▶ onerank_user_encoder_trt_fp32 / onerank_candidate_scorer_trt_fp32
                                        (TensorRT, KIND_GPU; where the engines were built)
                                 or ──▶ onerank_user_encoder_onnx_fp32 / onerank_candidate_scorer_onnx_fp32
                                        (ONNX Runtime, KIND_GPU; the halves as exported)

The cache key's model identity is written into the config (the halves are not in the model's own
directory): the checkpoint, the precision and the sha256 of the encoder file the BLS calls run.
The model has no warm-up (a BLS call fails while the server starts); the halves warm themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from onerank_export.config import OneRankConfig
from onerank_export.errors import StageError
from onerank_export.serving import model_config as mcfg
from onerank_export.serving import parameters as names
from onerank_export.serving.profiles import ServingPlan, Target

CACHED_MODEL = "onerank"


def write_gpu_cached_model(repo: Path, config: OneRankConfig, plan: ServingPlan, user_cache,
                           trt_halves: Mapping[tuple[str, str], object], python_source: Path,
                           write_model: Callable[..., dict[str, Path]], artifacts: dict[str, Path]) -> list[str]:
    """Write `onerank` (and, without fp32 engines of the halves, their ONNX Runtime models); returns the
    model names written. `trt_halves`: {(precision, role): HalfEngine} already written as TensorRT models.
    The model file and the writer come from serving/repository.py, which calls this (no import cycle)."""
    from onerank_export.serving.cached_scoring import model_identity

    if plan.target is not Target.GPU:
        raise StageError(f"the BLS-served user-state cache is for a gpu-target repository, not {plan.target}")
    models: list[str] = []
    encoder_trt = trt_halves.get(("fp32", "user_encoder"))
    if encoder_trt is not None:
        encoder = names.tensorrt_half_model(names.USER_ENCODER_MODEL, "fp32")
        scorer = names.tensorrt_half_model(names.CANDIDATE_SCORER_MODEL, "fp32")
        identity_file = encoder_trt.plan
    else:
        encoder, scorer = f"{names.USER_ENCODER_MODEL}_onnx_fp32", f"{names.CANDIDATE_SCORER_MODEL}_onnx_fp32"
        for name, role, source in ((encoder, "user_encoder", user_cache.encoder),
                                   (scorer, "candidate_scorer", user_cache.scorer)):
            artifacts |= write_model(repo / name, mcfg.user_cache_onnxruntime_config(name, config, role, plan),
                                     {"model.onnx": source})
            models.append(name)
        identity_file = user_cache.encoder
    cfg = mcfg.python_bls_config(CACHED_MODEL, config, plan)
    params = {names.USER_ENCODER_MODEL_PARAMETER: encoder, names.CANDIDATE_SCORER_MODEL_PARAMETER: scorer,
              names.USER_CACHE_IDENTITY_PARAMETER: model_identity(user_cache.encoder, identity_file),
              **user_cache.settings.parameters()}
    for key, value in params.items():
        cfg.parameters[key].string_value = value
    artifacts |= write_model(repo / CACHED_MODEL, cfg, {"model.py": python_source})
    return [*models, CACHED_MODEL]
