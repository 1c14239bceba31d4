"""Triton model configurations built as data, through Triton's own `ModelConfig` protobuf.

Every field is set on `model_config_pb2.ModelConfig`, so a misspelt or misplaced field cannot be
written; `parse_config` reads a config.pbtxt back through the same schema. Inputs, outputs and
dims come from `spec.py` (the serving contract), never from a second list.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from onerank_export import spec
from onerank_export.config import OneRankConfig
from onerank_export.errors import ConfigError
from onerank_export.serving.parameters import CONFIG_PARAMETER, PRECISION_PARAMETER, THREADS_PARAMETER

# Requests are batched only when all their non-batch dims agree (Triton's rule for non-ragged inputs),
# and each batch row is a whole request, so candidates of different requests never share a row.
MAX_QUEUE_DELAY_US = 200

_DTYPES = {"int64": mc.TYPE_INT64, "float32": mc.TYPE_FP32, "float16": mc.TYPE_FP16, "bool": mc.TYPE_BOOL}


@dataclass(frozen=True)
class Instances:
    kind: str  # "KIND_GPU" | "KIND_CPU"
    count: int


def io_tensors(config: OneRankConfig) -> tuple[list[mc.ModelInput], list[mc.ModelOutput]]:
    """Triton inputs/outputs from the spec: the batch axis is Triton's implicit first dim."""
    def dims(t: spec.TensorSpec) -> list[int]:
        assert t.axes[0] == spec.BATCH, f"{t.name}: the batch axis must come first"
        return [-1 if d is None else d for d in t.static_dims(config)[1:]]

    inputs = [mc.ModelInput(name=t.name, data_type=_DTYPES[t.dtype], dims=dims(t)) for t in spec.INPUTS]
    outputs = [mc.ModelOutput(name=t.name, data_type=_DTYPES[t.dtype], dims=dims(t)) for t in spec.OUTPUTS]
    return inputs, outputs


def base_config(name: str, config: OneRankConfig, precision: str, instances: list[Instances],
                warmup_files: dict[str, str] | None) -> mc.ModelConfig:
    inputs, outputs = io_tensors(config)
    cfg = mc.ModelConfig(name=name, max_batch_size=config.serving.max_batch_size, input=inputs, output=outputs)
    cfg.dynamic_batching.max_queue_delay_microseconds = MAX_QUEUE_DELAY_US
    for group in instances:
        cfg.instance_group.add(kind=mc.ModelInstanceGroup.Kind.Value(group.kind), count=group.count)
    cfg.parameters[CONFIG_PARAMETER].string_value = json.dumps(config.to_dict(), sort_keys=True)
    cfg.parameters[PRECISION_PARAMETER].string_value = precision
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


def onnxruntime_config(name: str, config: OneRankConfig, precision: str,
                       warmup_files: dict[str, str] | None = None) -> mc.ModelConfig:
    """ONNX Runtime backend; the custom op runs from its FunctionProto, so no op library is needed."""
    cfg = base_config(name, config, precision, [Instances("KIND_GPU", 1), Instances("KIND_CPU", 1)], warmup_files)
    cfg.platform = "onnxruntime_onnx"
    cfg.default_model_filename = "model.onnx"
    return cfg


def tensorrt_config(name: str, config: OneRankConfig, precision: str,
                    warmup_files: dict[str, str] | None = None) -> mc.ModelConfig:
    """TensorRT plan; the server loads the plugin via --backend-config=tensorrt,plugins=<lib>."""
    cfg = base_config(name, config, precision, [Instances("KIND_GPU", 1)], warmup_files)
    cfg.platform = "tensorrt_plan"
    cfg.default_model_filename = "model.plan"
    return cfg


def python_onnx_config(name: str, config: OneRankConfig, warmup_files: dict[str, str] | None = None,
                       instances: int | None = None) -> mc.ModelConfig:
    """CPU serving variant: the python backend running the exported ONNX with ONNX Runtime."""
    count = instances or max(1, min(2, os.cpu_count() or 1))
    cfg = base_config(name, config, "fp32", [Instances("KIND_CPU", count)], warmup_files)
    cfg.backend = "python"
    threads = max(1, (os.cpu_count() or 1) // count)
    cfg.parameters[THREADS_PARAMETER].string_value = str(threads)
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
