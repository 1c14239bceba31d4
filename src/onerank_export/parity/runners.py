"""Runners for the backends available everywhere: PyTorch eager (dense and serving graph) and
ONNX Runtime. TensorRT and Triton runners live beside them in their own modules."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from onerank_export import spec
from onerank_export.export.ort_session import cpu_session, cpu_session_options
from onerank_export.export.serving_graph import ServingGraph
from onerank_export.model.onerank import OneRankModel
from onerank_export.parity.runner import Runner, RunnerUnavailable


def _to_torch(feed: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feed.items()}


class EagerDenseRunner(Runner):
    """The reference model as trained: one masked attention over every token (fused SDPA)."""

    def __init__(self, model: OneRankModel, name: str = "eager-dense") -> None:
        super().__init__(name)
        self.model = model

    def activate_impl(self) -> None:
        self.model.eval()

    def infer_impl(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            return {"scores": self.model(**_to_torch(feed)).scores.numpy()}


class EagerServingRunner(Runner):
    """The request-structured serving graph in PyTorch eager (what gets exported)."""

    def __init__(self, model: OneRankModel, name: str = "eager-serving") -> None:
        super().__init__(name)
        self.graph = ServingGraph(model)

    def activate_impl(self) -> None:
        self.graph.eval()

    def infer_impl(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            return {"scores": self.graph(**_to_torch(feed)).numpy()}


class OnnxRuntimeRunner(Runner):
    """An ONNX model in ONNX Runtime (CPU by default). The custom op runs from its FunctionProto.

    `model` is a file, or the serialized model itself (calibration scores models it never writes).
    On the CPU provider the session runs the product's CPU rewrite (`ort_session.cpu_session`, what
    the Triton CPU model serves); `cpu_rewrite=False` runs the file as it is (what Triton's own
    ONNX Runtime backend loads)."""

    def __init__(self, model: str | Path | bytes, name: str = "onnxruntime", *,
                 providers: Sequence[str] = ("CPUExecutionProvider",), threads: int | None = None,
                 cpu_rewrite: bool = True) -> None:
        super().__init__(name)
        self.model = model if isinstance(model, bytes) else str(Path(model))
        self.providers = list(providers)
        self.threads = threads
        self.cpu_rewrite = cpu_rewrite
        self.session = None

    def activate_impl(self) -> None:
        import onnxruntime as ort

        missing = [p for p in self.providers if p not in ort.get_available_providers()]
        if missing:
            raise RunnerUnavailable(f"onnxruntime has no {missing[0]} here")
        threads = self.threads or min(os.cpu_count() or 1, 8)
        if self.cpu_rewrite and self.providers == ["CPUExecutionProvider"]:
            self.session = cpu_session(self.model, threads)
        else:
            self.session = ort.InferenceSession(self.model, cpu_session_options(threads), providers=self.providers)

    def infer_impl(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self.session.run(list(spec.OUTPUT_NAMES), dict(feed))
        return dict(zip(spec.OUTPUT_NAMES, outputs, strict=True))

    def deactivate_impl(self) -> None:
        self.session = None


class TritonOrtBackendRunner(Runner):
    """A model of a Triton repository opened as Triton's ONNX Runtime backend opens it: the file its
    config names in the version directory, the session options its parameters set
    (serving/ort_backend.py). What a CPU fleet's tritonserver serves, checked without one."""

    def __init__(self, model_dir: str | Path, name: str | None = None) -> None:
        self.model_dir = Path(model_dir)
        super().__init__(name or f"triton-ort:{self.model_dir.name}")
        self.session = None
        self.run_options = None

    def activate_impl(self) -> None:
        import onnxruntime as ort

        from onerank_export.serving.model_config import read_config
        from onerank_export.serving.ort_backend import instance_kinds, session_like_onnxruntime_backend

        if "KIND_GPU" in instance_kinds(read_config(self.model_dir / "config.pbtxt")):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise RunnerUnavailable("a KIND_GPU model needs onnxruntime's CUDA provider, which this host lacks")
            providers = ("CUDAExecutionProvider",)
        else:
            providers = ("CPUExecutionProvider",)
        self.session, applied = session_like_onnxruntime_backend(self.model_dir, providers=providers)
        self.run_options = applied.run_options()

    def infer_impl(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self.session.run(list(spec.OUTPUT_NAMES), dict(feed), self.run_options)
        return dict(zip(spec.OUTPUT_NAMES, outputs, strict=True))

    def deactivate_impl(self) -> None:
        self.session = None
