"""The plugin's C++ against TensorRT's own public headers: every translation unit compiles warning-free, and the
plugin behaves as TensorRT drives it (tests/engine/cpp/plugin_harness.cpp, fake CUDA driver, no GPU).

TensorRT's headers are not installable here; point TENSORRT_INCLUDE_DIR (or TensorRT_ROOT) at them, e.g. the
`include/` of NVIDIA/TensorRT at a release tag (docs/plugin.md has the commands). Skipped otherwise.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from onerank_export.engine.kernel import aot
from onerank_export.engine.plugin.build import PLUGIN_SOURCE_DIR as PLUGIN_DIR
from onerank_export.export.custom_op import MATCHING_SCORE

HARNESS = Path(__file__).parents[1] / "cpp" / "plugin_harness.cpp"


def tensorrt_include_dir() -> Path | None:
    if os.environ.get("TENSORRT_INCLUDE_DIR"):
        return Path(os.environ["TENSORRT_INCLUDE_DIR"])
    for var in ("TensorRT_ROOT", "TENSORRT_ROOT"):
        if os.environ.get(var) and (Path(os.environ[var]) / "include" / "NvInfer.h").exists():
            return Path(os.environ[var]) / "include"
    return None


def cuda_include_dir() -> Path | None:
    roots = [os.environ.get(v) for v in ("CUDAToolkit_ROOT", "CUDA_HOME", "CUDA_PATH")] + ["/usr/local/cuda"]
    for root in filter(None, roots):
        if (Path(root) / "include" / "cuda.h").exists():
            return Path(root) / "include"
    return None


@pytest.fixture(scope="module")
def toolchain() -> tuple[str, Path, Path]:
    trt, cuda, cxx = tensorrt_include_dir(), cuda_include_dir(), shutil.which("g++")
    if trt is None:
        pytest.skip("set TENSORRT_INCLUDE_DIR (or TensorRT_ROOT) to TensorRT's include/ to compile the plugin")
    if not (trt / "NvInfer.h").exists():
        pytest.fail(f"TENSORRT_INCLUDE_DIR={trt} has no NvInfer.h")
    if cuda is None or cxx is None:
        pytest.skip("needs g++ and the CUDA headers")
    return cxx, trt, cuda


UNITS = [("matchingScorePlugin.cpp", []), ("matchingScorePluginCreator.cpp", []),
         ("pluginRegistration.cpp", ["-DONERANK_STATIC_REGISTRATION=1"]),
         ("pluginRegistration.cpp", ["-DONERANK_STATIC_REGISTRATION=0"])]


@pytest.mark.parametrize(("source", "defines"), UNITS,
                         ids=["plugin", "creator", "static-registration", "dynamic-entry"])
def test_plugin_compiles_against_tensorrt_headers(toolchain, source, defines):
    cxx, trt, cuda = toolchain
    # TensorRT's headers as system headers: their own deprecation warnings are not ours; ours fail the build.
    cmd = [cxx, "-std=c++17", "-fsyntax-only", "-Wall", "-Wextra", "-Werror", *defines, "-isystem", str(trt),
           "-isystem", str(cuda), f"-I{PLUGIN_DIR}", str(PLUGIN_DIR / source)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def kernels_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("kernels")
    aot.write_kernels(aot.compile_all((80, 86)), out)
    return out


def test_plugin_behaves_as_tensorrt_drives_it(toolchain, kernels_dir, tmp_path):
    cxx, trt, cuda = toolchain
    exe = tmp_path / "plugin_harness"
    cmd = [cxx, "-std=c++17", "-O0", "-Wall", "-Wextra", "-Werror", "-isystem", str(trt), "-isystem", str(cuda),
           f"-I{PLUGIN_DIR}", f"-I{HARNESS.parent}", f"-I{kernels_dir}", str(HARNESS), "-o", str(exe)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    spec = MATCHING_SCORE
    run = subprocess.run([str(exe), spec.op_type, spec.plugin_version, spec.plugin_namespace], capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.strip().endswith("0 failed checks")


# Every driver function the plugin library imports, all in CUDA drivers since 9.0 (cuFuncSetAttribute is the
# newest). cuCtxGetId (CUDA 12.0) was imported until the process-wide cache keyed on it went (issue 12, defect 5):
# on an older driver the dynamic linker aborted the process at its first call. A new import belongs here only if
# the oldest driver TensorRT supports has it.
DRIVER_IMPORTS = {"cuCtxGetCurrent", "cuCtxGetDevice", "cuCtxPopCurrent_v2", "cuCtxPushCurrent_v2",
                  "cuDeviceGetAttribute", "cuFuncSetAttribute", "cuGetErrorName", "cuLaunchKernel",
                  "cuModuleGetFunction", "cuModuleLoadData", "cuModuleLoadDataEx", "cuModuleUnload"}


def test_plugin_library_imports_no_driver_function_newer_than_cuda_9(toolchain, kernels_dir, tmp_path):
    cxx, trt, cuda = toolchain
    if shutil.which("nm") is None:
        pytest.skip("needs nm (binutils)")
    library = tmp_path / "libonerank_plugins_dynamic.so"
    sources = [str(PLUGIN_DIR / f) for f in ("matchingScorePlugin.cpp", "matchingScorePluginCreator.cpp",
                                             "matchingScoreKernel.cpp", "pluginRegistration.cpp")]
    cmd = [cxx, "-std=c++17", "-O1", "-shared", "-fPIC", "-fvisibility=hidden", "-DONERANK_STATIC_REGISTRATION=0",
           "-isystem", str(trt), "-isystem", str(cuda), f"-I{PLUGIN_DIR}", f"-I{kernels_dir}", *sources,
           "-o", str(library)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    undefined = subprocess.run(["nm", "-D", "--undefined-only", str(library)], capture_output=True, text=True,
                               check=True).stdout.split()
    assert {name for name in undefined if name.startswith("cu")} == DRIVER_IMPORTS
    # The harness's fake driver has no cuCtxGetId either: the plugin links and runs without it.
    assert "cuCtxGetId(" not in (HARNESS.parent / "fake_cuda_driver.h").read_text()
