"""build_plugin_library: what is missing is one line naming it and the fix, checked before CMake runs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from onerank_export.engine.plugin import build as plugin_build
from onerank_export.errors import StageError


def build_error(tmp_path: Path, **kwargs) -> str:
    with pytest.raises(StageError) as info:
        plugin_build.build_plugin_library(tmp_path / "out", **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.fixture
def no_tensorrt_env(monkeypatch):
    """No TensorRT anywhere; cmake assumed present so the TensorRT checks run on any machine."""
    for var in ("TensorRT_ROOT", "TENSORRT_ROOT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(plugin_build, "SYSTEM_PREFIXES", ())
    monkeypatch.setattr(plugin_build, "_require_cmake", lambda: "cmake")


def test_empty_tensorrt_root_names_the_variable_and_the_header(tmp_path, no_tensorrt_env):
    empty = tmp_path / "trt"
    empty.mkdir()
    message = build_error(tmp_path, tensorrt_root=empty)
    assert f"TensorRT_ROOT={empty}" in message and "include/NvInfer.h" in message


def test_tensorrt_root_from_the_environment(tmp_path, no_tensorrt_env, monkeypatch):
    monkeypatch.setenv("TensorRT_ROOT", str(tmp_path / "missing"))
    message = build_error(tmp_path)
    assert f"TensorRT_ROOT={tmp_path / 'missing'} is not a directory" in message


def test_headers_without_libraries_name_libnvinfer(tmp_path, no_tensorrt_env):
    root = tmp_path / "trt"
    (root / "include").mkdir(parents=True)
    (root / "include" / "NvInfer.h").write_text("// header only\n")
    message = build_error(tmp_path, tensorrt_root=root)
    assert "libnvinfer" in message and "TensorRT_ROOT" in message


def test_no_tensorrt_anywhere_says_set_tensorrt_root(tmp_path, no_tensorrt_env):
    message = build_error(tmp_path)
    assert message.startswith("TensorRT headers not found: set TensorRT_ROOT")


def test_missing_cmake_is_named_before_anything_else(tmp_path, monkeypatch):
    real_which = shutil.which
    monkeypatch.setattr(plugin_build.shutil, "which", lambda name: None if name == "cmake" else real_which(name))
    assert build_error(tmp_path).startswith("cmake not found: install CMake")


def test_missing_cuda_headers_are_named(tmp_path, no_tensorrt_env, monkeypatch):
    monkeypatch.setattr(plugin_build.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(plugin_build, "_has_cuda_headers", lambda: False)
    message = build_error(tmp_path, tensorrt_root=full_root(tmp_path))
    assert message.startswith("CUDA toolkit not found") and "CUDAToolkit_ROOT" in message


def test_missing_triton_is_named(tmp_path, no_tensorrt_env, monkeypatch):
    root = full_root(tmp_path)
    monkeypatch.setattr(plugin_build.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(plugin_build, "_has_cuda_headers", lambda: True)
    monkeypatch.setattr(plugin_build.importlib.util, "find_spec", lambda name: None)
    assert build_error(tmp_path, tensorrt_root=root).startswith("triton is not installed")


def full_root(tmp_path: Path) -> Path:
    root = tmp_path / "trt"
    (root / "include").mkdir(parents=True)
    (root / "lib").mkdir()
    (root / "include" / "NvInfer.h").write_text("")
    (root / "lib" / "libnvinfer.so.10").write_bytes(b"")  # pip wheels and tarballs name it with the major
    return root


def test_a_full_root_is_accepted(tmp_path, no_tensorrt_env):
    root = full_root(tmp_path)
    assert plugin_build.resolve_tensorrt_root(root) == root
