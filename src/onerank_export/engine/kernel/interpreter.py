"""Run the MatchingScore kernel source on the CPU with Triton's interpreter, from any process.

TRITON_INTERPRET must be set before triton is first imported (the @triton.jit decorator and the
triton.language standard library decide at import time), which a test session or a tool that
already imported triton cannot undo. `run_interpreted` therefore runs a batch of cases in one
fresh interpreter process (`python -m onerank_export.engine.kernel.interpreter IN OUT`) and
returns the scores; one process start for many shapes keeps it cheap.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onerank_export.errors import StageError


@dataclass(frozen=True)
class KernelCase:
    z: np.ndarray  # [B, K, D] float32 | float16
    r: np.ndarray  # [B, N, K, D] same dtype
    valid: np.ndarray  # [B, N] int32 (nonzero = valid) or bool
    scale: float
    config: str | None = None  # a LaunchConfig name; None = what the plugin would choose


def run_interpreted(cases: list[KernelCase], *, timeout: float = 300.0) -> list[np.ndarray]:
    """Scores [B, N, K] float32 per case, computed by the kernel source under TRITON_INTERPRET=1."""
    with tempfile.TemporaryDirectory(prefix="onerank-kernel-") as tmp:
        inputs, outputs = Path(tmp) / "cases.npz", Path(tmp) / "scores.npz"
        arrays: dict[str, np.ndarray] = {}
        for i, case in enumerate(cases):
            arrays[f"{i}.z"], arrays[f"{i}.r"], arrays[f"{i}.valid"] = case.z, case.r, case.valid
            arrays[f"{i}.scale"] = np.asarray(case.scale, dtype=np.float64)
            arrays[f"{i}.config"] = np.asarray(case.config or "")
        np.savez(inputs, **arrays)
        env = {**os.environ, "TRITON_INTERPRET": "1"}
        proc = subprocess.run([sys.executable, "-m", __name__, str(inputs), str(outputs)], env=env,
                              capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise StageError(f"interpreted MatchingScore kernel failed: {tail}")
        with np.load(outputs) as scores:
            return [scores[str(i)] for i in range(len(cases))]


def _main(inputs: Path, outputs: Path) -> None:
    import torch

    from onerank_export.engine.kernel import matching_score as kernel

    if not kernel.interpreter_active():
        raise SystemExit("engine.kernel.interpreter: TRITON_INTERPRET=1 was not in effect when triton was imported")
    configs = {c.name: c for c in kernel.LAUNCH_CONFIGS}
    results = {}
    with np.load(inputs) as data:
        count = len({key.split(".")[0] for key in data.files})
        for i in range(count):
            name = str(data[f"{i}.config"])
            out = kernel.matching_score(
                torch.from_numpy(data[f"{i}.z"]), torch.from_numpy(data[f"{i}.r"]),
                torch.from_numpy(data[f"{i}.valid"]), float(data[f"{i}.scale"]),
                config=configs[name] if name else None,
            )
            results[str(i)] = out.numpy()
    np.savez(outputs, **results)


if __name__ == "__main__":
    _main(Path(sys.argv[1]), Path(sys.argv[2]))
