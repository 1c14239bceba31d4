"""Triton model configurations built as data, through Triton's own `ModelConfig` protobuf.

Every field is set on `model_config_pb2.ModelConfig`, so a misspelt or misplaced field cannot be
written; `parse_config` reads a config.pbtxt back through the same schema. Inputs, outputs and
dims come from `spec.py` (the serving contract), never from a second list.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from onerank_export import spec
from onerank_export.config import OneRankConfig
from onerank_export.errors import ConfigError
from onerank_export.serving.parameters import (
    CONFIG_PARAMETER,
    PRECISION_PARAMETER,
    ROLE_PARAMETER,
    THREADS_PARAMETER,
)
from onerank_export.serving.profiles import ServingPlan, Target

# Requests are batched only when all their non-batch dims agree (Triton's rule for non-ragged inputs),
# and each batch row is a whole request, so candidates of different requests never share a row.
_DTYPES = {"int64": mc.TYPE_INT64, "float32": mc.TYPE_FP32, "float16": mc.TYPE_FP16, "bool": mc.TYPE_BOOL}
_KIND = {Target.GPU: "KIND_GPU", Target.CPU: "KIND_CPU"}
# Bytes per element of the Triton types a warm-up file can hold (core backend_model_instance.cc).
ITEMSIZE = {"TYPE_BOOL": 1, "TYPE_UINT8": 1, "TYPE_INT8": 1, "TYPE_UINT16": 2, "TYPE_INT16": 2, "TYPE_FP16": 2,
            "TYPE_BF16": 2, "TYPE_UINT32": 4, "TYPE_INT32": 4, "TYPE_FP32": 4, "TYPE_UINT64": 8, "TYPE_INT64": 8,
            "TYPE_FP64": 8}
# The ONNX Runtime backend's own parameter names (docs/triton.md, "Rules the schema does not express").
ORT_INTRA_OP_THREADS, ORT_INTER_OP_THREADS = "intra_op_thread_count", "inter_op_thread_count"


def io_tensors(config: OneRankConfig) -> tuple[list[mc.ModelInput], list[mc.ModelOutput]]:
    """Triton inputs/outputs from the spec: the batch axis is Triton's implicit first dim."""
    def dims(t: spec.TensorSpec) -> list[int]:
        assert t.axes[0] == spec.BATCH, f"{t.name}: the batch axis must come first"
        return [-1 if d is None else d for d in t.static_dims(config)[1:]]

    inputs = [mc.ModelInput(name=t.name, data_type=_DTYPES[t.dtype], dims=dims(t)) for t in spec.INPUTS]
    outputs = [mc.ModelOutput(name=t.name, data_type=_DTYPES[t.dtype], dims=dims(t)) for t in spec.OUTPUTS]
    return inputs, outputs


def base_config(name: str, config: OneRankConfig, precision: str, plan: ServingPlan,
                warmup_files: dict[str, str] | None) -> mc.ModelConfig:
    """Inputs/outputs from the spec, one instance group of the plan's target, batching and parameters."""
    inputs, outputs = io_tensors(config)
    cfg = mc.ModelConfig(name=name, max_batch_size=config.serving.max_batch_size, input=inputs, output=outputs)
    cfg.dynamic_batching.max_queue_delay_microseconds = plan.queue_delay_us
    cfg.instance_group.add(kind=mc.ModelInstanceGroup.Kind.Value(_KIND[plan.target]), count=plan.instances)
    cfg.parameters[CONFIG_PARAMETER].string_value = json.dumps(config.to_dict(), sort_keys=True)
    cfg.parameters[PRECISION_PARAMETER].string_value = str(precision)
    if warmup_files:
        add_warmup(cfg, config, warmup_files)
    return cfg


def add_warmup(cfg: mc.ModelConfig, config: OneRankConfig, files: dict[str, str]) -> None:
    """One warm-up request at the optimisation shape, from real-looking data files in `warmup/`."""
    warm = cfg.model_warmup.add(name="opt_shape_request", batch_size=1, count=2)
    dynamic = {spec.HIST_LEN: config.serving.opt_hist_len, spec.NUM_CANDIDATES: config.serving.opt_candidates}
    for t in spec.INPUTS:
        shape = t.shape_for(config, {spec.BATCH: 1, **dynamic})[1:]
        warm.inputs[t.name].CopyFrom(mc.ModelWarmup.Input(data_type=_DTYPES[t.dtype], dims=list(shape),
                                                          input_data_file=files[t.name]))


def warmup_nbytes(warm_input: mc.ModelWarmup.Input) -> int | None:
    """The size of a warm-up data file: Triton reads one sample per file, whatever batch_size says.
    None when the type or dims leave it open (a string type, a -1 dim)."""
    itemsize = ITEMSIZE.get(mc.DataType.Name(warm_input.data_type))
    if itemsize is None or min(warm_input.dims, default=1) < 0:
        return None
    return math.prod(warm_input.dims) * itemsize


def onnxruntime_config(name: str, config: OneRankConfig, precision: str, plan: ServingPlan,
                       warmup_files: dict[str, str] | None = None) -> mc.ModelConfig:
    """Triton's ONNX Runtime backend; the custom op runs from its FunctionProto, so no op library is
    needed. On the CPU the backend's own thread parameters carry the plan's threads."""
    cfg = base_config(name, config, precision, plan, warmup_files)
    cfg.platform = "onnxruntime_onnx"
    cfg.default_model_filename = "model.onnx"
    if plan.target is Target.CPU:
        cfg.parameters[ORT_INTRA_OP_THREADS].string_value = str(plan.threads)
        cfg.parameters[ORT_INTER_OP_THREADS].string_value = "1"  # one graph, run sequentially
    return cfg


def tensorrt_config(name: str, config: OneRankConfig, precision: str, plan: ServingPlan,
                    warmup_files: dict[str, str] | None = None) -> mc.ModelConfig:
    """TensorRT plan; the server loads the plugin via --backend-config=tensorrt,plugins=<lib>."""
    if plan.target is not Target.GPU:
        raise ConfigError(f"{name}: a TensorRT plan runs on a GPU only, not in a {plan.target}-target repository")
    cfg = base_config(name, config, precision, plan, warmup_files)
    cfg.platform = "tensorrt_plan"
    cfg.default_model_filename = "model.plan"
    return cfg


def user_cache_io(config: OneRankConfig, role: str, dtypes: Mapping[str, str] | None = None
                  ) -> tuple[list[mc.ModelInput], list[mc.ModelOutput]]:
    """Triton inputs/outputs of one half (`user_encoder` / `candidate_scorer`): the state dims from
    user_states (batch implicit, U = -1), the request tensors from the spec. `dtypes` (the half's ONNX
    types, from its plan metadata) overrides the default types (float32 states, the spec's types)."""
    from onerank_export.user_states import ENCODER_INPUTS, SCORER_REQUEST_INPUTS, state_specs

    contract = {t.name: (t.static_dims(config), t.dtype) for t in (*spec.INPUTS, *spec.OUTPUTS)}
    states = {s.name: (s.static_dims(config), "float32") for s in state_specs(config)}
    names = {"user_encoder": (ENCODER_INPUTS, tuple(states)),
             "candidate_scorer": ((*states, *SCORER_REQUEST_INPUTS), spec.OUTPUT_NAMES)}
    if role not in names:
        raise ConfigError(f"unknown user-cache model role {role!r} (known: {', '.join(names)})")

    def tensor(cls, name):
        dims, dtype = {**contract, **states}[name]
        return cls(name=name, data_type=_DTYPES[(dtypes or {}).get(name, dtype)],
                   dims=[-1 if d is None else d for d in dims[1:]])

    ins, outs = names[role]
    return [tensor(mc.ModelInput, n) for n in ins], [tensor(mc.ModelOutput, n) for n in outs]


def user_cache_tensorrt_config(name: str, config: OneRankConfig, role: str, precision: str, plan: ServingPlan,
                               dtypes: Mapping[str, str] | None = None) -> mc.ModelConfig:
    """One half's TensorRT plan on a GPU target, called by the model that serves `onerank` through the
    cache. No warm-up files: the serving model's warm-up request runs both halves."""
    if plan.target is not Target.GPU:
        raise ConfigError(f"{name}: a TensorRT plan runs on a GPU only, not in a {plan.target}-target repository")
    inputs, outputs = user_cache_io(config, role, dtypes)
    cfg = mc.ModelConfig(name=name, max_batch_size=config.serving.max_batch_size, input=inputs, output=outputs,
                         platform="tensorrt_plan", default_model_filename="model.plan")
    cfg.dynamic_batching.max_queue_delay_microseconds = plan.queue_delay_us
    cfg.instance_group.add(kind=mc.ModelInstanceGroup.KIND_GPU, count=plan.instances)
    cfg.parameters[CONFIG_PARAMETER].string_value = json.dumps(config.to_dict(), sort_keys=True)
    cfg.parameters[PRECISION_PARAMETER].string_value = str(precision)
    cfg.parameters[ROLE_PARAMETER].string_value = role
    return cfg


def user_cache_onnxruntime_config(name: str, config: OneRankConfig, role: str, plan: ServingPlan
                                  ) -> mc.ModelConfig:
    """One half as exported, on Triton's ONNX Runtime backend in a GPU-target repository (where no
    TensorRT engine of it was built), called by the BLS model that serves `onerank`."""
    if plan.target is not Target.GPU:
        raise ConfigError(f"{name}: the BLS-served halves belong to a gpu-target repository, not {plan.target}")
    inputs, outputs = user_cache_io(config, role)
    cfg = mc.ModelConfig(name=name, max_batch_size=config.serving.max_batch_size, input=inputs, output=outputs,
                         platform="onnxruntime_onnx", default_model_filename="model.onnx")
    cfg.dynamic_batching.max_queue_delay_microseconds = plan.queue_delay_us
    cfg.instance_group.add(kind=mc.ModelInstanceGroup.KIND_GPU, count=plan.instances)
    cfg.parameters[CONFIG_PARAMETER].string_value = json.dumps(config.to_dict(), sort_keys=True)
    cfg.parameters[PRECISION_PARAMETER].string_value = "fp32"
    cfg.parameters[ROLE_PARAMETER].string_value = role
    return cfg


def python_bls_config(name: str, config: OneRankConfig, plan: ServingPlan) -> mc.ModelConfig:
    """The serving contract on the python backend, KIND_CPU (the model code keeps the cache in host
    memory; the GPU work is in the models it calls), no warm-up (BLS fails while the server starts)."""
    cfg = base_config(name, config, "fp32", plan, None)
    cfg.backend = "python"
    del cfg.instance_group[:]
    cfg.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=plan.instances)
    return cfg


def python_onnx_config(name: str, config: OneRankConfig, plan: ServingPlan,
                       warmup_files: dict[str, str] | None = None) -> mc.ModelConfig:
    """The python backend running the CPU-rewritten fp32 ONNX with ONNX Runtime (what the bundled
    tritonserver here serves)."""
    if plan.target is not Target.CPU:
        raise ConfigError(f"{name}: the python-backend model runs on the CPU, not in a {plan.target}-target repository")
    cfg = base_config(name, config, "fp32", plan, warmup_files)
    cfg.backend = "python"
    cfg.parameters[THREADS_PARAMETER].string_value = str(plan.threads)
    return cfg


def to_text(cfg: mc.ModelConfig) -> str:
    return text_format.MessageToString(cfg)


def parse_config(text: str, source: str = "config.pbtxt") -> mc.ModelConfig:
    """Parse a config.pbtxt with Triton's schema; an unknown field or bad value is a one-line error."""
    try:
        return text_format.Parse(text, mc.ModelConfig())
    except text_format.ParseError as exc:
        raise ConfigError(f"{source}: not a valid Triton ModelConfig ({exc})") from None


def read_config(path: Path) -> mc.ModelConfig:
    return parse_config(path.read_text(), str(path))


def config_from_parameters(cfg: mc.ModelConfig | dict, source: str) -> OneRankConfig:
    """The OneRankConfig a served model carries (protobuf, or the JSON form the server returns)."""
    if isinstance(cfg, mc.ModelConfig):
        raw = cfg.parameters[CONFIG_PARAMETER].string_value if CONFIG_PARAMETER in cfg.parameters else None
    else:
        raw = cfg.get("parameters", {}).get(CONFIG_PARAMETER, {}).get("string_value")
    if not raw:
        raise ConfigError(f"{source}: model config has no '{CONFIG_PARAMETER}' parameter; "
                          "was it written by onerank-export build?")
    return OneRankConfig.from_dict(json.loads(raw), source=source)


# ----- split mode (docs/embeddings.md): lookup model + dense model behind an ensemble named as today -----

def _row_tensor(name: str, config: OneRankConfig, out: bool = False):
    cls = mc.ModelOutput if out else mc.ModelInput
    return cls(name=name, data_type=mc.TYPE_FP32, dims=[-1, config.d_model])


def lookup_config(name: str, config: OneRankConfig, plan: ServingPlan, store: str) -> mc.ModelConfig:
    """The python-backend lookup: hist_item_ids, cand_item_ids -> hist_item_rows, cand_item_rows (the
    store at `store`, relative to the model directory or absolute)."""
    from onerank_export.embeddings.split import ROW_INPUTS
    from onerank_export.serving.parameters import EMBEDDING_STORE_PARAMETER

    ids_inputs = [mc.ModelInput(name=ids, data_type=mc.TYPE_INT64, dims=[-1]) for ids in ROW_INPUTS.values()]
    cfg = mc.ModelConfig(name=name, max_batch_size=config.serving.max_batch_size, backend="python", input=ids_inputs,
                         output=[_row_tensor(row, config, out=True) for row in ROW_INPUTS])
    cfg.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=plan.instances)
    cfg.parameters[EMBEDDING_STORE_PARAMETER].string_value = store
    # The model's config: the lookup checks the store's rows and dim against it when it loads.
    cfg.parameters[CONFIG_PARAMETER].string_value = json.dumps(config.to_dict(), sort_keys=True)
    return cfg


def _with_rows(cfg: mc.ModelConfig, config: OneRankConfig) -> mc.ModelConfig:
    from onerank_export.embeddings.split import ROW_INPUTS

    cfg.input.extend(_row_tensor(row, config) for row in ROW_INPUTS)
    return cfg


def dense_python_config(name: str, config: OneRankConfig, plan: ServingPlan) -> mc.ModelConfig:
    """The python-backend dense model (serving/dense_model.py): the fp32 dense ONNX, served here (cpu target)."""
    return _with_rows(python_onnx_config(name, config, plan), config)


def dense_onnxruntime_config(name: str, config: OneRankConfig, precision: str, plan: ServingPlan) -> mc.ModelConfig:
    """The dense ONNX of one precision on Triton's ONNX Runtime backend, the plan's instance kind."""
    return _with_rows(onnxruntime_config(name, config, precision, plan), config)


def dense_tensorrt_config(name: str, config: OneRankConfig, precision: str, plan: ServingPlan) -> mc.ModelConfig:
    """The dense TensorRT plan of one precision (gpu target); the plugin parameters are the caller's."""
    return _with_rows(tensorrt_config(name, config, precision, plan), config)


def ensemble_config(name: str, config: OneRankConfig, lookup: str, dense: str,
                    precision: str = "fp32") -> mc.ModelConfig:
    """The serving contract (same inputs, outputs and `onerank.config` as the inline model): step 1 the
    lookup, step 2 the dense model (of `precision`)."""
    from onerank_export.embeddings.split import DENSE_INPUT_NAMES, ROW_INPUTS

    inputs, outputs = io_tensors(config)
    cfg = mc.ModelConfig(name=name, platform="ensemble", max_batch_size=config.serving.max_batch_size,
                         input=inputs, output=outputs)
    cfg.parameters[CONFIG_PARAMETER].string_value = json.dumps(config.to_dict(), sort_keys=True)
    cfg.parameters[PRECISION_PARAMETER].string_value = str(precision)
    first = cfg.ensemble_scheduling.step.add(model_name=lookup, model_version=-1)
    for row, ids in ROW_INPUTS.items():
        first.input_map[ids] = ids
        first.output_map[row] = row
    second = cfg.ensemble_scheduling.step.add(model_name=dense, model_version=-1)
    for tensor in DENSE_INPUT_NAMES:
        second.input_map[tensor] = tensor
    for out in spec.OUTPUT_NAMES:
        second.output_map[out] = out
    return cfg
