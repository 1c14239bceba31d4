"""build_plugin_library refuses TensorRT headers of another major.minor than the Python `tensorrt`, before building.

Fake include trees carry NvInferVersion.h in each layout NVIDIA has shipped (the #define lines as in
NVIDIA/TensorRT include/NvInferVersion.h at v10.8.0 and at v11.1, where NV_TENSORRT_* name TRT_*_ENTERPRISE
macros); a fake `tensorrt` module in sys.modules plays the Python bindings.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from onerank_export.engine.plugin import build as plugin_build
from onerank_export.errors import StageError

LAYOUT_10_8 = """\
#ifndef NV_INFER_VERSION_H
#define NV_INFER_VERSION_H

#define NV_TENSORRT_MAJOR {major} //!< TensorRT major version.
#define NV_TENSORRT_MINOR {minor}  //!< TensorRT minor version.
#define NV_TENSORRT_PATCH {patch}  //!< TensorRT patch version.
#define NV_TENSORRT_BUILD 43  //!< TensorRT build number.

#define NV_TENSORRT_LWS_MAJOR 0 //!< TensorRT LWS major version.
#define NV_TENSORRT_RELEASE_TYPE_GENERAL_AVAILABILITY 2 //!< A final release
#define NV_TENSORRT_RELEASE_TYPE NV_TENSORRT_RELEASE_TYPE_GENERAL_AVAILABILITY //!< TensorRT release type
#endif // NV_INFER_VERSION_H
"""

LAYOUT_11_1 = """\
#ifndef NV_INFER_VERSION_H
#define NV_INFER_VERSION_H

#define TRT_MAJOR_ENTERPRISE {major}
#define TRT_MINOR_ENTERPRISE {minor}
#define TRT_PATCH_ENTERPRISE {patch}
#define TRT_BUILD_ENTERPRISE 106
#define NV_TENSORRT_MAJOR TRT_MAJOR_ENTERPRISE //!< TensorRT major version.
#define NV_TENSORRT_MINOR TRT_MINOR_ENTERPRISE //!< TensorRT minor version.
#define NV_TENSORRT_PATCH TRT_PATCH_ENTERPRISE //!< TensorRT patch version.
#define NV_TENSORRT_BUILD TRT_BUILD_ENTERPRISE //!< TensorRT build number.
#endif // NV_INFER_VERSION_H
"""

LAYOUTS = {"10.8-layout": LAYOUT_10_8, "11.1-layout": LAYOUT_11_1}


def trt_root(tmp_path: Path, version: str, layout: str = "11.1-layout", *, include: str = "include",
             lib: str = "lib", soname_major: int | None = None) -> Path:
    major, minor, patch = (int(x) for x in version.split("."))
    root = tmp_path / f"trt-{version}-{layout}"
    (root / include).mkdir(parents=True)
    (root / lib).mkdir(parents=True)
    (root / include / "NvInfer.h").write_text("")
    (root / include / "NvInferVersion.h").write_text(LAYOUTS[layout].format(major=major, minor=minor, patch=patch))
    so = soname_major if soname_major is not None else major
    (root / lib / f"libnvinfer.so.{so}.{minor}.{patch}").write_bytes(b"")
    (root / lib / f"libnvinfer.so.{so}").symlink_to(f"libnvinfer.so.{so}.{minor}.{patch}")
    return root


@pytest.fixture
def python_tensorrt(monkeypatch):
    """Install a fake `tensorrt` with the given __version__ (None: not importable)."""
    def install(version: str | None) -> None:
        if version is None:
            monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError
            return
        module = ModuleType("tensorrt")
        module.__version__ = version
        monkeypatch.setitem(sys.modules, "tensorrt", module)
    return install


@pytest.fixture
def toolchain_present(monkeypatch):
    """cmake, a compiler, CUDA headers and triton assumed present; running CMake fails the test."""
    monkeypatch.setattr(plugin_build, "_require_cmake", lambda: "cmake")
    monkeypatch.setattr(plugin_build, "_require_build_inputs", lambda: None)
    monkeypatch.setattr(plugin_build.subprocess, "run", lambda *a, **k: pytest.fail("CMake ran despite the mismatch"))


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("version", ["10.8.0", "10.13.3", "11.1.0"])
def test_header_version_reads_both_layouts(tmp_path, layout, version):
    root = trt_root(tmp_path, version, layout)
    assert plugin_build.header_version(root / "include") == tuple(int(x) for x in version.split("."))


def preprocessor_version(include_dir: Path) -> tuple[int, ...]:
    """What the C preprocessor makes of NV_TENSORRT_MAJOR/MINOR/PATCH: the oracle for the Python reader."""
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("needs a C++ compiler to preprocess NvInferVersion.h")
    snippet = "#include <NvInferVersion.h>\nNV_TENSORRT_MAJOR NV_TENSORRT_MINOR NV_TENSORRT_PATCH\n"
    proc = subprocess.run([cxx, "-E", "-P", "-x", "c++", f"-I{include_dir}", "-"], input=snippet,
                          capture_output=True, text=True, check=True)
    return tuple(int(x) for x in proc.stdout.split()[-3:])


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_the_reader_agrees_with_the_preprocessor(tmp_path, layout):
    root = trt_root(tmp_path, "11.1.0" if layout == "11.1-layout" else "10.8.0", layout)
    assert plugin_build.header_version(root / "include") == preprocessor_version(root / "include")


def test_the_reader_agrees_with_the_preprocessor_on_real_headers():
    """TensorRT's own headers, where available (as for tests/engine/plugin/test_plugin_compile.py)."""
    include = os.environ.get("TENSORRT_INCLUDE_DIR")
    if not include or not (Path(include) / "NvInferVersion.h").exists():
        pytest.skip("set TENSORRT_INCLUDE_DIR to a TensorRT include/ to read its NvInferVersion.h")
    assert plugin_build.header_version(Path(include)) == preprocessor_version(Path(include))


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize(("headers", "python"), [("11.1.0", "10.8.0.43"), ("10.8.0", "10.9.0.34"),
                                                 ("10.8.0", "11.1.0.106")])
def test_a_mismatch_is_one_line_naming_both_before_anything_is_built(tmp_path, layout, headers, python,
                                                                     python_tensorrt, toolchain_present):
    root = trt_root(tmp_path, headers, layout)
    python_tensorrt(python)
    out = tmp_path / "out"
    with pytest.raises(StageError) as info:
        plugin_build.build_plugin_library(out, tensorrt_root=root)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"TensorRT headers {headers} at {root / 'include'} do not match the Python "
                              f"tensorrt {python}")
    assert "major.minor must agree" in message
    assert f"point TensorRT_ROOT at the TensorRT {python} install" in message
    assert f"pip install 'tensorrt=={headers.rsplit('.', 1)[0]}.*'" in message
    assert not out.exists()


def test_a_patch_difference_is_said_and_the_build_goes_on(tmp_path, python_tensorrt, monkeypatch):
    root = trt_root(tmp_path, "10.13.0", "11.1-layout")
    python_tensorrt("10.13.3.9")
    said: list[str] = []
    assert plugin_build.require_matching_tensorrt(root, said.append) == (10, 13, 0)
    assert said == ["TensorRT headers 10.13.0, Python tensorrt 10.13.3.9: patch releases differ only in "
                    "NvInferVersion.h; building"]


def test_matching_versions_reach_cmake(tmp_path, python_tensorrt, monkeypatch):
    root = trt_root(tmp_path, "10.8.0", "10.8-layout")
    python_tensorrt("10.8.0.43")
    monkeypatch.setattr(plugin_build, "_require_cmake", lambda: "cmake")
    monkeypatch.setattr(plugin_build, "_require_build_inputs", lambda: None)

    class ReachedCMake(Exception):
        pass

    def fake_run(cmd, *args, **kwargs):
        raise ReachedCMake(cmd)

    monkeypatch.setattr(plugin_build.subprocess, "run", fake_run)
    with pytest.raises(ReachedCMake) as info:
        plugin_build.build_plugin_library(tmp_path / "out", tensorrt_root=root)
    assert f"-DTensorRT_ROOT={root}" in info.value.args[0]


def test_no_python_tensorrt_is_said_not_refused(tmp_path, python_tensorrt):
    root = trt_root(tmp_path, "11.1.0")
    python_tensorrt(None)
    said: list[str] = []
    assert plugin_build.require_matching_tensorrt(root, said.append) == (11, 1, 0)
    assert said == ["TensorRT headers 11.1.0; Python tensorrt not importable, so not compared "
                    "(the engine builder needs it)"]


def test_debian_layout_headers_are_read_where_nvinfer_h_is(tmp_path, python_tensorrt, toolchain_present):
    root = trt_root(tmp_path, "10.8.0", "10.8-layout", include="include/x86_64-linux-gnu",
                    lib="lib/x86_64-linux-gnu")
    python_tensorrt("11.1.0.106")
    with pytest.raises(StageError, match=r"^TensorRT headers 10\.8\.0 at .*/include/x86_64-linux-gnu do not match"):
        plugin_build.build_plugin_library(tmp_path / "out", tensorrt_root=root)


def test_headers_of_another_major_than_the_library_beside_them(tmp_path, python_tensorrt, toolchain_present):
    root = trt_root(tmp_path, "11.1.0", soname_major=10)
    python_tensorrt("11.1.0.106")
    with pytest.raises(StageError) as info:
        plugin_build.build_plugin_library(tmp_path / "out", tensorrt_root=root)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("TensorRT headers 11.1.0 (") and "libnvinfer.so.10 in" in message
    assert not (tmp_path / "out").exists()


def test_missing_version_header_is_one_line(tmp_path, python_tensorrt, toolchain_present):
    root = trt_root(tmp_path, "10.8.0")
    (root / "include" / "NvInferVersion.h").unlink()
    python_tensorrt("10.8.0.43")
    with pytest.raises(StageError, match=r"NvInferVersion\.h not found beside NvInfer\.h: point TensorRT_ROOT"):
        plugin_build.build_plugin_library(tmp_path / "out", tensorrt_root=root)


@pytest.mark.parametrize("text", ["", "#define NV_TENSORRT_MAJOR TRT_MAJOR_ENTERPRISE\n",
                                  "#define NV_TENSORRT_MAJOR A\n#define A B\n#define B A\n"])
def test_an_unreadable_version_header_is_one_line(tmp_path, text):
    include = tmp_path / "include"
    include.mkdir()
    (include / "NvInferVersion.h").write_text(text)
    with pytest.raises(StageError, match=r"does not define NV_TENSORRT_MAJOR/MINOR/PATCH as numbers"):
        plugin_build.header_version(include)
