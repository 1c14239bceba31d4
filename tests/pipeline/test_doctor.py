"""`doctor`: on this CPU host every GPU line is skipped with a reason and the exit code is 0; the GPU host path
(plugin build, engine build, parity, pytest -m gpu, trtexec) runs against stand-in probes."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from onerank_export.cli.main import main
from onerank_export.errors import StageError
from onerank_export.pipeline.doctor import run_doctor
from onerank_export.pipeline.doctor_probes import DoctorProbes, EngineRun
from onerank_export.pipeline.result import StageResult, Status

CHECKS = ["host", "driver", "gpu", "tensorrt", "onnxruntime", "tritonserver", "plugin", "engines", "engine parity",
          "gpu tests", "trtexec"]
GPU_LINES = ["driver", "gpu", "tensorrt", "plugin", "engines", "engine parity", "gpu tests", "trtexec"]


def test_cpu_host_skips_every_gpu_line_with_a_reason_and_exits_0(tmp_path, capsys):
    from onerank_export.host import cuda_device_present

    if cuda_device_present():
        pytest.skip("this host has a CUDA device")
    report = tmp_path / "doctor.json"
    assert main(["doctor", "--report", str(report)]) == 0
    data = json.loads(report.read_text())
    assert [c["name"] for c in data["checks"]] == CHECKS
    by_name = {c["name"]: c for c in data["checks"]}
    for name in GPU_LINES:
        assert by_name[name]["status"] == "skipped", by_name[name]
        assert by_name[name]["detail"], name
    assert by_name["host"]["status"] == "ok" and data["passed"] is True
    assert all(isinstance(c["seconds"], float) for c in data["checks"])
    out = capsys.readouterr().out
    assert "plugin" in out and "skipped: needs driver: no NVIDIA driver" in out


def _plugin(out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    lib = out_dir / "libonerank_plugins.so"
    lib.write_bytes(b"")
    return lib


def _engines(out: Path, plugin: Path) -> EngineRun:
    (out / "engines").mkdir(parents=True)
    plans = {p: out / "engines" / f"onerank.{p}.plan" for p in ("fp32", "fp16", "int8")}
    for plan in plans.values():
        plan.write_bytes(b"plan")
    stages = [StageResult("engine", Status.OK, "fp32, fp16, int8 engine(s)"),
              StageResult("parity", Status.OK, "ok", metrics={"max_abs": {
                  "onnxruntime-fp32[fp32]": 1e-7, "tensorrt-fp32[fp32]": 2e-6, "tensorrt-fp16[fp16]": 1e-3,
                  "tensorrt-int8[int8]": 1e-2}})]
    return EngineRun(stages, plans)


class Calls:
    def __init__(self) -> None:
        self.log: list[str] = []

    def probes(self, **overrides) -> DoctorProbes:
        def build_plugin(out_dir):
            self.log.append("plugin")
            return _plugin(out_dir)

        def build_engines(out, plugin):
            self.log.append(f"engines with {plugin.name}")
            return _engines(out, plugin)

        def run(cmd, timeout, cwd=None):
            self.log.append(" ".join(str(c) for c in cmd))
            if "pytest" in cmd:
                return 0, "....\n===== 12 passed in 30.1s =====\n"
            return 0, "&&&& PASSED TensorRT.trtexec\n"

        base = dict(host=lambda: {"python": "3.11", "platform": "Linux", "cpu": "x", "cores": "8"},
                    driver_version=lambda: 12040, device_present=lambda: True,
                    device=lambda: ("NVIDIA A100-SXM4-80GB", "8.0"), tensorrt_python=lambda: "10.8.0.43",
                    tensorrt_headers=lambda: (Path("/opt/tensorrt"), "10.8.0"),
                    onnxruntime=lambda: ("1.22.0", ["TensorrtExecutionProvider", "CUDAExecutionProvider",
                                                    "CPUExecutionProvider"]),
                    provider_missing_reason=lambda p: f"onnxruntime has no {p} here",
                    tritonservers=lambda: [], build_plugin=build_plugin, build_engines=build_engines,
                    which=lambda name: f"/usr/bin/{name}", run=run, tests_dir=Path(__file__).parents[1])
        return DoctorProbes(**{**base, **overrides})


def test_gpu_host_builds_plugin_and_engines_and_runs_everything(tmp_path):
    calls = Calls()
    report = run_doctor(calls.probes(), work=tmp_path)
    lines = {c.verdict.name: c.line for c in report.checks}
    assert report.exit_code == 0, lines
    assert all(line.startswith("ok") for name, line in lines.items() if name != "tritonserver"), lines
    assert calls.log[:2] == ["plugin", "engines with libonerank_plugins.so"]
    assert any("pytest -m gpu" in c for c in calls.log)
    assert sum(c.startswith("/usr/bin/trtexec --loadEngine") for c in calls.log) == 3
    assert "A100" in lines["gpu"] and "sm_80 image" in lines["gpu"]
    assert "tensorrt-int8[int8] max_abs 1.0e-02" in lines["engine parity"]
    assert "onnxruntime-fp32" not in lines["engine parity"]
    assert lines["driver"] == "ok: NVIDIA driver supports CUDA 12.4"
    report.write(tmp_path / "doctor.json")
    assert json.loads((tmp_path / "doctor.json").read_text())["passed"] is True


def test_failing_probe_is_failed_with_why_and_exit_1(tmp_path):
    calls = Calls()

    def broken(out_dir):
        raise StageError("plugin build failed: NvInfer.h: No such file (full log: x.log)")

    report = run_doctor(calls.probes(build_plugin=broken), work=tmp_path)
    assert report.exit_code == 1
    assert report.get("plugin").line == "failed: plugin build failed: NvInfer.h: No such file (full log: x.log)"
    # What needs the plugin is skipped naming it, never ok and never built.
    assert report.get("engines").line.startswith("skipped: needs plugin: plugin build failed")
    assert report.get("trtexec").verdict.outcome.value == "skipped"
    assert not any(c.startswith("engines") for c in calls.log)


def test_old_gpu_fails_with_one_line_and_builds_nothing(tmp_path):
    calls = Calls()
    report = run_doctor(calls.probes(device=lambda: ("Tesla V100-SXM2-16GB", "7.0")), work=tmp_path)
    gpu = report.get("gpu").line
    assert report.exit_code == 1
    assert gpu.startswith("failed: GPU Tesla V100-SXM2-16GB has compute capability 7.0") and "\n" not in gpu
    assert report.get("plugin").line.startswith("skipped: needs gpu: GPU Tesla V100")
    assert "plugin" not in calls.log


def test_gpu_host_without_tensorrt_or_gpu_providers_fails_naming_the_fix(tmp_path):
    calls = Calls()

    def no_headers():
        raise StageError("TensorRT headers not found: set TensorRT_ROOT")

    probes = calls.probes(tensorrt_python=lambda: None, tensorrt_headers=no_headers,
                          onnxruntime=lambda: ("1.22.0", ["CPUExecutionProvider"]))
    report = run_doctor(probes, work=tmp_path)
    assert report.get("tensorrt").line == ("failed: Python tensorrt not importable; TensorRT headers not found: "
                                           "set TensorRT_ROOT")
    assert report.get("onnxruntime").line == "failed: onnxruntime has no CUDAExecutionProvider here"
    assert report.get("engines").verdict.outcome.value == "skipped"


def test_engine_stage_failure_and_missing_trtexec(tmp_path):
    calls = Calls()

    def failing_engines(out, plugin):
        run = _engines(out, plugin)
        run.stages[0] = StageResult("engine", Status.FAILED, "1 of 3 engine(s) failed, first int8: no format")
        del run.plans["int8"]
        return run

    report = run_doctor(calls.probes(build_engines=failing_engines, which=lambda name: None), work=tmp_path)
    assert report.get("engines").line == "failed: engine stage failed: 1 of 3 engine(s) failed, first int8: no format"
    assert report.get("trtexec").line.startswith("skipped: needs engines")
    assert report.exit_code == 1


def test_gpu_tests_all_skipped_is_not_ok(tmp_path):
    probes = dataclasses.replace(Calls().probes(), run=lambda cmd, timeout, cwd=None: (0, "== 12 skipped in 1s =="))
    report = run_doctor(probes, work=tmp_path)
    assert report.get("gpu tests").line == "skipped: pytest -m gpu ran none: 12 skipped in 1s"
