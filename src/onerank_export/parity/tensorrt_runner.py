"""A serialized TensorRT engine behind the runner interface (TensorRT 10 / 11 I/O-tensor API).

Device memory: torch CUDA tensors. torch is already a dependency, its caching allocator and
streams are what the rest of a PyTorch stack uses, and it needs no second CUDA binding
(cuda-python's module layout changed between its 12.x and 13.x releases). A CPU-only torch
build on a GPU host is reported as RunnerUnavailable with the fix, never as a pass.

TensorRT names used here are audited with the builder's (tests/engine/tensorrt/test_tensorrt_api_names.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from onerank_export import spec
from onerank_export.errors import RequestError, StageError
from onerank_export.parity.runner import Runner, RunnerUnavailable

if TYPE_CHECKING:
    import tensorrt as trt



def default_plugin_for(plan: Path) -> Path | None:
    """`build`'s layout puts the plugin at DIR/plugins/ beside DIR/engines/<plan>."""
    from onerank_export.engine.plugin.build import STATIC_LIBRARY

    candidate = plan.resolve().parent.parent / "plugins" / STATIC_LIBRARY
    return candidate if candidate.is_file() else None


class EngineSession:
    """One deserialised plan and its execution context, run like an ONNX Runtime session:
    `run(output_names or None, feed) -> [arrays]`. The TensorRT runner and the cached path's runner
    (parity/user_cache_runner.py: user encoder plan -> states -> candidate scorer plan) share it."""

    def __init__(self, plan: str | Path, plugin_library: str | Path | None = None) -> None:
        self.plan = Path(plan)
        self.plugin_library = Path(plugin_library) if plugin_library is not None else None
        self._torch: Any = None
        self._trt: Any = None
        self._runtime: Any = None
        self._engine: Any = None
        self._context: Any = None
        self._stream: Any = None
        self.inputs: dict[str, Any] = {}  # name -> torch dtype
        self.outputs: dict[str, Any] = {}

    def open(self) -> None:
        """RunnerUnavailable(reason) where CUDA, TensorRT or a CUDA torch are missing."""
        from onerank_export.engine.tensorrt.availability import tensorrt_unavailable_reason

        reason = tensorrt_unavailable_reason()
        if reason:
            raise RunnerUnavailable(reason)
        import torch

        if not torch.cuda.is_available():
            raise RunnerUnavailable(f"torch {torch.__version__} has no CUDA (a CPU build); install the CUDA "
                                    "build of the pinned torch version to run TensorRT engines")
        if not self.plan.is_file():
            raise StageError(f"{self.plan}: engine file not found")
        import tensorrt as trt

        self._torch, self._trt = torch, trt
        self._runtime, self._engine, self._context = _deserialize(trt, self.plan, self.plugin_library)
        self.inputs, self.outputs = _io_tensors(trt, self._engine, torch)
        self._stream = torch.cuda.Stream()

    def run(self, output_names, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        out = self.infer(feed)
        return [out[name] for name in (output_names or self.outputs)]

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        keep = []  # device tensors must outlive the asynchronous execution
        with torch.cuda.stream(self._stream):
            for name, dtype in self.inputs.items():
                if name not in feed:
                    raise RequestError(f"tensorrt: missing input '{name}'")
                host = torch.from_numpy(np.ascontiguousarray(feed[name]))
                if host.dtype != dtype:
                    raise RequestError(f"tensorrt: input '{name}' has dtype {host.dtype}, the engine takes {dtype}")
                device = host.to("cuda", non_blocking=False)
                keep.append(device)
                _bind_input(self._trt, self._engine, self._context, name, tuple(device.shape), device.data_ptr())
            outputs = {}
            for name, dtype in self.outputs.items():
                shape = _output_shape(self._context, name)
                outputs[name] = torch.empty(shape, dtype=dtype, device="cuda")
                _bind_output(self._context, name, outputs[name].data_ptr())
            _execute(self._context, self._stream.cuda_stream, self.plan)
        self._stream.synchronize()
        return {name: t.cpu().numpy() for name, t in outputs.items()}

    def close(self) -> None:
        # Context before engine before runtime: TensorRT's own destruction order.
        self._context = None
        self._engine = None
        self._runtime = None
        self._stream = None


class TensorRTRunner(Runner):
    def __init__(self, plan: str | Path, plugin_library: str | Path | None = None, name: str | None = None) -> None:
        self.plan = Path(plan)
        super().__init__(name or f"tensorrt:{self.plan.name}")
        self.plugin_library = Path(plugin_library) if plugin_library is not None else default_plugin_for(self.plan)
        self.session: EngineSession | None = None

    # ----- runner interface ----------------------------------------------------------------------
    def activate_impl(self) -> None:
        session = EngineSession(self.plan, self.plugin_library)
        session.open()
        self.session = session
        names = {**session.inputs, **session.outputs}
        missing = [n for n in (*spec.INPUT_NAMES, *spec.OUTPUT_NAMES) if n not in names]
        if missing:
            raise StageError(f"{self.plan}: engine has no tensor '{missing[0]}' of the serving contract "
                             f"(it has {sorted(names)})")

    def infer_impl(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = self.session.infer(feed)
        return {name: out[name] for name in spec.OUTPUT_NAMES}

    def deactivate_impl(self) -> None:
        if self.session is not None:
            self.session.close()
        self.session = None


class SplitTensorRTRunner(Runner):
    """Split mode on TensorRT: the embedding store's lookup (embeddings/split.py) feeding the dense plan,
    what the gpu repository's `onerank_trt_<p>` ensemble serves (onerank_lookup -> onerank_dense_trt_<p>)."""

    def __init__(self, plan: str | Path, store: str | Path, plugin_library: str | Path | None = None,
                 name: str | None = None) -> None:
        self.plan, self.store = Path(plan), Path(store)
        super().__init__(name or f"split-tensorrt:{self.plan.name}")
        self.plugin_library = Path(plugin_library) if plugin_library is not None else default_plugin_for(self.plan)
        self.session: EngineSession | None = None
        self.table = None

    def activate_impl(self) -> None:
        from onerank_export.embeddings.split import DENSE_INPUT_NAMES
        from onerank_export.embeddings.store import open_store

        # The store first: it is checked on any host, the engine only where CUDA and TensorRT are.
        table = open_store(self.store, verify=True, mapped=False).table("item")
        session = EngineSession(self.plan, self.plugin_library)
        session.open()
        names = {**session.inputs, **session.outputs}
        missing = [n for n in (*DENSE_INPUT_NAMES, *spec.OUTPUT_NAMES) if n not in names]
        if missing:
            session.close()
            raise StageError(f"{self.plan}: engine has no tensor '{missing[0]}' of the split dense graph (it has "
                             f"{sorted(names)}); give the onerank.dense.<p>.plan")
        self.session, self.table = session, table

    def infer_impl(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        from onerank_export.embeddings.split import dense_feed

        out = self.session.infer(dense_feed(self.table, feed))
        return {name: out[name] for name in spec.OUTPUT_NAMES}

    def deactivate_impl(self) -> None:
        if self.session is not None:
            self.session.close()
        self.session = self.table = None


# ----- TensorRT calls -----------------------------------------------------------------------------


def _deserialize(trt: ModuleType, plan: Path, plugin_library: Path | None) -> tuple[Any, Any, Any]:
    from onerank_export.engine.tensorrt.api import last_logged_error, load_plugin_library, shared_logger

    logger = shared_logger(trt)
    runtime = trt.Runtime(logger)
    if plugin_library is not None:
        load_plugin_library(trt, runtime.get_plugin_registry(), plugin_library)
    engine = runtime.deserialize_cuda_engine(plan.read_bytes())
    if engine is None:
        hint = "" if plugin_library is not None else " (no plugin library given: pass --plugin)"
        raise StageError(f"{plan}: TensorRT {trt.__version__} could not deserialize it{hint}: "
                         f"{last_logged_error(trt)}; an engine only runs on the TensorRT version and GPU "
                         "architecture it was built for (see its .json)")
    context = engine.create_execution_context()
    if context is None:
        raise StageError(f"{plan}: TensorRT could not create an execution context: {last_logged_error(trt)}")
    return runtime, engine, context


def _io_tensors(trt: ModuleType, engine: trt.ICudaEngine, torch: ModuleType) -> tuple[dict, dict]:
    dtypes = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16, trt.DataType.INT32: torch.int32,
              trt.DataType.INT64: torch.int64, trt.DataType.BOOL: torch.bool, trt.DataType.INT8: torch.int8,
              trt.DataType.UINT8: torch.uint8}
    inputs, outputs = {}, {}
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        dtype = engine.get_tensor_dtype(name)
        if dtype not in dtypes:
            raise StageError(f"engine tensor '{name}' has TensorRT type {dtype}, which has no numpy counterpart")
        mode = engine.get_tensor_mode(name)
        (inputs if mode == trt.TensorIOMode.INPUT else outputs)[name] = dtypes[dtype]
    return inputs, outputs


def _bind_input(trt: ModuleType, engine: trt.ICudaEngine, context: trt.IExecutionContext, name: str,
                shape: tuple[int, ...], address: int) -> None:
    if not context.set_input_shape(name, shape):
        low, _, high = engine.get_tensor_profile_shape(name, 0)
        raise RequestError(f"tensorrt: input '{name}' shape {list(shape)} is outside the engine's profile "
                           f"[{list(low)} .. {list(high)}]")
    context.set_tensor_address(name, address)


def _output_shape(context: trt.IExecutionContext, name: str) -> tuple[int, ...]:
    unresolved = context.infer_shapes()
    if unresolved:
        raise RequestError(f"tensorrt: shapes of {list(unresolved)} cannot be inferred from the inputs given")
    shape = tuple(context.get_tensor_shape(name))
    if any(d < 0 for d in shape):
        raise RequestError(f"tensorrt: output '{name}' has unresolved shape {list(shape)}")
    return shape


def _bind_output(context: trt.IExecutionContext, name: str, address: int) -> None:
    context.set_tensor_address(name, address)


def _execute(context: trt.IExecutionContext, stream_handle: int, plan: Path) -> None:
    if not context.execute_async_v3(stream_handle):
        raise StageError(f"{plan}: TensorRT execute_async_v3 failed (see the [TensorRT] messages above)")
