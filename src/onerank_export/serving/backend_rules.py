"""Check a model repository against the rules of Triton and its backends that the ModelConfig schema
does not express.

`parse_config` proves a config is well-formed; it does not prove Triton loads it on the intended host,
nor that a parameter is read by anyone. These checks cover what a config can get wrong silently (a
misspelt parameter, a thread count the backend ignores, a graph level it maps to "all") or only at
load time on the deployment host (an instance kind the host lacks, a missing file). Each rule names
its source; docs/triton.md "Rules the schema does not express" has the table. Every violation is one
line: `<model>: [<rule>] <what is wrong>; fix: <what to do>`.

What is advice rather than a rule (thread oversubscription depends on the serving host, not on the
config) is returned by `advise_model`, never by `check_model`.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from onerank_export.errors import ConfigError
from onerank_export.export.onnx_files import graph_tensors
from onerank_export.serving import ort_backend as ortb
from onerank_export.serving.model_config import read_config, warmup_nbytes
from onerank_export.serving.parameters import (
    CANDIDATE_SCORER_FILE,
    CANDIDATE_SCORER_MODEL_PARAMETER,
    CONFIG_PARAMETER,
    THREADS_PARAMETER,
    USER_ENCODER_FILE,
    USER_ENCODER_MODEL_PARAMETER,
)
from onerank_export.serving.user_cache import PARAMETERS as CACHE_PARAMETERS
from onerank_export.serving.user_cache import CacheSettings

TARGETS = {"gpu": "KIND_GPU", "cpu": "KIND_CPU"}
OWN_PREFIX = "onerank."  # the project's own parameters; no backend reads this namespace
# tensorrt_backend src/model_state.cc ModelState::ParseParameters / ParseMultiDeviceParameters.
TENSORRT_PARAMETERS = frozenset({"execution_context_allocation_strategy", "enable_multi_device", "multi_device_gpus",
                                 "multi_device_per_rank_engines"})
# python_backend src/python_be.cc ModelState::ModelState, plus what our model.py reads (python_model.py).
PYTHON_PARAMETERS = frozenset({"EXECUTION_ENV_PATH", "FORCE_CPU_ONLY_INPUT_TENSORS", THREADS_PARAMETER,
                               *CACHE_PARAMETERS})
_COUNT = re.compile(r"\d+")  # the one spelling std::stoi and int() read the same way


def check_repository(repo_dir: str | Path, target: str) -> list[str]:
    """Every model directory of a repository (Triton treats each subdirectory as a model)."""
    repo_dir = Path(repo_dir)
    _target_kind(target)
    models = sorted(p for p in repo_dir.iterdir() if p.is_dir()) if repo_dir.is_dir() else []
    if not models:
        return [f"{repo_dir}: [repository] no model directories; fix: build the repository again"]
    from onerank_export.serving.ensemble_rules import check_ensembles

    return [line for model in models for line in check_model(model, target)] + check_ensembles(repo_dir)


def check_model(model_dir: str | Path, target: str) -> list[str]:
    """The violations of one model directory for a repository built for `target` ("gpu" or "cpu")."""
    model_dir = Path(model_dir)
    kind = _target_kind(target)
    name = model_dir.name
    try:
        cfg = read_config(model_dir / "config.pbtxt")
    except FileNotFoundError:
        return [f"{name}: [config] no config.pbtxt; fix: write one (Triton would guess backend and instances)"]
    except ConfigError as exc:
        return [f"{name}: [config] {exc}; fix: write it through serving/model_config.py"]
    out: list[str] = []

    def bad(rule: str, problem: str, fix: str) -> None:
        out.append(f"{name}: [{rule}] {problem}; fix: {fix}")

    # core model_repository_manager.cc: "directory name must equal model name" (load error).
    if cfg.name and cfg.name != name:
        bad("name", f"config name '{cfg.name}' differs from the directory name", f"name the model '{name}'")
    backend = _backend(cfg)
    if backend is None:
        bad("backend", "neither platform nor backend is set, so Triton guesses from the files",
            "set platform or backend")
    elif backend != "ensemble":
        _instance_rules(cfg, backend, target, kind, bad)
    _file_rules(model_dir, cfg, backend, bad)
    _warmup_rules(model_dir, cfg, bad)
    if backend == "onnxruntime":
        _ort_rules(cfg, bad)
    elif backend == "tensorrt":
        _unknown_keys(ortb.parameters(cfg), TENSORRT_PARAMETERS, backend, bad)
    elif backend == "python" and _is_ours(model_dir):
        # The python backend hands every parameter to model.py: only our model's keys are known here.
        _unknown_keys(ortb.parameters(cfg), PYTHON_PARAMETERS, backend, bad)
    if backend == "python":
        _python_rules(cfg, bad)
    return out


def _is_ours(model_dir: Path) -> bool:
    """Whether the model's model.py is onerank-export's python-backend model (serving/python_model.py)."""
    from onerank_export.serving.repository import PYTHON_MODEL_SOURCE

    files = list(model_dir.glob("*/model.py"))
    return not files or any(f.read_bytes() == PYTHON_MODEL_SOURCE.read_bytes() for f in files)


def advise_model(model_dir: str | Path, cores: int | None = None) -> list[str]:
    """Advice that depends on the serving host (`cores`, default this host's): never a violation."""
    model_dir = Path(model_dir)
    cores = cores or os.cpu_count() or 1
    cfg = read_config(model_dir / "config.pbtxt")
    backend, params = _backend(cfg), ortb.parameters(cfg)
    cpu_instances = sum(max(g.count, 1) for g in cfg.instance_group if g.kind == mc.ModelInstanceGroup.KIND_CPU)
    key = {"onnxruntime": "intra_op_thread_count", "python": THREADS_PARAMETER}.get(backend)
    notes = []
    if key and cpu_instances:
        threads = int(params[key]) if _COUNT.fullmatch(params.get(key, "")) else 0
        if threads == 0:
            notes.append(f"{model_dir.name}: {key} is unset or 0, so each of {cpu_instances} CPU instance(s) "
                         f"starts one ONNX Runtime thread per physical core")
        elif threads * cpu_instances > cores:
            notes.append(f"{model_dir.name}: {cpu_instances} CPU instance(s) x {threads} threads = "
                         f"{threads * cpu_instances} threads on {cores} cores (oversubscribed under load)")
    if backend == "onnxruntime" and ortb.graph_level(cfg) == "ORT_DISABLE_ALL":
        notes.append(f"{model_dir.name}: optimization.graph.level 2 disables every ONNX Runtime graph optimisation")
    return notes


def _target_kind(target: str) -> str:
    if target not in TARGETS:
        raise ConfigError(f"target '{target}' is not one of {sorted(TARGETS)} (resolve 'auto' first)")
    return TARGETS[target]


def _backend(cfg: mc.ModelConfig) -> str | None:
    # core model_config_utils.cc AutoCompleteBackendFields: platform and backend name the same backends.
    if cfg.platform == "ensemble":
        return "ensemble"
    by_platform = {"onnxruntime_onnx": "onnxruntime", "tensorrt_plan": "tensorrt"}
    return cfg.backend or by_platform.get(cfg.platform) or (cfg.platform or None)


def _instance_rules(cfg, backend, target, kind, bad) -> None:
    kinds = [mc.ModelInstanceGroup.Kind.Name(g.kind) for g in cfg.instance_group]
    if not kinds:
        # core NormalizeInstanceGroup: Triton adds a group of its own choosing (GPU where it sees one).
        bad("instance-kind", "no instance_group, so Triton picks the kind and count from the host",
            f"add instance_group {{ kind: {kind} count: N }}")
        return
    if "KIND_GPU" in kinds and "KIND_CPU" in kinds:
        # The scheduler spreads requests over every instance, so the CPU instance sets the tail latency;
        # on a host without GPU core's ValidateInstanceGroup refuses the KIND_GPU group.
        bad("instance-kind", "mixes KIND_GPU and KIND_CPU groups (requests are spread over both)",
            f"keep only {kind} groups")
    # python_backend README "Model Instance Kind": the kind is what the model code makes of it; ours
    # (python_model.py) runs ONNX Runtime on the CPU whatever the kind, and KIND_GPU fails without a GPU.
    wanted = "KIND_CPU" if backend == "python" else kind
    if backend == "tensorrt" and target != "gpu":
        # tensorrt_backend instance_state.cc: "TensorRT backend supports only GPU device".
        bad("tensorrt-gpu-only", "a TensorRT plan in a CPU repository", "build it into a GPU repository only")
    for group, group_kind in zip(cfg.instance_group, kinds, strict=True):
        label = f"instance group '{group.name}'" if group.name else "an instance group"
        if group_kind == "KIND_AUTO" or (group_kind == "KIND_MODEL" and backend != "python"):
            # core NormalizeInstanceGroup resolves KIND_AUTO to GPU when it sees one, else CPU; KIND_MODEL
            # (the model places itself) is for python-backend models.
            bad("instance-kind", f"{label} has {group_kind}, decided by the host", f"use {wanted}")
        elif group_kind != wanted and not (backend == "tensorrt" and target != "gpu"):
            why = "python-backend models run on the CPU" if backend == "python" else f"the target is {target}"
            bad("instance-kind", f"{label} has {group_kind} but {why}", f"use {wanted}")
        if group_kind == "KIND_CPU" and group.gpus:
            bad("instance-kind", f"{label} is KIND_CPU but lists gpus (core refuses it)", "remove gpus")
        if group.count < 1:
            # core SetDefaultInstanceCount: 2 for onnxruntime KIND_CPU, else 1 — not what a profile chose.
            bad("instance-count", f"{label} has no count, so Triton's default applies", "set count >= 1")


def _versions(model_dir: Path, cfg: mc.ModelConfig, bad) -> list[str]:
    """The version directories Triton loads (core model_lifecycle.cc VersionsToLoad)."""
    present = sorted((int(p.name) for p in model_dir.iterdir()
                      if p.is_dir() and p.name.isdigit() and (p.name == "0" or not p.name.startswith("0"))),
                     reverse=True)
    policy = cfg.version_policy
    if policy.HasField("specific"):
        missing = [v for v in policy.specific.versions if v not in present]
        if missing:
            bad("version", f"version_policy names versions {missing} that have no directory (Triton skips them)",
                "create them or fix version_policy")
        chosen = [v for v in policy.specific.versions if v in present]
    elif policy.HasField("all"):
        chosen = present
    else:
        chosen = present[:max(policy.latest.num_versions, 1)]
    if not chosen:
        bad("version", "no numeric version directory to load", "put the model files in '1/'")
    return [str(v) for v in chosen]


def _file_rules(model_dir: Path, cfg: mc.ModelConfig, backend: str | None, bad) -> None:
    if backend in (None, "ensemble"):
        return
    default = {"onnxruntime": "model.onnx", "tensorrt": "model.plan", "python": "model.py"}.get(backend)
    if default is None and not cfg.default_model_filename:
        return  # a backend this module does not know: its file names are its own
    for version in _versions(model_dir, cfg, bad):
        if backend == "onnxruntime":
            path = ortb.model_file(model_dir, cfg, version)  # LoadModel: a directory means <dir>/model.onnx
        else:
            path = model_dir / version / (cfg.default_model_filename or default or "")
        if not path.is_file():
            what = f"default_model_filename '{cfg.default_model_filename}'" if cfg.default_model_filename else \
                f"the default file name '{default}'"
            bad("model-file", f"{path.relative_to(model_dir.parent)} does not exist ({what})",
                "copy the model there or fix default_model_filename")
        elif backend == "onnxruntime":
            _external_data_rules(path, bad)
        if backend == "python" and CONFIG_PARAMETER in cfg.parameters and _is_ours(model_dir):
            # python_model.py initialize() opens <version>/model.onnx next to model.py, or the user
            # encoder and candidate scorer when the encoder is there (build --user-cache).
            if USER_ENCODER_MODEL_PARAMETER in cfg.parameters:  # the halves are models it calls (BLS)
                for key in (USER_ENCODER_MODEL_PARAMETER, CANDIDATE_SCORER_MODEL_PARAMETER):
                    called = cfg.parameters[key].string_value
                    if not (model_dir.parent / called / "config.pbtxt").is_file():
                        bad("bls-model", f"{key} names '{called}', which is not a model of this repository "
                            "(the BLS call fails at the first request)", "write that model or fix the name")
                continue
            cached = (model_dir / version / USER_ENCODER_FILE).is_file()
            for file in (USER_ENCODER_FILE, CANDIDATE_SCORER_FILE) if cached else ("model.onnx",):
                onnx_path = model_dir / version / file
                if onnx_path.is_file():
                    _external_data_rules(onnx_path, bad)
                else:
                    bad("model-file", f"{onnx_path.relative_to(model_dir.parent)} does not exist (model.py runs it)",
                        "copy the ONNX model there")


def _external_data_rules(path: Path, bad) -> None:
    """External data is resolved relative to the model file (the backend creates the session from the path)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError and others for a file that is not ONNX
        bad("model-file", f"{path.name} is not a readable ONNX model ({type(exc).__name__})", "copy the real model")
        return
    for tensor in graph_tensors(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (path.parent / location).resolve()
        if Path(location).is_absolute() or path.parent.resolve() not in target.parents:
            bad("external-data", f"tensor '{tensor.name}' points outside the version directory ('{location}'; "
                "ONNX Runtime refuses it)", "save with a relative location beside the model")
        elif not target.is_file():
            bad("external-data", f"tensor '{tensor.name}' needs '{location}' beside {path.name}, which is missing",
                "copy the external data file with the model")
            return  # one line per missing file is enough: the other tensors usually share it




def _warmup_rules(model_dir: Path, cfg: mc.ModelConfig, bad) -> None:
    """core backend_model_instance.cc GenerateWarmupData: files under <model>/warmup/, one sample each."""
    inputs = {i.name for i in cfg.input}
    for warm in cfg.model_warmup:
        missing = sorted(inputs - set(warm.inputs))
        if missing:
            bad("warmup", f"warm-up '{warm.name}' has no data for inputs {missing}", "add them to model_warmup")
        for input_name, spec in warm.inputs.items():
            if input_name not in inputs:
                bad("warmup", f"warm-up '{warm.name}' feeds '{input_name}', which is not a model input",
                    "use the config's input names")
            if spec.WhichOneof("input_data_type") != "input_data_file":
                continue
            path = model_dir / "warmup" / spec.input_data_file
            dtype = mc.DataType.Name(spec.data_type)
            want = warmup_nbytes(spec)
            if not path.is_file():
                bad("warmup", f"warmup/{spec.input_data_file} does not exist", "write the warm-up files")
            elif want is not None:
                # Fewer bytes fail the load; more are read from the start without a word (a stale file).
                have = path.stat().st_size
                if have != want:
                    bad("warmup", f"warmup/{spec.input_data_file} has {have} bytes, dims {list(spec.dims)} "
                        f"{dtype} need {want}", "write the file again with the config's dims")


def _unknown_keys(params: dict[str, str], known, backend: str, bad) -> None:
    """A key no one reads is ignored without a word (a misspelt thread count runs with the default)."""
    for key in sorted(params):
        if key in known or key.startswith(OWN_PREFIX):
            continue
        close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
        hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(sorted(known))}"
        bad("parameter-name", f"parameter '{key}' is not read by the {backend} backend and is ignored",
            f"{hint} (the project's own keys start with '{OWN_PREFIX}')")


def _ort_rules(cfg: mc.ModelConfig, bad) -> None:
    """onnxruntime_backend src/onnxruntime.cc (ModelState::ModelState, LoadModel, ModelInstanceState)."""
    params = ortb.parameters(cfg)
    _unknown_keys(params, ortb.ORT_BACKEND_PARAMETERS, "onnxruntime", bad)
    for key in ("intra_op_thread_count", "inter_op_thread_count"):
        if key in params and not (_COUNT.fullmatch(params[key]) and int(params[key]) <= ortb.INT_MAX):
            # Negative counts are skipped (applied only when > 0), "2 threads" is read as 2, and a number past
            # INT_MAX throws std::out_of_range, which ParseIntValue does not catch.
            bad("thread-count", f"{key} '{params[key]}' is not a non-negative decimal integer",
                f"write the count as digits, e.g. '{max(1, (os.cpu_count() or 2) // 2)}'")
    for key, spec in ortb.ORT_BACKEND_PARAMETERS.items():
        if key not in params:
            continue
        if spec.choices and params[key] not in {str(c) for c in spec.choices}:
            bad("parameter-value", f"{key} '{params[key]}' is not one of {list(spec.choices)}",
                f"use one of {[str(c) for c in spec.choices]}")
        elif spec.kind == "bool":
            try:
                ortb.backend_bool(params[key])
            except ValueError:
                bad("parameter-value", f"{key} '{params[key]}' is not a boolean (load fails)", "use '1' or '0'")
    inter = params.get("inter_op_thread_count", "0")
    if _COUNT.fullmatch(inter) and int(inter) > 1 and params.get("execution_mode", "0") != "1":
        # ORT creates the inter-op pool only for ORT_PARALLEL (onnxruntime inference_session.cc), so more
        # than one inter-op thread with sequential execution is a setting that does nothing ("1" says so).
        bad("thread-count", f"inter_op_thread_count {inter} has no effect with sequential execution",
            "set it to '1', or set execution_mode '1'")
    graph = cfg.optimization.graph
    if cfg.optimization.HasField("graph") and graph.level not in (0, *ortb.GRAPH_LEVELS):
        bad("graph-level", f"optimization.graph.level {graph.level} is read as ORT_ENABLE_ALL",
            "use -1 (basic), 1 (extended), 2 (disable all) or leave it out (all)")
    kinds = ortb.instance_kinds(cfg)
    cpu_only = bool(kinds) and kinds <= {"KIND_CPU"}
    accelerators = cfg.optimization.execution_accelerators
    if cpu_only:
        # The CUDA options and gpu_execution_accelerator are read only for KIND_GPU instances.
        for key in sorted(ortb.GPU_ONLY_PARAMETERS & params.keys()):
            bad("gpu-setting", f"parameter '{key}' is read only for KIND_GPU instances; this model has none",
                "drop it")
        if accelerators.gpu_execution_accelerator:
            bad("gpu-setting", "gpu_execution_accelerator is ignored on KIND_CPU instances", "drop it")
    for accel in accelerators.gpu_execution_accelerator:
        if accel.name not in ortb.GPU_ACCELERATORS:
            bad("accelerator", f"gpu_execution_accelerator '{accel.name}' is unknown (load fails)",
                f"use one of {list(ortb.GPU_ACCELERATORS)}")
        elif accel.name == "tensorrt":
            for key in sorted(set(accel.parameters) - ortb.TENSORRT_ACCELERATOR_PARAMETERS):
                bad("accelerator", f"TensorRT accelerator parameter '{key}' is unknown (load fails)",
                    "see the onnxruntime_backend README table")
            mode = accel.parameters.get("precision_mode", "FP32")
            if mode not in ortb.TENSORRT_PRECISION_MODES:
                bad("accelerator", f"precision_mode '{mode}' is unknown (load fails)",
                    f"use one of {list(ortb.TENSORRT_PRECISION_MODES)}")
    for accel in accelerators.cpu_execution_accelerator:
        if accel.name not in ortb.CPU_ACCELERATORS:
            bad("accelerator", f"cpu_execution_accelerator '{accel.name}' is unknown (load fails)",
                f"use one of {list(ortb.CPU_ACCELERATORS)}")


def _python_rules(cfg: mc.ModelConfig, bad) -> None:
    params = ortb.parameters(cfg)
    if THREADS_PARAMETER in params and not _COUNT.fullmatch(params[THREADS_PARAMETER]):
        # python_model.py passes int(value) to ONNX Runtime; anything else fails initialize().
        bad("thread-count", f"{THREADS_PARAMETER} '{params[THREADS_PARAMETER]}' is not a non-negative integer",
            "write the count as digits")
    try:
        CacheSettings.from_parameters(params)  # what model.py reads at load: a bad value fails initialize()
    except ConfigError as exc:
        bad("parameter-value", str(exc), "write the value as the message says (docs/user-cache.md)")
    force = params.get("FORCE_CPU_ONLY_INPUT_TENSORS")
    if force is not None and force not in ("yes", "no"):
        bad("parameter-value", f"FORCE_CPU_ONLY_INPUT_TENSORS '{force}' is not 'yes' or 'no' (load fails)",
            "use 'yes' or 'no'")
