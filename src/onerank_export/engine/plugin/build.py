"""Build the MatchingScore TensorRT plugin libraries with CMake (plugins/matching_score/).

`build_plugin_library` checks what the build needs before running it, so a missing piece is one
line naming it and the fix (StageError), not a CMake log; that includes TensorRT headers of another
major.minor than the Python `tensorrt` the builder uses (`require_matching_tensorrt`). It builds
in a temporary directory and copies `libonerank_plugins.so` (creator registered at load: Triton `plugins=`, LD_PRELOAD,
ctypes.CDLL, trtexec --staticPlugins) and `libonerank_plugins_dynamic.so` (getCreators for
`IPluginRegistry.load_library`, trtexec --dynamicPlugins) into out_dir.
"""

from __future__ import annotations

import importlib.util
import os
import re
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
VERSION_HEADER = "NvInferVersion.h"
_DEFINE = re.compile(r"^[ \t]*#[ \t]*define[ \t]+(\w+)[ \t]+([^\n]*)$", re.M)


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


def header_version(include_dir: Path) -> tuple[int, int, int]:
    """(major, minor, patch) from include_dir/NvInferVersion.h, for both layouts NVIDIA has shipped.

    Up to 10.10 the header defines NV_TENSORRT_MAJOR 10 itself; from 10.11 (and in 11.x) it defines
    TRT_MAJOR_ENTERPRISE 11 and NV_TENSORRT_MAJOR as that macro (NVIDIA/TensorRT include/NvInferVersion.h at
    v10.8.0 and v10.11 / v11.1). So the NV_TENSORRT_* names are read and one macro may name another.
    """
    path = include_dir / VERSION_HEADER
    if not path.is_file():
        raise StageError(f"{path} not found beside NvInfer.h: point TensorRT_ROOT at a complete TensorRT install "
                         "(its version is read from that header)")
    macros = {name: value.split("//")[0].split("/*")[0].strip() for name, value in _DEFINE.findall(path.read_text())}

    def number(name: str) -> int | None:
        value, seen = macros.get(name), {name}
        while value in macros and value not in seen:  # NV_TENSORRT_MAJOR -> TRT_MAJOR_ENTERPRISE -> 11
            seen.add(value)
            value = macros[value]
        return int(value) if value and value.isdigit() else None

    parts = [number(f"NV_TENSORRT_{part}") for part in ("MAJOR", "MINOR", "PATCH")]
    if None in parts:
        raise StageError(f"{path} does not define NV_TENSORRT_MAJOR/MINOR/PATCH as numbers: point TensorRT_ROOT at "
                         "a TensorRT install whose headers are intact")
    major, minor, patch = parts
    return major, minor, patch


def python_tensorrt_version() -> str | None:
    """`tensorrt.__version__` of the Python module the engine builder will import; None when it does not import."""
    try:
        import tensorrt
    except (ImportError, OSError):  # OSError: the module is there but its libnvinfer is not
        return None
    return str(getattr(tensorrt, "__version__", "")) or None


def require_matching_tensorrt(root: Path, say: Callable[[str], None] = lambda _msg: None) -> tuple[int, int, int]:
    """The headers' version; a one-line StageError when it cannot be the TensorRT the Python builder runs.

    Built against another major, the plugin links another libnvinfer soname: a second libnvinfer with its own
    plugin registry is loaded beside the builder's, and the parser then reports the op as unknown instead of naming
    the mismatch. Built against another minor, it is compiled for interfaces the running library may not have, a
    combination nobody tests. So major.minor of the headers, of the libnvinfer beside them (its file names) and of
    `tensorrt.__version__` must agree. The patch may differ: patch releases change only NvInferVersion.h under
    include/ (NVIDIA/TensorRT v10.13.0 -> v10.13.2 -> v10.13.3) and keep the soname, so it is said, not refused.
    """
    header = _find(root, HEADER_SUFFIXES, ("NvInfer.h",))
    library = _find(root, LIBRARY_SUFFIXES, LIBRARY_PATTERNS)
    if header is None or library is None:  # resolve_tensorrt_root already refused such a root
        raise StageError(f"TensorRT_ROOT={root} lacks NvInfer.h or libnvinfer.so*")
    major, minor, patch = version = header_version(header.parent)
    shown = f"{major}.{minor}.{patch}"
    names = (re.match(r"libnvinfer\.so\.(\d+)", f.name) for f in library.parent.glob("libnvinfer.so.*"))
    sonames = {int(m[1]) for m in names if m}
    if sonames and major not in sonames:
        found = ", ".join(f"libnvinfer.so.{n}" for n in sorted(sonames))
        raise StageError(f"TensorRT headers {shown} ({header.parent}) do not match the library beside them ({found} in "
                         f"{library.parent}): point TensorRT_ROOT at one TensorRT install with both")
    python = python_tensorrt_version()
    if python is None:
        say(f"TensorRT headers {shown}; Python tensorrt not importable, so not compared (the engine builder needs it)")
        return version
    match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", python)
    if match is None or (int(match[1]), int(match[2])) != (major, minor):
        raise StageError(f"TensorRT headers {shown} at {header.parent} do not match the Python tensorrt {python} the "
                         f"engine builder uses (major.minor must agree: the plugin must be built for the libnvinfer "
                         f"the builder loads): point TensorRT_ROOT at the TensorRT {python} install, or "
                         f"pip install 'tensorrt=={major}.{minor}.*'")
    if match[3] is not None and int(match[3]) != patch:
        say(f"TensorRT headers {shown}, Python tensorrt {python}: patch releases differ only in NvInferVersion.h; "
            "building")
    return version


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
    require_matching_tensorrt(root, say)  # before anything is written or compiled
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
        say("compiling the kernel images and the plugin")  # CMake prints the architectures
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
