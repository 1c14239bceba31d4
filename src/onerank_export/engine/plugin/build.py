"""Build the MatchingScore TensorRT plugin libraries with CMake (plugins/matching_score/).

`build_plugin_library` checks what the build needs before running it, so a missing piece is one
line naming it and the fix (StageError), not a CMake log. It builds in a temporary directory and
copies `libonerank_plugins.so` (creator registered at load: Triton `plugins=`, LD_PRELOAD,
ctypes.CDLL, trtexec --staticPlugins) and `libonerank_plugins_dynamic.so` (getCreators for
`IPluginRegistry.load_library`, trtexec --dynamicPlugins) into out_dir.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from onerank_export.errors import StageError

PLUGIN_SOURCE_DIR = Path(__file__).resolve().parents[4] / "plugins" / "matching_score"
STATIC_LIBRARY = "libonerank_plugins.so"
DYNAMIC_LIBRARY = "libonerank_plugins_dynamic.so"
# Where TensorRT lands when installed from NVIDIA's Debian/RPM packages or in the NGC containers.
SYSTEM_PREFIXES = (Path("/usr"), Path("/usr/local/tensorrt"), Path("/opt/tensorrt"))
HEADER_SUFFIXES = ("include", "include/x86_64-linux-gnu", "include/aarch64-linux-gnu")
LIBRARY_SUFFIXES = ("lib", "lib64", "lib/x86_64-linux-gnu", "lib/aarch64-linux-gnu")
LIBRARY_PATTERNS = ("libnvinfer.so", "libnvinfer.so.1[0-9]*")


def _find(root: Path, suffixes: tuple[str, ...], patterns: tuple[str, ...]) -> Path | None:
    for suffix in suffixes:
        for pattern in patterns:
            hits = sorted((root / suffix).glob(pattern))
            if hits:
                return hits[0]
    return None


def resolve_tensorrt_root(tensorrt_root: Path | None) -> Path:
    """The TensorRT prefix to build against: the argument, else $TensorRT_ROOT, else a system install."""
    # TensorRT_ROOT is the spelling CMake's <Package>_ROOT convention and NVIDIA's docs use.
    explicit = tensorrt_root or os.environ.get("TensorRT_ROOT") or os.environ.get("TENSORRT_ROOT")  # noqa: SIM112
    if explicit:
        root = Path(explicit).expanduser()
        if not root.is_dir():
            raise StageError(f"TensorRT_ROOT={root} is not a directory: point TensorRT_ROOT at the TensorRT install "
                             "(the directory holding include/NvInfer.h and lib/libnvinfer.so)")
        if _find(root, HEADER_SUFFIXES, ("NvInfer.h",)) is None:
            raise StageError(f"TensorRT_ROOT={root} has no include/NvInfer.h: point TensorRT_ROOT at a TensorRT "
                             "install with headers (tar/zip package or NGC container; pip wheels ship none)")
        if _find(root, LIBRARY_SUFFIXES, LIBRARY_PATTERNS) is None:
            raise StageError(f"TensorRT_ROOT={root} has no lib/libnvinfer.so*: point TensorRT_ROOT at a full "
                             "TensorRT install (headers and libraries)")
        return root
    for root in SYSTEM_PREFIXES:
        if _find(root, HEADER_SUFFIXES, ("NvInfer.h",)) and _find(root, LIBRARY_SUFFIXES, LIBRARY_PATTERNS):
            return root
    raise StageError("TensorRT headers not found: set TensorRT_ROOT to a TensorRT install with include/NvInfer.h "
                     "and lib/libnvinfer.so (pip wheels ship no headers)")


def _require_cmake() -> str:
    cmake = shutil.which("cmake")
    if cmake is None:
        raise StageError("cmake not found: install CMake >= 3.18 (apt-get install cmake, or pip install cmake)")
    return cmake


def _has_cuda_headers() -> bool:
    roots = [os.environ.get(v) for v in ("CUDAToolkit_ROOT", "CUDA_HOME", "CUDA_PATH")] + ["/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        roots.append(str(Path(nvcc).resolve().parents[1]))
    return any(r and (Path(r) / "include" / "cuda.h").exists() for r in roots)


def _require_build_inputs() -> None:
    if shutil.which("c++") is None and shutil.which("g++") is None and not os.environ.get("CXX"):
        raise StageError("no C++ compiler found: install g++ (apt-get install g++) or set CXX")
    if not _has_cuda_headers():
        raise StageError("CUDA toolkit not found (no include/cuda.h): install it or set CUDAToolkit_ROOT")
    if importlib.util.find_spec("triton") is None:
        raise StageError("triton is not installed; it compiles the plugin's kernel: "
                         "pip install 'onerank-export[kernels]'")
    if not (PLUGIN_SOURCE_DIR / "CMakeLists.txt").exists():
        raise StageError(f"plugin sources not found at {PLUGIN_SOURCE_DIR}: build from a source checkout "
                         "of onerank-export")


def _first_error(log: str) -> str:
    for line in log.splitlines():
        if "CMake Error" in line or "error:" in line or "FATAL" in line:
            return line.strip()
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"


def _run(cmd: list[str], log_path: Path, what: str, env: dict[str, str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    with log_path.open("a") as log:
        log.write(f"$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}\n")
    if proc.returncode != 0:
        text = proc.stdout + proc.stderr
        if what == "configure":  # the CMake message after "CMake Error at ...:" is the useful part
            after = text.split("CMake Error", 1)[-1].split("\n", 1)[-1]
            detail = " ".join(after.split("\n\n", 1)[0].split()) or _first_error(text)
        else:
            detail = _first_error(text)
        raise StageError(f"plugin {what} failed: {detail} (full log: {log_path})")


def build_plugin_library(out_dir: Path, *, tensorrt_root: Path | None = None,
                         progress: Callable[[str], None] | None = None) -> Path:
    """Configure and build the plugin; returns out_dir/libonerank_plugins.so (the dynamic flavour lands beside it)."""
    say = progress or (lambda _msg: None)
    cmake = _require_cmake()
    root = resolve_tensorrt_root(tensorrt_root)
    _require_build_inputs()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = out_dir / "plugin_build.log"
    log_path.write_text("")
    # The AOT step runs `python -m onerank_export.engine.kernel.aot`: make this checkout importable by that interpreter.
    src_dir = str(PLUGIN_SOURCE_DIR.parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (src_dir, os.environ.get("PYTHONPATH")) if p)}
    with tempfile.TemporaryDirectory(prefix="onerank-plugin-build-") as tmp:
        build = Path(tmp)
        say(f"configuring the MatchingScore plugin against TensorRT at {root}")
        _run([cmake, "-S", str(PLUGIN_SOURCE_DIR), "-B", str(build), f"-DTensorRT_ROOT={root}",
              f"-DPython3_EXECUTABLE={sys.executable}", "-DCMAKE_BUILD_TYPE=Release"], log_path, "configure", env)
        say("compiling kernels (sm_80/86/89/90) and the plugin")
        _run([cmake, "--build", str(build), "--parallel", str(min(os.cpu_count() or 1, 8))], log_path, "build", env)
        for name in (STATIC_LIBRARY, DYNAMIC_LIBRARY):
            built = build / name
            if not built.exists():
                raise StageError(f"plugin build finished without {name} (full log: {log_path})")
            shutil.copy2(built, out_dir / name)
        kernels_json = build / "kernels" / "kernels.json"
        if kernels_json.exists():
            shutil.copy2(kernels_json, out_dir / "kernels.json")
    say(f"built {out_dir / STATIC_LIBRARY}")
    return out_dir / STATIC_LIBRARY
