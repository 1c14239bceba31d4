"""Project rules that a reviewer would otherwise check by hand."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PY_FILES = [p for p in ROOT.rglob("*.py") if not any(part.startswith(".") for part in p.relative_to(ROOT).parts)]


def test_ruff_is_clean():
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.fail("ruff is not installed; it is part of the [test] extra")
    proc = subprocess.run([ruff, "check", str(ROOT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_no_pickle_and_no_unsafe_torch_load():
    for path in PY_FILES:
        if path.name == Path(__file__).name:
            continue
        text = path.read_text()
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, f"{path}: {call}"
        assert not re.search(r"\bpickle\.loads?\(", text), path


def test_readme_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    blocks = re.findall(r"```(?:bash|sh)\n(.*?)```", readme, flags=re.S)
    commands = [line.strip() for b in blocks[:2] for line in b.splitlines() if line.strip()]
    assert len(commands) == 2, commands
    assert "pip install" in commands[0] and "onerank-export build" in commands[0]
    assert commands[1] in ci, (commands[1], ci)


def test_default_install_has_no_gpu_only_dependency():
    text = (ROOT / "pyproject.toml").read_text()
    deps = text.split("dependencies = [", 1)[1].split("]", 1)[0]
    assert '"torch==2.13.0"' in deps
    for gpu_only in ("tensorrt", "onnxruntime-gpu", "cuda-python", "cupy"):
        assert gpu_only not in deps, gpu_only
    assert sys.version_info >= (3, 10)
