"""build_plugin_library: what is missing is one line naming it and the fix, checked before CMake runs; and the
CMakeLists names only package files that exist."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
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


# ----- the paths plugins/matching_score/CMakeLists.txt names ---------------------------------------------------
# CMake does not check a custom command's DEPENDS at configure time: a file that moved (engine/kernel.py ->
# engine/kernel/matching_score.py) is make's "No rule to make target" on a GPU host, long after CI went green.
# So every path and module the CMakeLists names under the package source is checked here, on any machine.

CMAKE_LISTS = plugin_build.PLUGIN_SOURCE_DIR / "CMakeLists.txt"
REPO_ROOT = plugin_build.PLUGIN_SOURCE_DIR.parents[1]
_COMMAND = re.compile(r"(\w+)\s*\(")
_ARGUMENT = re.compile(r'"((?:[^"\\]|\\.)*)"|([^\s()"]+)')
_VARIABLE = re.compile(r"\$\{(\w+)\}")
_CUSTOM_KEYWORDS = {"OUTPUT", "COMMAND", "DEPENDS", "COMMENT", "VERBATIM", "WORKING_DIRECTORY", "BYPRODUCTS",
                    "MAIN_DEPENDENCY", "IMPLICIT_DEPENDS", "DEPFILE", "USES_TERMINAL", "SOURCES", "ALL",
                    "JOB_POOL", "COMMAND_EXPAND_LISTS", "APPEND"}
_MODULE = re.compile(r"-m\s+\"?(onerank_export(?:\.\w+)+)")  # python -m onerank_export.x.y, in code or comments
_REPO_RELATIVE = re.compile(r"(?<![\w/}])(src/onerank_export/[\w/.]+\.py)")  # mentioned in a comment or message


def _strip_comments(text: str) -> str:
    out, quoted, i = [], False, 0
    while i < len(text):
        c = text[i]
        if c == "\\" and quoted:
            out.append(text[i:i + 2])
            i += 2
            continue
        if c == '"':
            quoted = not quoted
        elif c == "#" and not quoted:
            i = text.find("\n", i)
            i = len(text) if i < 0 else i
            continue
        out.append(c)
        i += 1
    return "".join(out)


def cmake_commands(text: str) -> list[tuple[str, list[str]]]:
    """(command, arguments) in file order; enough CMake for this file (no bracket arguments)."""
    code, commands, pos = _strip_comments(text), [], 0
    while match := _COMMAND.search(code, pos):
        depth, i, quoted = 1, match.end(), False
        while depth:
            c = code[i]
            if c == "\\" and quoted:
                i += 2
                continue
            if c == '"':
                quoted = not quoted
            elif not quoted:
                depth += {"(": 1, ")": -1}.get(c, 0)
            i += 1
        body = code[match.end():i - 1]
        args = [m.group(1) if m.group(1) is not None else m.group(2) for m in _ARGUMENT.finditer(body)]
        commands.append((match.group(1).lower(), args))
        pos = i
    return commands


def _expand(raw: str, variables: dict[str, str]) -> str:
    """One pass, as CMake does: a value was expanded when it was set; a variable never set stays ${NAME}."""
    return _VARIABLE.sub(lambda m: variables.get(m.group(1), m.group(0)), raw)


def _sections(args: list[str]) -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {}
    current = "NAME"
    for arg in args:
        if arg in _CUSTOM_KEYWORDS:
            current = arg
            sections.setdefault(current, [])
        else:
            sections.setdefault(current, []).append(arg)
    return sections


def cmake_source_problems(text: str, source_dir: Path) -> tuple[list[Path], list[str]]:
    """(the package files checked, one line per path or module the CMakeLists names that does not exist).

    Checked: every file in a DEPENDS list that is not another command's OUTPUT, every argument that resolves
    under src/onerank_export/, every `-m onerank_export.<module>` and every src/onerank_export/...py
    mentioned in a comment. Variables resolve in file order from `set()`; one that is never set is a problem.
    """
    repo_root = source_dir.resolve().parents[1]
    package = repo_root / "src" / "onerank_export"
    variables = {"CMAKE_CURRENT_SOURCE_DIR": str(source_dir), "CMAKE_CURRENT_LIST_DIR": str(source_dir)}
    commands = cmake_commands(text)
    outputs = {raw for name, args in commands if name == "add_custom_command"
               for raw in _sections(args).get("OUTPUT", [])}
    checked: list[Path] = []
    problems: list[str] = []

    def check(raw: str, where: str, must_resolve: bool) -> None:
        value = _expand(raw, variables)
        if unset := _VARIABLE.search(value):
            if must_resolve:
                problems.append(f"{where}: {raw}: variable {unset.group(1)} is never set")
            return
        path = Path(value).resolve()
        if must_resolve or package in path.parents:
            checked.append(path)
            if not path.exists():
                problems.append(f"{where}: {raw} -> {path} does not exist")

    for name, args in commands:
        if name == "set" and len(args) >= 2:
            variables[args[0]] = _expand(args[1], variables)
            check(args[1], f"set({args[0]})", must_resolve=False)  # a directory variable that went stale
            continue
        depends = _sections(args).get("DEPENDS", []) if name in ("add_custom_command", "add_custom_target") else []
        for raw in args:
            # A DEPENDS entry with a slash is a file (without one, a target); an OUTPUT is built, not a source.
            in_depends = raw in depends and "/" in raw and raw not in outputs
            check(raw, f"{name}() DEPENDS" if in_depends else f"{name}()", must_resolve=in_depends)
    for module in _MODULE.findall(text):
        base = repo_root / "src" / Path(*module.split("."))
        checked.append(base.with_suffix(".py"))
        if not base.with_suffix(".py").is_file() and not (base / "__init__.py").is_file():
            problems.append(f"python -m {module}: no such module under {repo_root / 'src'}")
    for relative in _REPO_RELATIVE.findall(text):
        checked.append(repo_root / relative)
        if not (repo_root / relative).is_file():
            problems.append(f"{relative} (named in a comment or message) does not exist")
    return checked, problems


def test_cmakelists_names_only_package_files_that_exist():
    checked, problems = cmake_source_problems(CMAKE_LISTS.read_text(), plugin_build.PLUGIN_SOURCE_DIR)
    assert problems == []
    kernel = REPO_ROOT / "src" / "onerank_export" / "engine" / "kernel"
    # The parse found the kernel-generation DEPENDS (an empty parse would pass the line above vacuously).
    assert {kernel / f for f in ("matching_score.py", "aot.py", "header.py", "image.py")} <= set(checked)
    assert kernel in checked  # set(kernel_src_dir ...) itself


STALE_CMAKELISTS = """
# The kernel in src/onerank_export/engine/kernel.py, compiled by python -m onerank_export.engine.aot.
set(ONERANK_REPO_ROOT "${CMAKE_CURRENT_SOURCE_DIR}/../.." CACHE PATH "checkout")
set(engine_dir "${ONERANK_REPO_ROOT}/src/onerank_export/engine")
set(kernel_dir "${CMAKE_CURRENT_BINARY_DIR}/kernels")
add_custom_command(
  OUTPUT "${kernel_dir}/matchingScoreKernels.h"
  COMMAND python -m onerank_export.engine.kernel.aot --out "${kernel_dir}"  # this module exists
  DEPENDS "${engine_dir}/kernel.py" "${engine_dir}/kernel/aot.py" "${kernel_src}/header.py"
  VERBATIM)
add_custom_target(onerank_kernel_images DEPENDS "${kernel_dir}/matchingScoreKernels.h")
"""


def test_a_cmakelists_naming_moved_files_is_reported():
    checked, problems = cmake_source_problems(STALE_CMAKELISTS, plugin_build.PLUGIN_SOURCE_DIR)
    assert len(problems) == 4, problems
    # engine_dir itself still exists (it holds the packages now); the file under it does not.
    assert any("DEPENDS: ${engine_dir}/kernel.py" in p and "does not exist" in p for p in problems)
    assert any("${kernel_src}/header.py: variable kernel_src is never set" in p for p in problems)
    assert any(p.startswith("python -m onerank_export.engine.aot: no such module") for p in problems)
    assert any(p.startswith("src/onerank_export/engine/kernel.py (named in a comment") for p in problems)
    # engine/kernel/aot.py exists; the OUTPUT named by the custom target is built, not looked for.
    assert REPO_ROOT / "src" / "onerank_export" / "engine" / "kernel" / "aot.py" in checked


def _configure_and_dry_run(source_dir: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    """Configure against a header-only stand-in for TensorRT (dynamic flavour only, so nothing links) and ask
    make what it would do for the kernel images: a missing DEPENDS fails there, without compiling anything."""
    trt = tmp_path / "trt"
    (trt / "include").mkdir(parents=True)
    (trt / "include" / "NvInfer.h").write_text("")
    (tmp_path / "libcuda.so").write_bytes(b"")  # configure only needs a path; nothing is linked
    build = tmp_path / "build"
    configure = subprocess.run(
        ["cmake", "-G", "Unix Makefiles", "-S", str(source_dir), "-B", str(build), f"-DTensorRT_ROOT={trt}",
         "-DONERANK_DYNAMIC_ONLY=ON", f"-DCUDA_cuda_driver_LIBRARY={tmp_path / 'libcuda.so'}",
         f"-DONERANK_REPO_ROOT={REPO_ROOT}", f"-DPython3_EXECUTABLE={sys.executable}"],
        capture_output=True, text=True, timeout=300)
    assert configure.returncode == 0, configure.stdout[-2000:] + configure.stderr[-2000:]
    return subprocess.run(["make", "-n", "-C", str(build), "onerank_kernel_images"], capture_output=True, text=True,
                          timeout=300)


@pytest.mark.skipif(not (shutil.which("cmake") and shutil.which("make") and plugin_build._has_cuda_headers()
                         and (shutil.which("c++") or shutil.which("g++"))),
                    reason="needs cmake, make, a C++ compiler and the CUDA toolkit headers")
@pytest.mark.parametrize("stale", [False, True], ids=["current", "stale-depends"])
def test_make_finds_every_kernel_dependency(stale, tmp_path):
    source = plugin_build.PLUGIN_SOURCE_DIR
    if stale:  # the negative control: a copy whose DEPENDS still names the pre-split header module
        source = tmp_path / "plugin"
        shutil.copytree(plugin_build.PLUGIN_SOURCE_DIR, source)
        text = CMAKE_LISTS.read_text()
        assert '"${kernel_src_dir}/header.py"' in text
        (source / "CMakeLists.txt").write_text(text.replace('"${kernel_src_dir}/header.py"',
                                                            '"${kernel_src_dir}/../kernel_header.py"'))
    dry_run = _configure_and_dry_run(source, tmp_path)
    if stale:
        assert dry_run.returncode != 0 and "No rule to make target" in dry_run.stderr
        assert "kernel_header.py" in dry_run.stderr
    else:
        assert dry_run.returncode == 0, dry_run.stderr[-2000:]
        assert "-m onerank_export.engine.kernel.aot" in dry_run.stdout
