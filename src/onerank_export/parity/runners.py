"""Runners for the backends available everywhere: PyTorch eager (dense and serving graph) and
ONNX Runtime (CPU, and the CUDA / TensorRT execution providers of onnxruntime-gpu on a GPU host).
TensorRT and Triton runners live beside them in their own modules."""

from __future__ import annotations

import contextlib
import functools
import io
import re
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from onerank_export import spec
from onerank_export.errors import StageError, first_line
from onerank_export.export.ort_session import cpu_session, cpu_session_options, default_threads
from onerank_export.export.serving_graph import ServingGraph
from onerank_export.host import cuda_device_present
from onerank_export.model.onerank import OneRankModel
from onerank_export.parity.runner import Runner, RunnerUnavailable

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
TENSORRT_PROVIDER = "TensorrtExecutionProvider"
_NEEDS_CUDA = (CUDA_PROVIDER, TENSORRT_PROVIDER)

# The GPU runners `build_runners` adds per ONNX model on a GPU host: name suffix -> providers. CUDA is
# listed after TensorRT so the nodes TensorRT does not take run on the GPU, not on the CPU (ORT gives a
# node to the first provider in the list that claims it).
GPU_RUNNER_PROVIDERS: dict[str, tuple[str, ...]] = {
    "cuda": (CUDA_PROVIDER,),
    "tensorrt": (TENSORRT_PROVIDER, CUDA_PROVIDER),
}

# ORT's CUDA provider enables TF32 by default (onnxruntime/core/providers/cuda/
# cuda_execution_provider_info.h: `use_tf32{true}`): fp32 MatMul inputs rounded to 10-bit mantissas
# would fail fp32 parity (1e-5) for a reason that is not the model's. The engine builder clears TF32
# for the same reason (docs/engine.md).
_PROVIDER_OPTIONS: dict[str, dict[str, str]] = {CUDA_PROVIDER: {"use_tf32": "0"}}

GPU_DOCS = "docs/engine.md#onnx-runtime-on-a-gpu-host"


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
    ONNX Runtime backend loads). With CUDA / TensorRT providers the runner is unavailable, with the
    reason, unless the session really has them: ORT falls back to the CPU silently otherwise.
    `provider` is the provider that ran (the session's first), for the parity report."""

    def __init__(self, model: str | Path | bytes, name: str = "onnxruntime", *,
                 providers: Sequence[str] = (CPU_PROVIDER,), threads: int | None = None,
                 cpu_rewrite: bool = True) -> None:
        super().__init__(name)
        self.model = model if isinstance(model, bytes) else str(Path(model))
        self.providers = list(providers)
        self.threads = threads
        self.cpu_rewrite = cpu_rewrite
        self.session = None
        self.provider: str | None = None

    @property
    def on_gpu(self) -> bool:
        return any(p in _NEEDS_CUDA for p in self.providers)

    def activate_impl(self) -> None:
        import onnxruntime as ort

        missing = [p for p in self.providers if p not in ort.get_available_providers()]
        if missing:
            raise RunnerUnavailable(provider_missing_reason(missing[0]))
        threads = self.threads or default_threads()
        if self.on_gpu:
            self.session = gpu_session(self.model, self.providers, cpu_session_options(threads))
        elif self.cpu_rewrite and self.providers == [CPU_PROVIDER]:
            self.session = cpu_session(self.model, threads)
        else:
            self.session = ort.InferenceSession(self.model, cpu_session_options(threads), providers=self.providers)
        self.provider = self.session.get_providers()[0]

    def infer_impl(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            outputs = self.session.run(list(spec.OUTPUT_NAMES), dict(feed))
        except Exception as exc:  # ORT raises its own types; on a GPU a provider failure, not a bug of ours
            if not self.on_gpu:
                raise
            sizes = ", ".join(f"{k}={v}" for k, v in spec.dynamic_sizes(feed).items())
            raise StageError(f"{self.name}: onnxruntime's {self.provider} failed on a request with {sizes} "
                             f"({first_line(exc)})") from None
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
        self.provider: str | None = None

    def activate_impl(self) -> None:
        import onnxruntime as ort

        from onerank_export.serving.model_config import read_config
        from onerank_export.serving.ort_backend import instance_kinds, session_like_onnxruntime_backend

        if "KIND_GPU" in instance_kinds(read_config(self.model_dir / "config.pbtxt")):
            if CUDA_PROVIDER not in ort.get_available_providers():
                raise RunnerUnavailable(f"a KIND_GPU model needs onnxruntime's CUDA provider; "
                                        f"{provider_missing_reason(CUDA_PROVIDER)}")
            if not cuda_device_present():
                raise RunnerUnavailable("a KIND_GPU model needs a CUDA device; this host has none")
            providers: tuple[str, ...] = (CUDA_PROVIDER,)
        else:
            providers = (CPU_PROVIDER,)
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):  # ORT prints why a provider did not start
            self.session, applied = session_like_onnxruntime_backend(self.model_dir, providers=providers)
        self.session.disable_fallback()  # a provider error in run() must not silently rerun on the CPU
        check_session_providers(self.session, providers, printed.getvalue())
        self.provider = self.session.get_providers()[0]
        self.run_options = applied.run_options()

    def infer_impl(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self.session.run(list(spec.OUTPUT_NAMES), dict(feed), self.run_options)
        return dict(zip(spec.OUTPUT_NAMES, outputs, strict=True))

    def deactivate_impl(self) -> None:
        self.session = None


# ----- ONNX Runtime's GPU providers --------------------------------------------------------------

def gpu_session(model: str | bytes, providers: Sequence[str], options):
    """A session on CUDA / TensorRT providers that really has them, else RunnerUnavailable with why.

    ORT does not fail when a GPU provider cannot start: the constructor retries on the CPU (printing
    "EP Error ... Falling back"), a provider library that does not load is only logged, and `run()`
    reruns a failing request on the CPU. Fallback is switched off where ORT allows it and the
    session's providers are checked, so a CPU run is never reported as a GPU one."""
    import onnxruntime as ort

    if not cuda_device_present():
        raise RunnerUnavailable("no CUDA device")
    requested = [(p, _PROVIDER_OPTIONS[p]) if p in _PROVIDER_OPTIONS else p for p in providers]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):  # what ORT prints on the way is the reason, below
        printed.write(_preload_cuda_libraries())
        # enable_fallback=0: raise instead of retrying on the CPU (onnxruntime_inference_collection.py, 1.32);
        # ORT 1.22 ignores the keyword, retries, and prints "EP Error <why> when using [...]": checked below.
        try:
            session = ort.InferenceSession(model, options, providers=requested, enable_fallback=0)
        except Exception as exc:  # ORT raises several types for a provider that cannot start
            raise RunnerUnavailable(f"onnxruntime could not start {providers[0]}: {first_line(exc)}") from None
    session.disable_fallback()
    check_session_providers(session, providers, printed.getvalue())
    return session


def check_session_providers(session, requested: Sequence[str], printed: str = "") -> None:
    """RunnerUnavailable when the session lacks a requested provider (ORT fell back without failing)."""
    got = list(session.get_providers())
    lost = [p for p in requested if p not in got]
    if lost:
        lines = [line.strip() for line in printed.splitlines()]
        # ORT's own error for the provider first, then a CUDA library preload_dlls could not load
        why = next((line for prefix in ("EP Error", "Failed to create", "Failed to load") for line in lines
                    if line.startswith(prefix)), "")
        raise RunnerUnavailable(f"onnxruntime did not start {lost[0]} and fell back to {', '.join(got)}"
                                + (f" ({why[:300]})" if why else "")
                                + "; `python -c 'import onnxruntime; onnxruntime.print_debug_info()'` shows "
                                  "the CUDA libraries it finds")


def provider_missing_reason(provider: str) -> str:
    """Why `provider` is not among onnxruntime's providers, in one line with the fix."""
    why = f"onnxruntime has no {provider} here"
    dists = onnxruntime_distributions()
    gpu = dists.get("onnxruntime-gpu")
    if gpu is not None and len(dists) > 1:
        return (f"{why}: {' and '.join(sorted(dists))} are installed into one `onnxruntime` directory and "
                f"another build's files are in use; run `{swap_command(gpu)}` ({GPU_DOCS})")
    if gpu is None:
        installed = ", ".join(f"{n} {v}" for n, v in sorted(dists.items())) or "no onnxruntime distribution"
        return f"{why} ({installed} installed; a GPU host needs onnxruntime-gpu: {GPU_DOCS})"
    return f"{why} (onnxruntime-gpu {gpu} is installed without it)"


def swap_command(version: str) -> str:
    """Make onnxruntime-gpu's files the ones in the shared `onnxruntime` directory (docs/engine.md)."""
    return f"pip install --force-reinstall --no-deps onnxruntime-gpu=={version}"


def onnxruntime_distributions() -> dict[str, str]:
    """{distribution: version} of every installed distribution that writes the `onnxruntime` package.

    onnxruntime and onnxruntime-gpu both do, into one directory: the one installed last overwrote
    the other's files, and uninstalling either deletes files the other needs. Packages that merely
    share the prefix (onnxruntime-extensions, onnxruntime-genai) import under other names."""
    found = {}
    for dist in metadata.distributions():
        name = re.sub(r"[-_.]+", "-", dist.metadata["Name"] or "").lower()
        if name != "onnxruntime" and not name.startswith("onnxruntime-"):
            continue
        if any(f.parts == ("onnxruntime", "__init__.py") for f in dist.files or ()):
            found[name] = dist.version
    return found


@functools.cache
def _preload_cuda_libraries() -> str:
    """Load the CUDA / cuDNN libraries of the nvidia-* wheels (onnxruntime-gpu[cuda,cudnn]) once, as
    ORT documents (`onnxruntime.preload_dlls`, 1.21+); returns what it printed (libraries it missed)."""
    import onnxruntime as ort

    if not hasattr(ort, "preload_dlls"):
        return ""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        ort.preload_dlls()
    return printed.getvalue()
