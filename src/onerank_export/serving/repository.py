"""Write the Triton model repository of a build, for its target (serving/profiles.py).

    DIR/model_repository/            target gpu: every instance group KIND_GPU
        onerank_trt_<precision>/         platform tensorrt_plan, 1/model.plan (where engines were built)
        onerank_onnx_<precision>/        platform onnxruntime_onnx, 1/model.onnx (as exported)
    DIR/model_repository/            target cpu: every instance group KIND_CPU
        onerank/                         python backend running the CPU-rewritten fp32 ONNX (serves here);
                                         with --user-cache: the user encoder + candidate scorer behind the
                                         cross-request user-state cache (same name, same contract)
        onerank_onnx_<precision>/        platform onnxruntime_onnx, 1/model.onnx (CPU-rewritten), for
                                         Triton's own ONNX Runtime backend with the plan's thread counts

Split mode's repository (lookup + dense models behind ensembles of the same names): split_repository.py.

Every config is built as a ModelConfig protobuf, written as text, then parsed back through the
schema and compared, so what lands on disk is exactly what was validated.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onerank_export.config import OneRankConfig
from onerank_export.errors import StageError
from onerank_export.export.onnx_files import copy_model
from onerank_export.io import sha256_file, write_text
from onerank_export.serving import model_config as mcfg
from onerank_export.serving.parameters import (
    CANDIDATE_SCORER_FILE,
    PLUGIN_PARAMETER,
    USER_ENCODER_FILE,
)
from onerank_export.serving.profiles import ServingPlan, Target
from onerank_export.serving.user_cache import CacheSettings
from onerank_export.spec import random_request

REPOSITORY_DIR = "model_repository"
CPU_MODEL = "onerank"
PYTHON_MODEL_SOURCE = Path(__file__).with_name("python_model.py")
LOOKUP_MODEL_SOURCE = Path(__file__).with_name("lookup_model.py")
DENSE_MODEL_SOURCE = Path(__file__).with_name("dense_model.py")
LOOKUP_MODEL, DENSE_MODEL = "onerank_lookup", "onerank_dense"


@dataclass(frozen=True)
class UserCacheModels:
    """The two halves of the fp32 serving graph and the cache the `onerank` model serves them with."""

    encoder: Path
    scorer: Path
    settings: CacheSettings


@dataclass(frozen=True)
class SplitModels:
    """Split mode: the dense ONNX (item rows as inputs) and the embedding store the lookup reads."""

    dense: Path
    store: Path
    dtype: str = "fp32"
    oov: str = "pad"
    backend: str = "mmap"  # where the served lookup reads rows: the store (mmap) or Redis
    redis_url: str | None = None


@dataclass(frozen=True)
class ModelRepository:
    """What `write_model_repository` wrote: model names and every file, by manifest role."""

    path: Path
    plan: ServingPlan
    models: list[str]
    python_model: str | None  # the model the bundled tritonserver here can serve (cpu target)
    tensorrt_models: int
    onnx_models: int
    artifacts: dict[str, Path]


def write_model_repository(out_dir: Path, config: OneRankConfig, plan: ServingPlan, onnx: Mapping[str, Path],
                           engines: Mapping[str, Path], plugin_library: Path | None, *,
                           cpu_onnx: Mapping[str, Path] | None = None,
                           user_cache: UserCacheModels | None = None,
                           user_cache_engines: Mapping[str, tuple[HalfEngine, HalfEngine]] | None = None
                           ) -> ModelRepository:
    """`out_dir`/model_repository for `plan.target`, every config validated.

    `onnx`: the models as exported (gpu target); `cpu_onnx`: the same models after the exact CPU
    rewrite (export/ort_cpu_graph.py), which a cpu-target repository serves; `user_cache`: serve the
    `onerank` model through the user-state cache (cpu target); `user_cache_engines`: {precision:
    (user encoder plan, candidate scorer plan)}, one TensorRT model per half (gpu target)."""
    repo = out_dir / REPOSITORY_DIR
    # Everything that can be refused is refused before the first file is written.
    if plan.target is Target.GPU:
        served = dict(onnx)
        if engines and plugin_library is None:
            raise StageError(f"engine {next(iter(engines.values())).name} needs the plugin library, none was built")
    else:
        served = dict(cpu_onnx or {})
        missing = sorted(set(onnx) - set(served))
        if missing:
            raise StageError(f"no CPU-rewritten ONNX for {', '.join(map(str, missing))}: a cpu-target repository "
                             "serves the models after the exact CPU rewrite")
    if user_cache_engines and plan.target is not Target.GPU:
        raise StageError(f"the user-state cache's TensorRT engines run on a GPU, not in a {plan.target}-target "
                         "repository; build with --target gpu")
    if user_cache_engines and plugin_library is None:
        raise StageError("the candidate scorer engines need the plugin library, none was built")
    half_metadata = _half_metadata(user_cache_engines or {})
    if "fp32" not in served:
        raise StageError("no fp32 ONNX to serve")
    serves_plans = plan.target is Target.GPU and bool(engines)
    plugin = plugin_parameters(plugin_library, out_dir) if serves_plans or user_cache_engines else {}
    warm = warmup_request(config)
    artifacts: dict[str, Path] = {}
    models: list[str] = []
    if serves_plans:
        for precision, path in sorted(engines.items()):
            name = f"onerank_trt_{precision}"
            cfg = mcfg.tensorrt_config(name, config, precision, plan, write_warmup(repo / name, warm))
            set_parameters(cfg, plugin)
            artifacts |= _write_model(repo / name, cfg, {"model.plan": path})
            models.append(name)
    if user_cache_engines:
        models += write_user_cache_engines(repo, config, plan, half_metadata, plugin, artifacts)
    if user_cache is not None and plan.target is Target.GPU:
        from onerank_export.serving.cached_repository import write_gpu_cached_model

        models += write_gpu_cached_model(repo, config, plan, user_cache, half_metadata, PYTHON_MODEL_SOURCE,
                                         _write_model, artifacts)
    for precision, path in sorted(served.items()):
        name = f"onerank_onnx_{precision}"
        cfg = mcfg.onnxruntime_config(name, config, precision, plan, write_warmup(repo / name, warm))
        artifacts |= _write_model(repo / name, cfg, {"model.onnx": path})
        models.append(name)
    python_model = None
    if plan.target is Target.CPU:
        cfg = mcfg.python_onnx_config(CPU_MODEL, config, plan, write_warmup(repo / CPU_MODEL, warm))
        files = {"model.onnx": served["fp32"], "model.py": PYTHON_MODEL_SOURCE}
        if user_cache is not None:
            files = {USER_ENCODER_FILE: user_cache.encoder, CANDIDATE_SCORER_FILE: user_cache.scorer,
                     "model.py": PYTHON_MODEL_SOURCE}
            for name, value in user_cache.settings.parameters().items():
                cfg.parameters[name].string_value = value
        artifacts |= _write_model(repo / CPU_MODEL, cfg, files)
        models.append(CPU_MODEL)
        python_model = CPU_MODEL
    artifacts["triton_readme"] = write_text(repo / "README.md",
                                            launch_notes(plan, plugin.get(PLUGIN_PARAMETER) if engines else None))
    return ModelRepository(repo, plan, models, python_model, len(engines) if plan.target is Target.GPU else 0,
                           len(served), artifacts)


HALF_ROLES = ("user_encoder", "candidate_scorer")


@dataclass(frozen=True)
class HalfEngine:
    """One half's TensorRT plan and what its `<plan>.json` says (read by the caller: serving sits below
    the engine layer)."""

    plan: Path
    role: str  # user_encoder / candidate_scorer
    io_dtypes: Mapping[str, str]  # I/O tensor -> numpy dtype name, as the half's ONNX declares them


def _half_metadata(engines: Mapping[str, tuple[HalfEngine, HalfEngine]]) -> dict[tuple[str, str], HalfEngine]:
    """{(precision, role): engine}; a pair out of (encoder, scorer) order is refused."""
    out = {}
    for precision, pair in sorted(engines.items()):
        for engine, role in zip(pair, HALF_ROLES, strict=True):
            if engine.role != role:
                raise StageError(f"{engine.plan.name} is a {engine.role} engine, not the {role}; "
                                 "pass (encoder, scorer)")
            out[(str(precision), role)] = engine
    return out


def write_user_cache_engines(repo: Path, config: OneRankConfig, plan: ServingPlan,
                             halves: Mapping[tuple[str, str], HalfEngine], plugin: Mapping[str, str],
                             artifacts: dict[str, Path]) -> list[str]:
    """<prefix>_trt_<precision> per half and precision (serving/parameters.py); the I/O types are the ones
    the half's ONNX declared (recorded in the plan's metadata). Returns the model names; fills `artifacts`."""
    from onerank_export.serving.parameters import CANDIDATE_SCORER_MODEL, USER_ENCODER_MODEL, tensorrt_half_model

    prefixes = dict(zip(HALF_ROLES, (USER_ENCODER_MODEL, CANDIDATE_SCORER_MODEL), strict=True))
    models = []
    for (precision, role), engine in halves.items():
        name = tensorrt_half_model(prefixes[role], precision)
        cfg = mcfg.user_cache_tensorrt_config(name, config, role, precision, plan, engine.io_dtypes)
        if role == "candidate_scorer":  # the encoder has no plugin node
            set_parameters(cfg, plugin)
        artifacts |= _write_model(repo / name, cfg, {"model.plan": engine.plan})
        models.append(name)
    return models


def plugin_parameters(plugin_library: Path, out_dir: Path) -> dict[str, str]:
    """What every TensorRT model with a MatchingScore node records about the plugin library its plan
    needs: the library's path relative to the build directory and its sha256 (hashed once per repository)."""
    try:
        relative = Path(plugin_library).resolve().relative_to(Path(out_dir).resolve())
    except ValueError:
        raise StageError(f"plugin library {plugin_library} is outside the build directory {out_dir}; the "
                         "engine stage copies it to plugins/ inside the build") from None
    return {PLUGIN_PARAMETER: str(relative), PLUGIN_PARAMETER + ".sha256": sha256_file(plugin_library)}


def set_parameters(cfg, parameters: Mapping[str, str]) -> None:
    for key, value in parameters.items():
        cfg.parameters[key].string_value = value


def warmup_request(config: OneRankConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """One realistic, valid request at the optimisation shape, shared by every model's warm-up."""
    return random_request(config, np.random.default_rng(seed), 1, config.serving.opt_hist_len,
                          config.serving.opt_candidates)


def write_warmup(model_dir: Path, feed: dict[str, np.ndarray]) -> dict[str, str]:
    """The request as raw row-major tensors in `<model>/warmup/`, named as the config references them."""
    (model_dir / "warmup").mkdir(parents=True, exist_ok=True)
    for name, array in feed.items():
        (model_dir / "warmup" / name).write_bytes(np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"))
                                                  .tobytes())
    return {name: name for name in feed}


def _write_model(model_dir: Path, cfg, files: dict[str, Path]) -> dict[str, Path]:
    version = model_dir / "1"
    version.mkdir(parents=True, exist_ok=True)
    out = {}
    for target, source in files.items():
        role = f"triton_{cfg.name}_{Path(target).stem}"
        if target.endswith(".onnx"):  # with its external data file, which the backend reads beside it
            written = copy_model(source, version / target)
            for i, data in enumerate(p for name, p in written.items() if name != target):
                out[f"{role}_data" + (f"_{i}" if i else "")] = data
        else:
            shutil.copyfile(source, version / target)
        out[role] = version / target
    text = mcfg.to_text(cfg)
    path = write_text(model_dir / "config.pbtxt", text)
    if mcfg.read_config(path) != cfg:  # the schema round trip must be lossless
        raise AssertionError(f"{path}: config changed on re-parse")
    for name, warm_input in (cfg.model_warmup[0].inputs.items() if cfg.model_warmup else ()):
        expected = mcfg.warmup_nbytes(warm_input)
        actual = (model_dir / "warmup" / name).stat().st_size
        if actual != expected:
            raise AssertionError(f"{model_dir}/warmup/{name}: {actual} bytes, config dims need {expected}")
    out[f"triton_{cfg.name}_config"] = path
    return out


def launch_notes(plan: ServingPlan, plugin: str | None) -> str:
    """The repository's README: how to serve it; `plugin` is the library's path relative to the build."""
    head = (f"# OneRank model repository (target {plan.target}, profile {plan.profile})\n\n"
            "Written by `onerank-export build`; every config.pbtxt was validated with Triton's ModelConfig schema\n"
            f"and the rules of its backend. {plan.target_reason}. Each model has {plan.instances} instance(s)")
    head += (f" x {plan.threads} ONNX Runtime thread(s)" if plan.threads else "") + \
        f" and a {plan.queue_delay_us} us batching delay.\n\n"
    if plan.target is Target.CPU:
        return (head + "On a CPU fleet, serve the ONNX Runtime backend models with NVIDIA's Triton container:\n\n"
                "    tritonserver --model-repository $PWD/model_repository --model-control-mode explicit \\\n"
                "        --load-model onerank_onnx_fp32    # and onerank_onnx_fp16 / onerank_onnx_int8\n\n"
                "The python-backend model `onerank` imports onerank_export, onnx and onnxruntime: it loads where\n"
                "the stub's Python has them, which `onerank-export serve --repository <build dir>` arranges for\n"
                "the bundled tritonserver here (python backend only). Elsewhere give it a Python environment\n"
                "with the onerank-export package (the python backend's EXECUTION_ENV_PATH parameter) or leave it\n"
                "unloaded as above.\n")
    plugin_notes = ("\nTensorRT models need the OneRank plugin loaded by the server:\n\n"
                    "    tritonserver --model-repository $PWD/model_repository \\\n"
                    f"        --backend-config=tensorrt,plugins=$PWD/{plugin}\n"
                    f"\n(or LD_PRELOAD=$PWD/{plugin}). Each TensorRT model records the plugin's\n"
                    f"relative path and sha256 in its `{PLUGIN_PARAMETER}` parameters.\n")
    return (head + "Serve it on a GPU host with NVIDIA's Triton container (onnxruntime and tensorrt backends):\n\n"
            "    tritonserver --model-repository $PWD/model_repository\n"
            + (plugin_notes if plugin else "")
            + "\nFor a CPU-only host, build with `--target cpu`.\n")
