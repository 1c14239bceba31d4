"""What Triton's ONNX Runtime backend does with a model's config.pbtxt, and a session opened the same way.

The backend (triton-inference-server/onnxruntime_backend, src/onnxruntime.cc) builds one
`OrtSessionOptions` per model in `ModelState::ModelState`, clones it for each instance in
`ModelState::LoadModel` (adding execution providers by instance kind) and creates the session from
the model file's *path*, so ONNX Runtime resolves external data relative to that file. This module
holds that knowledge once: the parameters the backend reads and how it parses them (the backend
library's `TryParseModelStringParameter` / `ParseIntValue` / `ParseBoolValue`,
triton-inference-server/backend src/backend_common.cc), the graph optimisation levels, the accelerator
names, and the model file it opens. `backend_rules.py` checks configs against the same tables.

Parameters are read as strings (Triton's `ModelParameter` has only `string_value`); integers go
through `std::stoi`, which takes a leading number and ignores the rest ("2 threads" is 2), and the
thread counts are applied only when > 0 (a negative count is silently ORT's default).

What onnxruntime's Python API cannot reproduce is listed in `AppliedOptions.not_reproduced` and in
docs/triton.md ("Rules the schema does not express"): the CUDA / TensorRT / OpenVINO providers the
backend adds per instance (device id, Triton's CUDA stream), the server-wide global thread pool
(`--backend-config=onnxruntime,enable-global-threadpool=1`, which overrides the thread parameters)
and the ORT environment's log level (taken from tritonserver's verbosity; it changes no result).
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from onerank_export.errors import ConfigError
from onerank_export.serving.model_config import read_config

DEFAULT_MODEL_FILENAME = "model.onnx"  # LoadModel, and core's AutoCompleteBackendFields (kOnnxRuntimeOnnxFilename)
# std::stoi's range; beyond it std::out_of_range escapes ParseIntValue (which catches invalid_argument only).
INT_MAX = 2**31 - 1


@dataclass(frozen=True)
class BackendParameter:
    """One `parameters` key the ONNX Runtime backend reads."""

    name: str
    kind: str  # "int" (std::stoi), "bool" (ParseBoolValue), "string" (forwarded as written)
    default: str  # what applies when the key is absent
    applies_to: str  # "session options", "run options", "CUDA provider (KIND_GPU instances only)"
    choices: tuple[int, ...] = ()  # the only values the backend accepts, for enumerations


_CUDA = "CUDA provider (KIND_GPU instances only)"
ORT_BACKEND_PARAMETERS: dict[str, BackendParameter] = {p.name: p for p in (
    # ModelState::ModelState (src/onnxruntime.cc): the session options every instance clones.
    BackendParameter("intra_op_thread_count", "int", "0: ORT's default, one thread per physical core",
                     "session options"),
    BackendParameter("inter_op_thread_count", "int", "0: ORT's default; used only when execution_mode is 1",
                     "session options"),
    BackendParameter("execution_mode", "int", "0 (ORT_SEQUENTIAL)", "session options", (0, 1)),
    BackendParameter("enable_mem_arena", "bool", "ORT's default (arena on)", "session options"),
    BackendParameter("enable_mem_pattern", "bool", "ORT's default (memory pattern on)", "session options"),
    BackendParameter("session.use_device_allocator_for_initializers", "string", "not set (ORT: \"0\")",
                     "session options"),
    # ModelInstanceState::ModelInstanceState: a RunOptions entry for every inference.
    BackendParameter("memory.enable_memory_arena_shrinkage", "string", "not set (no shrinkage)", "run options"),
    # ModelState::LoadModel, inside #ifdef TRITON_ENABLE_GPU and only for KIND_GPU / KIND_AUTO instances
    # (the deprecated way to configure the CUDA provider; gpu_execution_accelerator "cuda" is the new one).
    BackendParameter("cudnn_conv_algo_search", "int", "0 (EXHAUSTIVE)", _CUDA, (0, 1, 2)),
    BackendParameter("gpu_mem_limit", "string", "SIZE_MAX", _CUDA),
    BackendParameter("arena_extend_strategy", "int", "0 (kNextPowerOfTwo)", _CUDA, (0, 1)),
    BackendParameter("do_copy_in_default_stream", "string", "\"1\"", _CUDA),
)}
GPU_ONLY_PARAMETERS = frozenset(n for n, p in ORT_BACKEND_PARAMETERS.items() if p.applies_to == _CUDA)

# optimization { graph { level } }: any other value, and no `graph` at all, is ORT_ENABLE_ALL.
GRAPH_LEVELS = {-1: "ORT_ENABLE_BASIC", 1: "ORT_ENABLE_EXTENDED", 2: "ORT_DISABLE_ALL"}
DEFAULT_GRAPH_LEVEL = "ORT_ENABLE_ALL"

# optimization { execution_accelerators }: names from backend_common.h; anything else fails the load
# ("unknown Execution Accelerator"). "tensorrt" / "openvino" need a backend built with them (NGC's is).
GPU_ACCELERATORS = ("tensorrt", "cuda")
CPU_ACCELERATORS = ("openvino",)
TENSORRT_PRECISION_MODES = ("FP32", "FP16", "BF16", "INT8")
TENSORRT_ACCELERATOR_PARAMETERS = frozenset({
    "precision_mode", "max_workspace_size_bytes", "int8_calibration_table_name", "int8_use_native_calibration_table",
    "trt_max_partition_iterations", "trt_min_subgraph_size", "trt_dla_enable", "trt_dla_core",
    "trt_engine_cache_enable", "trt_engine_cache_path", "trt_engine_cache_prefix", "trt_dump_subgraphs",
    "trt_force_sequential_engine_build", "trt_context_memory_sharing_enable", "trt_layer_norm_fp32_fallback",
    "trt_timing_cache_enable", "trt_timing_cache_path", "trt_force_timing_cache", "trt_detailed_build_log",
    "trt_build_heuristics_enable", "trt_sparsity_enable", "trt_builder_optimization_level", "trt_auxiliary_streams",
    "trt_tactic_sources", "trt_extra_plugin_lib_paths", "trt_profile_min_shapes", "trt_profile_max_shapes",
    "trt_profile_opt_shapes", "trt_cuda_graph_enable", "trt_dump_ep_context_model", "trt_ep_context_file_path",
    "trt_ep_context_embed_mode",
})

_STOI = re.compile(r"[ \t\n\v\f\r]*([+-]?\d+)")


def backend_int(value: str) -> int:
    """`ParseIntValue` (std::stoi): leading whitespace, a sign and digits; whatever follows is ignored."""
    match = _STOI.match(value)
    if match is None:
        raise ValueError(f"failed to convert '{value}' to integral number")
    number = int(match.group(1))
    if not -INT_MAX - 1 <= number <= INT_MAX:
        raise ValueError(f"'{value}' is out of int range (std::out_of_range is not caught by the backend)")
    return number


def backend_bool(value: str) -> bool:
    """`ParseBoolValue`: true/on/1 or false/off/0, any case."""
    lowered = value.lower()
    if lowered in ("true", "on", "1"):
        return True
    if lowered in ("false", "off", "0"):
        return False
    raise ValueError(f"failed to convert '{value}' to boolean")


def parameters(cfg: mc.ModelConfig) -> dict[str, str]:
    return {key: value.string_value for key, value in cfg.parameters.items()}


def graph_level(cfg: mc.ModelConfig) -> str:
    """The ORT GraphOptimizationLevel name the backend sets."""
    if cfg.HasField("optimization") and cfg.optimization.HasField("graph"):
        return GRAPH_LEVELS.get(cfg.optimization.graph.level, DEFAULT_GRAPH_LEVEL)
    return DEFAULT_GRAPH_LEVEL


def model_file(model_dir: Path, cfg: mc.ModelConfig, version: str) -> Path:
    """`<model>/<version>/<default_model_filename or model.onnx>`, and `<that>/model.onnx` when it is a
    directory (the large-model layout, model_repository.md). Whether it exists is the caller's check."""
    path = Path(model_dir) / str(version) / (cfg.default_model_filename or DEFAULT_MODEL_FILENAME)
    return path / DEFAULT_MODEL_FILENAME if path.is_dir() else path


def instance_kinds(cfg: mc.ModelConfig) -> set[str]:
    return {mc.ModelInstanceGroup.Kind.Name(g.kind) for g in cfg.instance_group}


@dataclass(frozen=True)
class AppliedOptions:
    """What the session was opened with, read back from its SessionOptions."""

    model_path: Path
    graph_optimization_level: str
    execution_mode: str
    intra_op_num_threads: int  # 0: ORT's default
    inter_op_num_threads: int
    enable_cpu_mem_arena: bool
    enable_mem_pattern: bool
    session_config: dict[str, str]
    run_config: dict[str, str]  # RunOptions entries: pass `run_options()` to every `session.run`
    providers: tuple[str, ...]
    not_reproduced: tuple[str, ...] = field(default=())

    def run_options(self):
        import onnxruntime as ort

        options = ort.RunOptions()
        for key, value in self.run_config.items():
            options.add_run_config_entry(key, value)
        return options


def session_like_onnxruntime_backend(model_dir: str | Path, version: str = "1",
                                     providers: tuple[str, ...] = ("CPUExecutionProvider",)):
    """Open `model_dir/<version>/...` as Triton's ONNX Runtime backend would, from `model_dir/config.pbtxt`.

    Returns `(onnxruntime.InferenceSession, AppliedOptions)`. A config the backend would refuse to
    load, or a missing model file, is a one-line ConfigError. `providers` are the caller's: the
    backend gives KIND_CPU instances the CPU provider (plus OpenVINO when configured) and KIND_GPU
    instances CUDA (and TensorRT when configured), which this reproduces only in part (`not_reproduced`).
    """
    import onnxruntime as ort

    model_dir = Path(model_dir)
    cfg = read_config(model_dir / "config.pbtxt")
    name = cfg.name or model_dir.name
    if cfg.platform != "onnxruntime_onnx" and cfg.backend != "onnxruntime":
        raise ConfigError(f"{name}: not a model of Triton's ONNX Runtime backend (platform '{cfg.platform}', "
                          f"backend '{cfg.backend}'); open an onnxruntime_onnx model directory")
    opts, run_config, notes = _session_options(cfg, name, tuple(providers))
    path = model_file(model_dir, cfg, version)
    if not path.is_file():
        raise ConfigError(f"unable to find '{path}' for model instance '{name}' (Triton's ONNX Runtime backend "
                          f"opens <model>/<version>/<default_model_filename>); put the model there or fix "
                          f"default_model_filename")
    try:
        session = ort.InferenceSession(str(path), opts, providers=list(providers))
    except Exception as exc:  # ORT raises several types; the backend would report its message and not load
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{path}: ONNX Runtime cannot load it ({first})") from None
    _check_io(cfg, session, name)
    read = session.get_session_options()
    config_entries = {}
    for key in _SESSION_CONFIG_KEYS:
        with contextlib.suppress(RuntimeError):  # raised for a key that was never set
            config_entries[key] = read.get_session_config_entry(key)
    applied = AppliedOptions(
        model_path=path, graph_optimization_level=read.graph_optimization_level.name,
        execution_mode=read.execution_mode.name, intra_op_num_threads=read.intra_op_num_threads,
        inter_op_num_threads=read.inter_op_num_threads, enable_cpu_mem_arena=read.enable_cpu_mem_arena,
        enable_mem_pattern=read.enable_mem_pattern, session_config=config_entries, run_config=run_config,
        providers=tuple(session.get_providers()), not_reproduced=notes)
    return session, applied


_SESSION_CONFIG_KEYS = ("session.use_device_allocator_for_initializers",)


def _session_options(cfg: mc.ModelConfig, name: str, providers: tuple[str, ...]):
    """The SessionOptions of ModelState::ModelState, the run config of ModelInstanceState, and notes."""
    import onnxruntime as ort

    params = parameters(cfg)

    def fail(message: str) -> ConfigError:
        return ConfigError(f"{name}: Triton's ONNX Runtime backend would not load this model: {message}")

    def read_int(key: str) -> int:
        try:
            return backend_int(params[key]) if key in params else 0
        except ValueError as exc:
            raise fail(f"parameter '{key}': {exc}") from None

    def read_bool(key: str) -> bool | None:
        try:
            return backend_bool(params[key]) if key in params else None
        except ValueError as exc:
            raise fail(f"parameter '{key}': {exc}") from None

    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # warnings only go to tritonserver's log there; they change no result
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, graph_level(cfg))
    mode = read_int("execution_mode")
    if mode not in (0, 1):
        raise fail(f"execution_mode must be 0 or 1, got {mode}")
    opts.execution_mode = ort.ExecutionMode.ORT_PARALLEL if mode else ort.ExecutionMode.ORT_SEQUENTIAL
    # Applied only when > 0; 0 and negative counts leave ORT's default.
    intra, inter = read_int("intra_op_thread_count"), read_int("inter_op_thread_count")
    if intra > 0:
        opts.intra_op_num_threads = intra
    if inter > 0:
        opts.inter_op_num_threads = inter
    key = "session.use_device_allocator_for_initializers"
    if key in params:
        opts.add_session_config_entry(key, params[key])
    for key, attribute in (("enable_mem_arena", "enable_cpu_mem_arena"), ("enable_mem_pattern", "enable_mem_pattern")):
        value = read_bool(key)
        if value is not None:
            setattr(opts, attribute, value)
    for library in cfg.model_operations.op_library_filename:  # LoadModel: RegisterCustomOpsLibrary, path as written
        opts.register_custom_ops_library(library)
    run_config = {k: params[k] for k in ("memory.enable_memory_arena_shrinkage",) if k in params}
    return opts, run_config, _not_reproduced(cfg, name, providers)


def _not_reproduced(cfg: mc.ModelConfig, name: str, providers: tuple[str, ...]) -> tuple[str, ...]:
    kinds = instance_kinds(cfg)
    gpu_providers = [p for p in providers if p != "CPUExecutionProvider"]
    if gpu_providers and kinds and kinds <= {"KIND_CPU"}:
        raise ConfigError(f"{name}: providers {gpu_providers} on a model whose instances are all KIND_CPU; the "
                          f"backend gives KIND_CPU instances the CPU provider only: pass ('CPUExecutionProvider',)")
    notes = []
    if kinds - {"KIND_CPU"}:
        notes.append("the CUDA provider the backend adds for KIND_GPU instances (device_id from the instance, "
                     "Triton's CUDA stream, cudnn_conv_algo_search / gpu_mem_limit / arena_extend_strategy / "
                     "do_copy_in_default_stream)")
    accelerators = cfg.optimization.execution_accelerators
    notes += [f"gpu_execution_accelerator '{a.name}' and its parameters"
              for a in accelerators.gpu_execution_accelerator]
    notes += [f"cpu_execution_accelerator '{a.name}'" for a in accelerators.cpu_execution_accelerator]
    return tuple(notes)


_ORT_TYPES = {"TYPE_FP32": "tensor(float)", "TYPE_FP16": "tensor(float16)", "TYPE_INT64": "tensor(int64)",
              "TYPE_INT32": "tensor(int32)", "TYPE_BOOL": "tensor(bool)", "TYPE_INT8": "tensor(int8)"}


def _check_io(cfg: mc.ModelConfig, session, name: str) -> None:
    """The backend's load-time check (ModelState::ValidateInputs / ValidateOutputs): every config
    input and output exists in the graph with the same element type and rank (the batch dimension
    counted when max_batch_size > 0), and static dims agree."""
    graph = {t.name: t for t in (*session.get_inputs(), *session.get_outputs())}
    batch = 1 if cfg.max_batch_size > 0 else 0
    for kind, tensors in (("input", cfg.input), ("output", cfg.output)):
        for tensor in tensors:
            node = graph.get(tensor.name)
            if node is None:
                raise ConfigError(f"{name}: {kind} '{tensor.name}' of config.pbtxt is not in the model "
                                  f"(it has {', '.join(sorted(graph))}); Triton would not load it")
            want = _ORT_TYPES.get(mc.DataType.Name(tensor.data_type))
            if want is not None and node.type != want:
                raise ConfigError(f"{name}: {kind} '{tensor.name}' is {node.type} in the model, "
                                  f"{mc.DataType.Name(tensor.data_type)} in config.pbtxt; Triton would not load it")
            dims = [*([-1] * batch), *tensor.dims]
            if len(node.shape) != len(dims):
                raise ConfigError(f"{name}: {kind} '{tensor.name}' has rank {len(node.shape)} in the model, "
                                  f"{len(dims)} from config.pbtxt dims; Triton would not load it")
            for got, wanted in zip(node.shape, dims, strict=True):
                if isinstance(got, int) and wanted != -1 and got != wanted:
                    raise ConfigError(f"{name}: {kind} '{tensor.name}' has shape {node.shape} in the model, "
                                      f"dims {list(tensor.dims)} in config.pbtxt; Triton would not load it")
