"""What `doctor` asks of the host, one callable each (`DoctorProbes`), so its checks are tested with
stand-ins on hosts without a GPU (like `EngineToolchain` for the engine stage).

Every probe reuses the module that the product itself uses for the same question: the driver through
`onerank_export.host`, the device through `plan_metadata.cuda_device_identity`, TensorRT's headers through the
plugin build's own root discovery and version check, ONNX Runtime's providers through the parity runners'
diagnosis, tritonserver through `serving.server`. Heavy imports (torch, tensorrt) happen inside the probes.
"""

from __future__ import annotations

import ctypes
import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from onerank_export.pipeline.result import StageResult
from onerank_export.precision import REDUCED, Precision

# The checkout's tests/ (absent in an installed wheel: then `pytest -m gpu` is skipped with that reason).
TESTS_DIR = Path(__file__).resolve().parents[3] / "tests"
PYTEST_TIMEOUT_S = 300  # the GPU tier's share of doctor's 10-minute budget
TRTEXEC_TIMEOUT_S = 120


@dataclass
class EngineRun:
    """What the demo build with engines produced: its stage results and the plan per precision."""

    stages: list[StageResult]
    plans: dict[str, Path] = field(default_factory=dict)


def host_info() -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    try:  # Linux names the CPU model only in /proc/cpuinfo; platform.processor() is often empty there
        match = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu = match[1].strip() if match else cpu
    except OSError:
        pass
    return {"python": platform.python_version(), "platform": platform.platform(), "cpu": cpu,
            "cores": str(os.cpu_count() or 1)}


def driver_version() -> int | None:
    """cuDriverGetVersion (e.g. 12040 for CUDA 12.4); None where no NVIDIA driver is installed. It needs no
    cuInit, so it answers on a host whose driver sees no device too."""
    from onerank_export.host import load_libcuda

    cuda = load_libcuda()
    if cuda is None:
        return None
    version = ctypes.c_int(0)
    status = cuda.cuDriverGetVersion(ctypes.byref(version))
    if status != 0:
        from onerank_export.errors import StageError

        raise StageError(f"CUDA driver call cuDriverGetVersion failed with CUresult {status}")
    return version.value


def device_present() -> bool:
    from onerank_export.host import cuda_device_present

    return cuda_device_present()


def device() -> tuple[str, str]:
    from onerank_export.engine.tensorrt.plan_metadata import cuda_device_identity

    return cuda_device_identity()


def tensorrt_python() -> str | None:
    from onerank_export.engine.plugin.build import python_tensorrt_version

    return python_tensorrt_version()


def tensorrt_headers() -> tuple[Path, str]:
    """(TensorRT root, header version) as the plugin build finds them; a StageError (one line) where none is found
    or where they do not match the Python tensorrt (`require_matching_tensorrt`)."""
    from onerank_export.engine.plugin.build import require_matching_tensorrt, resolve_tensorrt_root

    root = resolve_tensorrt_root(None)
    return root, ".".join(str(n) for n in require_matching_tensorrt(root))


def onnxruntime_info() -> tuple[str, list[str]]:
    import onnxruntime

    return onnxruntime.__version__, list(onnxruntime.get_available_providers())


def provider_missing_reason(provider: str) -> str:
    from onerank_export.parity.runners import provider_missing_reason as reason

    return reason(provider)


def tritonservers() -> list[tuple[str, Path, str]]:
    """(where, binary, version) of each tritonserver found: the one nvidia-pytriton bundles and one on PATH.

    tritonserver has no --version option (it prints its usage and exits 1, checked with pytriton's 2.51 binary);
    NVIDIA's containers record the server version in <prefix>/TRITON_VERSION (server build.py copies it to
    /opt/tritonserver), and pytriton's is its wheel's version."""
    from importlib import metadata

    from onerank_export.errors import StageError
    from onerank_export.serving.server import pytriton_root

    found = []
    try:
        bundled = pytriton_root() / "bin" / "tritonserver"
        if bundled.is_file():
            found.append(("bundled", bundled, f"nvidia-pytriton {metadata.version('nvidia-pytriton')}"))
    except (StageError, metadata.PackageNotFoundError):
        pass
    on_path = shutil.which("tritonserver")
    if on_path:
        version_file = Path(on_path).resolve().parents[1] / "TRITON_VERSION"
        version = version_file.read_text().strip() if version_file.is_file() else "version unknown"
        found.append(("PATH", Path(on_path), version))
    return found


def build_plugin(out_dir: Path) -> Path:
    from onerank_export.engine.plugin.build import build_plugin_library

    return build_plugin_library(out_dir)


def build_engines(out: Path, plugin: Path) -> EngineRun:
    """The demo build with fp32, fp16 and int8 engines on this GPU and their parity against eager: the
    pipeline's own `build`, given the plugin just built so CMake does not run twice."""
    from onerank_export.engine.tensorrt.plan_metadata import plan_file_name
    from onerank_export.pipeline.options import BuildOptions
    from onerank_export.pipeline.runner import build
    from onerank_export.pipeline.stages.engine import ENGINES_DIR

    outcome = build(BuildOptions(out=out, engine="require", target="gpu", plugin_library=plugin,
                                 precisions=REDUCED))
    plans = {p: out / ENGINES_DIR / plan_file_name(p) for p in Precision}
    return EngineRun(outcome.stages, {p: path for p, path in plans.items() if path.is_file()})


def run(cmd: Sequence[str], timeout: float, cwd: Path | None = None) -> tuple[int, str]:
    """(exit code, stdout + stderr) of a subprocess; a timeout is exit code -1 with the reason as output."""
    try:
        proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, cwd=cwd)
    except subprocess.TimeoutExpired:
        return -1, f"timed out after {timeout:.0f} s: {' '.join(cmd)}"
    return proc.returncode, proc.stdout + proc.stderr


def gpu_test_command(tests_dir: Path) -> list[str]:
    return [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", str(tests_dir)]


@dataclass(frozen=True)
class DoctorProbes:
    """What `doctor` calls (real ones by default); each raises a OneRankError with one line when it fails."""

    host: Callable[[], dict[str, str]] = host_info
    driver_version: Callable[[], int | None] = driver_version
    device_present: Callable[[], bool] = device_present
    device: Callable[[], tuple[str, str]] = device  # (name, "major.minor") of device 0
    tensorrt_python: Callable[[], str | None] = tensorrt_python
    tensorrt_headers: Callable[[], tuple[Path, str]] = tensorrt_headers
    onnxruntime: Callable[[], tuple[str, list[str]]] = onnxruntime_info
    provider_missing_reason: Callable[[str], str] = provider_missing_reason
    tritonservers: Callable[[], list[tuple[str, Path, str]]] = tritonservers
    build_plugin: Callable[[Path], Path] = build_plugin
    build_engines: Callable[[Path, Path], EngineRun] = build_engines
    which: Callable[[str], str | None] = shutil.which
    run: Callable[..., tuple[int, str]] = run  # (cmd, timeout, cwd=None) -> (exit code, output)
    tests_dir: Path | None = TESTS_DIR
