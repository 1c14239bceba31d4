"""Can TensorRT engines be built and run here? One answer for `build --engine`, the TensorRT
runner and the `gpu` test marker."""

from __future__ import annotations

import functools
import importlib.util

from onerank_export.host import cuda_device_present


@functools.lru_cache(maxsize=1)
def tensorrt_unavailable_reason() -> str | None:
    """None when a CUDA device and an importable TensorRT exist; otherwise the reason, one line."""
    missing = []
    if not cuda_device_present():
        missing.append("no CUDA device")
    if importlib.util.find_spec("tensorrt") is None:
        missing.append("TensorRT not installed")
    else:
        try:
            import tensorrt  # noqa: F401
        except Exception as exc:  # e.g. bindings present but libnvinfer missing
            missing.append(f"TensorRT not importable ({type(exc).__name__}: {str(exc).splitlines()[0]})")
    return " / ".join(missing) if missing else None
