"""The ONNX metadata onerank-export writes and reads, typed, in one place.

Every model the toolchain writes carries `onerank.*` metadata_props: the OneRank config it was
exported with, the checkpoint digest, the precision it computes in, and for reduced precisions
how it was calibrated. Readers (verify, calibrate, the precision stage) go through
`read_metadata`; writers through `OnnxMetadata.apply`. Torch-free: the Triton python model and
the metadata readers import this without pulling in PyTorch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import onnx

from onerank_export.config import OneRankConfig
from onerank_export.errors import ConfigError
from onerank_export.precision import Precision

CONFIG_KEY = "onerank.config"
CHECKPOINT_KEY = "onerank.checkpoint_sha256"
PRECISION_KEY = "onerank.precision"
CALIBRATION_PREFIX = "onerank.calibration."
GRAPH_KEY = "onerank.graph"  # which half of the serving graph a model is (absent: the single graph)


@dataclass(frozen=True)
class OnnxMetadata:
    config_json: str | None = None  # the OneRank config as written (exact text, for byte-identical exports)
    checkpoint_sha256: str | None = None
    precision: Precision | None = None
    calibration: dict[str, str] = field(default_factory=dict)  # method, requests, quantized_nodes ...
    other: dict[str, str] = field(default_factory=dict)  # any other key, kept as it was

    @property
    def config(self) -> OneRankConfig | None:
        return None if self.config_json is None else OneRankConfig.from_dict(json.loads(self.config_json),
                                                                              source="ONNX metadata")

    def with_precision(self, precision: Precision, **calibration: str) -> OnnxMetadata:
        return replace(self, precision=precision, calibration={**self.calibration, **calibration})

    def to_props(self) -> dict[str, str]:
        props = dict(self.other)
        if self.config_json is not None:
            props[CONFIG_KEY] = self.config_json
        if self.checkpoint_sha256:
            props[CHECKPOINT_KEY] = self.checkpoint_sha256
        if self.precision is not None:
            props[PRECISION_KEY] = Precision(self.precision).value
        props.update({CALIBRATION_PREFIX + k: v for k, v in self.calibration.items()})
        return props

    def apply(self, model: onnx.ModelProto) -> None:
        """Replace the model's metadata_props, in sorted key order (byte-identical exports)."""
        set_model_metadata(model, self.to_props())

    @classmethod
    def from_props(cls, props: dict[str, str]) -> OnnxMetadata:
        props = dict(props)
        precision = props.pop(PRECISION_KEY, None)
        calibration = {k.removeprefix(CALIBRATION_PREFIX): props.pop(k) for k in list(props)
                       if k.startswith(CALIBRATION_PREFIX)}
        return cls(config_json=props.pop(CONFIG_KEY, None), checkpoint_sha256=props.pop(CHECKPOINT_KEY, None) or None,
                   precision=Precision(precision) if precision in {p.value for p in Precision} else None,
                   calibration=calibration, other={k: v for k, v in props.items()})


def model_metadata(model: onnx.ModelProto) -> dict[str, str]:
    """The model's metadata_props as a plain dict."""
    return {p.key: p.value for p in model.metadata_props}


def set_model_metadata(model: onnx.ModelProto, props: dict[str, str]) -> None:
    del model.metadata_props[:]
    for key in sorted(props):
        model.metadata_props.add(key=key, value=props[key])


def read_metadata(model: onnx.ModelProto | str | Path) -> OnnxMetadata:
    """Metadata of a model object or file (the file's weights are not loaded)."""
    if not isinstance(model, onnx.ModelProto):
        path = Path(model)
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as exc:  # onnx raises DecodeError, ValidationError, OSError ...
            raise ConfigError(f"{path}: not a readable ONNX model ({str(exc).splitlines()[0]})") from None
    return OnnxMetadata.from_props(model_metadata(model))


def detect_precision(path: str | Path) -> Precision:
    """The precision an ONNX model computes in: its metadata, else what its content shows."""
    model = onnx.load(str(path), load_external_data=False)
    meta = read_metadata(model)
    if meta.precision is not None:
        return meta.precision
    if any(n.op_type == "QuantizeLinear" for n in model.graph.node):
        return Precision.INT8
    if any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer):
        return Precision.FP16
    return Precision.FP32


def check_matches_checkpoint(path: str | Path, cfg: OneRankConfig, digest: str) -> None:
    """An ONNX exported from another checkpoint cannot be checked against this one: say so up front."""
    meta = read_metadata(path)
    if meta.config_json is not None:
        theirs = OneRankConfig.from_dict(json.loads(meta.config_json), source=str(path)).to_dict()
        diff = [k for k, v in cfg.to_dict().items() if theirs.get(k) != v]
        if diff:
            key = diff[0]
            raise ConfigError(f"{path}: exported from a checkpoint with another config ({key}={theirs[key]!r}, "
                              f"checkpoint has {cfg.to_dict()[key]!r}); verify it against the checkpoint it was "
                              "exported from")
    if meta.checkpoint_sha256 and meta.checkpoint_sha256 != digest:
        raise ConfigError(f"{path}: exported from checkpoint sha256 {meta.checkpoint_sha256[:12]}..., not "
                          f"{digest[:12]}... (same config, other weights); pass the matching --checkpoint")
