"""Can TensorRT engines be built and run here? One answer for `build --engine`, the TensorRT
runner and the `gpu` test marker."""

from __future__ import annotations

import functools
import importlib.util


@functools.lru_cache(maxsize=1)
def tensorrt_unavailable_reason() -> str | None:
    """None when a CUDA device and an importable TensorRT exist; otherwise the reason, one line."""
    missing = []
    if not _cuda_device_present():
        missing.append("no CUDA device")
    if importlib.util.find_spec("tensorrt") is None:
        missing.append("TensorRT not installed")
    else:
        try:
            import tensorrt  # noqa: F401
        except Exception as exc:  # e.g. bindings present but libnvinfer missing
            missing.append(f"TensorRT not importable ({type(exc).__name__}: {str(exc).splitlines()[0]})")
    return " / ".join(missing) if missing else None


def load_libcuda():
    """The CUDA driver library (ctypes.CDLL), or None where no NVIDIA driver is installed."""
    import ctypes

    for lib in ("libcuda.so.1", "libcuda.so"):
        try:
            return ctypes.CDLL(lib)
        except OSError:
            continue
    return None


def _cuda_device_present() -> bool:
    import ctypes

    cuda = load_libcuda()
    if cuda is None or cuda.cuInit(0) != 0:
        return False
    count = ctypes.c_int(0)
    return cuda.cuDeviceGetCount(ctypes.byref(count)) == 0 and count.value > 0
