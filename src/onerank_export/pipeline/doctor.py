"""`doctor`: is this host ready to build, load and serve the TensorRT path? One command for a new GPU host and CI.

Checks run in order, each timed, each a Verdict (passed / failed / skipped with the reason, never "ok" for what did
not run): host, driver, gpu, tensorrt, onnxruntime, tritonserver, plugin, engines, engine parity, gpu tests,
trtexec. A check that needs what an earlier one lacked is skipped naming it, so a CPU host runs the first few
and skips the rest without building or training anything. Exit code 1 only when a check that ran failed.

Within 10 minutes on one GPU: only the demo model (d=64, 2 layers) is built; its checkpoint is trained once and
cached (~/.cache/onerank-export, ~2 min on 2 CPU cores, and only when the engine check runs); the plugin is built
once and handed to the build, so CMake and the AOT kernel compile run once; `pytest -m gpu` and trtexec have
their own timeouts (doctor_probes.py).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onerank_export import __version__
from onerank_export.errors import OneRankError
from onerank_export.io import write_json
from onerank_export.pipeline.doctor_probes import (
    PYTEST_TIMEOUT_S,
    TRTEXEC_TIMEOUT_S,
    DoctorProbes,
    EngineRun,
    gpu_test_command,
)
from onerank_export.pipeline.result import Status
from onerank_export.precision import Precision
from onerank_export.verdict import Outcome, Verdict, counts

PRECISIONS = tuple(p.value for p in Precision)  # every engine the demo build makes
GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


@dataclass
class Check:
    verdict: Verdict
    seconds: float = 0.0
    data: dict[str, Any] = field(default_factory=dict)  # what was found (versions, paths), for the JSON report

    @property
    def line(self) -> str:
        """Summary wording: 'ok: ...', 'failed: <why>', 'skipped: <reason>'."""
        v = self.verdict
        if v.passed:
            return f"ok: {v.detail}" if v.detail else "ok"
        return f"{v.outcome}: {v.detail}"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.verdict.name, "status": "ok" if self.verdict.passed else str(self.verdict.outcome),
                "detail": self.verdict.detail, "seconds": round(self.seconds, 3), **self.data}


@dataclass
class DoctorReport:
    checks: list[Check]

    @property
    def passed(self) -> bool:
        return not any(c.verdict.failed for c in self.checks)

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1

    def get(self, name: str) -> Check:
        return next(c for c in self.checks if c.verdict.name == name)

    def to_dict(self) -> dict[str, Any]:
        return {"tool": "onerank-export doctor", "version": __version__, "passed": self.passed,
                "counts": counts([c.verdict for c in self.checks]), "checks": [c.to_dict() for c in self.checks]}

    def summary(self) -> list[str]:
        width = max(len(c.verdict.name) for c in self.checks)
        return [f"{c.verdict.name:<{width}}  {c.line}  ({c.seconds:.1f} s)" for c in self.checks]

    def write(self, path: Path) -> Path:
        return write_json(path, self.to_dict())


class _Doctor:
    """The checks in order; each reads what earlier ones found from `self`."""

    def __init__(self, probes: DoctorProbes, work: Path) -> None:
        self.p, self.work = probes, work
        self.checks: list[Check] = []
        self.plugin: Path | None = None
        self.engine_run: EngineRun | None = None

    def run(self) -> list[Check]:
        steps = [("host", self.host), ("driver", self.driver), ("gpu", self.gpu), ("tensorrt", self.tensorrt),
                 ("onnxruntime", self.onnxruntime), ("tritonserver", self.tritonserver), ("plugin", self.plugin_build),
                 ("engines", self.engines), ("engine parity", self.engine_parity), ("gpu tests", self.gpu_tests),
                 ("trtexec", self.trtexec)]
        for name, step in steps:
            started = time.perf_counter()
            data: dict[str, Any] = {}
            try:
                verdict = step(name, data)
            except OneRankError as exc:  # a probe's one-line error is the check's reason
                verdict = Verdict.check(name, False, str(exc))
            self.checks.append(Check(verdict, time.perf_counter() - started, data))
        return self.checks

    def _status(self, name: str) -> Verdict:
        return next(c.verdict for c in self.checks if c.verdict.name == name)

    def _needs(self, name: str, *required: str) -> Verdict | None:
        """A skip naming the first earlier check that did not pass and its reason (the root one: a skip that is
        itself `needs ...` is passed on as it is), or None when all passed."""
        for req in required:
            v = self._status(req)
            if not v.passed:
                root = v.outcome is Outcome.SKIPPED and v.detail.startswith("needs ")
                return Verdict.skipped(name, v.detail if root else f"needs {req}: {v.detail}")
        return None

    # ----- what the host has ------------------------------------------------------------------------------------

    def host(self, name: str, data: dict) -> Verdict:
        info = self.p.host()
        data.update(info)
        return Verdict.check(name, True, f"Python {info['python']}, {info['platform']}, {info['cpu']} "
                                         f"({info['cores']} cores)")

    def driver(self, name: str, data: dict) -> Verdict:
        version = self.p.driver_version()
        if version is None:
            return Verdict.skipped(name, "no NVIDIA driver (libcuda.so.1 not found)")
        shown = f"{version // 1000}.{version % 1000 // 10}"
        data["cuda_driver_version"] = shown
        return Verdict.check(name, True, f"NVIDIA driver supports CUDA {shown}")

    def gpu(self, name: str, data: dict) -> Verdict:
        from onerank_export.engine.kernel.image import ARCHS
        from onerank_export.pipeline.stages.engine import check_device

        if (skip := self._needs(name, "driver")) is not None:
            return skip
        if not self.p.device_present():
            return Verdict.skipped(name, "the NVIDIA driver sees no CUDA device")
        gpu_name, capability = self.p.device()
        data.update(name=gpu_name, compute_capability=capability, plugin_images=[f"sm_{a}" for a in ARCHS])
        check_device(gpu_name, capability)  # the engine stage's own refusal, one line, for a GPU with no image
        sm = int(capability.replace(".", ""))
        image = f"sm_{sm} image" if sm in ARCHS else f"no exact sm_{sm} image (has {', '.join(map(str, ARCHS))})"
        data["exact_image"] = sm in ARCHS
        return Verdict.check(name, True, f"{gpu_name}, compute capability {capability}, plugin {image}")

    def tensorrt(self, name: str, data: dict) -> Verdict:
        python = self.p.tensorrt_python()
        data["python"] = python
        try:
            root, headers = self.p.tensorrt_headers()
        except OneRankError as exc:
            why = str(exc)
        else:
            data.update(root=str(root), headers=headers)
            if python is None:
                why = f"headers {headers} at {root} (pip install 'tensorrt=={headers}')"
            else:
                return Verdict.check(name, True, f"Python tensorrt {python}, headers {headers} at {root}")
        why = f"Python tensorrt {python}; {why}" if python is not None else f"Python tensorrt not importable; {why}"
        # Missing TensorRT is a failure only where a GPU could use it; elsewhere it is the expected state.
        if self._status("gpu").passed:
            return Verdict.check(name, False, why)
        return Verdict.skipped(name, why)

    def onnxruntime(self, name: str, data: dict) -> Verdict:
        try:
            version, providers = self.p.onnxruntime()
        except ImportError as exc:
            return Verdict.check(name, False, f"onnxruntime does not import: {exc}")
        data.update(version=version, providers=providers)
        shown = f"onnxruntime {version}: {', '.join(providers)}"
        missing = [p for p in GPU_PROVIDERS if p not in providers]
        if not self._status("gpu").passed or not missing:
            return Verdict.check(name, True, shown)
        # On a GPU host the parity runs need onnxruntime-gpu's providers; say why they are absent and the fix.
        return Verdict.check(name, False, self.p.provider_missing_reason(missing[0]))

    def tritonserver(self, name: str, data: dict) -> Verdict:
        found = self.p.tritonservers()
        data["found"] = [{"where": w, "path": str(p), "version": v} for w, p, v in found]
        if not found:
            return Verdict.skipped(name, "no tritonserver: nvidia-pytriton not installed and none on PATH")
        return Verdict.check(name, True, "; ".join(f"{w} {p} ({v})" for w, p, v in found))

    # ----- what this host can build and run ---------------------------------------------------------------------

    def plugin_build(self, name: str, data: dict) -> Verdict:
        if (skip := self._needs(name, "gpu", "tensorrt")) is not None:
            return skip
        self.plugin = self.p.build_plugin(self.work / "plugin")
        data["library"] = str(self.plugin)
        return Verdict.check(name, True, f"built {self.plugin.name}")

    def engines(self, name: str, data: dict) -> Verdict:
        if (skip := self._needs(name, "plugin")) is not None:
            return skip
        assert self.plugin is not None
        self.engine_run = self.p.build_engines(self.work / "build", self.plugin)
        stage = next((s for s in self.engine_run.stages if s.name == "engine"), None)
        data["plans"] = {p: str(path) for p, path in self.engine_run.plans.items()}
        if stage is None:
            return Verdict.check(name, False, "the build ran no engine stage")
        missing = [p for p in PRECISIONS if p not in self.engine_run.plans]
        if stage.status is not Status.OK:
            return Verdict.check(name, False, f"engine stage {stage.verdict}")
        if missing:
            return Verdict.check(name, False, f"no {', '.join(missing)} plan after the engine stage: {stage.detail}")
        return Verdict.check(name, True, stage.detail)

    def engine_parity(self, name: str, data: dict) -> Verdict:
        if (skip := self._needs(name, "engines")) is not None:
            return skip
        assert self.engine_run is not None
        stage = next((s for s in self.engine_run.stages if s.name == "parity"), None)
        if stage is None:
            return Verdict.check(name, False, "the build ran no parity stage")
        worst = {k: v for k, v in stage.metrics.get("max_abs", {}).items() if k.startswith("tensorrt")}
        data["max_abs"] = worst
        if stage.status is not Status.OK:
            return Verdict.check(name, False, stage.detail)
        if len(worst) < len(PRECISIONS):
            return Verdict.check(name, False, f"parity checked {len(worst)} TensorRT engine(s), expected "
                                              f"{len(PRECISIONS)}: {', '.join(worst) or 'none'}")
        return Verdict.check(name, True, ", ".join(f"{k} max_abs {v:.1e}" for k, v in worst.items()))

    def gpu_tests(self, name: str, data: dict) -> Verdict:
        if (skip := self._needs(name, "gpu")) is not None:
            return skip
        tests = self.p.tests_dir
        if tests is None or not tests.is_dir():
            return Verdict.skipped(name, f"no tests directory ({tests}): run from a source checkout")
        code, output = self.p.run(gpu_test_command(tests), PYTEST_TIMEOUT_S, cwd=tests.parent)
        last = next((ln.strip("= ").strip() for ln in reversed(output.splitlines()) if ln.strip()), "no output")
        data.update(exit_code=code, summary=last)
        if code == 5:  # pytest: no tests collected
            return Verdict.skipped(name, "no gpu tests collected")
        if code != 0:
            return Verdict.check(name, False, f"pytest -m gpu exit {code}: {last}")
        if " passed" not in f" {last}":  # every gpu test skipped (their reason is in the summary)
            return Verdict.skipped(name, f"pytest -m gpu ran none: {last}")
        return Verdict.check(name, True, f"pytest -m gpu: {last}")

    def trtexec(self, name: str, data: dict) -> Verdict:
        if (skip := self._needs(name, "engines")) is not None:
            return skip
        trtexec = self.p.which("trtexec")
        if trtexec is None:
            return Verdict.skipped(name, "trtexec not on PATH (it ships in the TensorRT tar package and containers)")
        assert self.plugin is not None and self.engine_run is not None
        # --staticPlugins loads the library whose creator registers itself at load (plugin/build.py); a plan with
        # dynamic shapes runs at its profile's shapes. A few iterations only: this checks loading, not speed.
        results = {}
        for precision, plan in self.engine_run.plans.items():
            code, output = self.p.run([trtexec, f"--loadEngine={plan}", f"--staticPlugins={self.plugin}",
                                       "--iterations=10", "--warmUp=0", "--duration=0"], TRTEXEC_TIMEOUT_S)
            results[precision] = code
            if code != 0:
                lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
                why = next((ln for ln in lines if "[E]" in ln or "Error" in ln), lines[-1] if lines else "no output")
                data["exit_codes"] = results
                return Verdict.check(name, False, f"trtexec --loadEngine {plan.name} exit {code}: {why[:300]}")
        data["exit_codes"] = results
        return Verdict.check(name, True, f"loaded and ran {', '.join(results)} plan(s) with --staticPlugins")


def run_doctor(probes: DoctorProbes | None = None, work: Path | None = None) -> DoctorReport:
    """Run every check; `work` keeps the plugin and the demo build (default: a temporary directory removed after)."""
    probes = probes or DoctorProbes()
    if work is not None:
        return DoctorReport(_Doctor(probes, Path(work)).run())
    with tempfile.TemporaryDirectory(prefix="onerank-doctor-") as tmp:
        return DoctorReport(_Doctor(probes, Path(tmp)).run())


__all__ = ["Check", "DoctorProbes", "DoctorReport", "run_doctor"]
