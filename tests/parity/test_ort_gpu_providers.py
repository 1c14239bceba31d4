"""ONNX Runtime's CUDA / TensorRT providers in the parity runs, with ORT stood in for: no GPU here.

The stand-in behaves as onnxruntime-gpu on a GPU host does: it lists the GPU providers, and a
session asked for them either has them or silently has only the CPU (ORT's fallback). Outputs come
from a real CPU session, so the parity numbers are real; what is faked is which provider ran.
"""

from __future__ import annotations

import json
import shutil
from importlib import metadata

import onnxruntime
import pytest
from helpers import TINY, make_tiny_model

from onerank_export.errors import StageError
from onerank_export.export.onnx_export import export_onnx
from onerank_export.parity import runners as runners_mod
from onerank_export.parity import targets as targets_mod
from onerank_export.parity.cases import default_cases, invariance_case
from onerank_export.parity.results import RunResults
from onerank_export.parity.runner import RunnerUnavailable
from onerank_export.parity.runners import (
    CPU_PROVIDER,
    CUDA_PROVIDER,
    TENSORRT_PROVIDER,
    OnnxRuntimeRunner,
    TritonOrtBackendRunner,
    provider_missing_reason,
)
from onerank_export.parity.targets import ParityTargets, build_runners, run_parity_suite
from onerank_export.precision import Precision
from onerank_export.verdict import Outcome

REAL_SESSION = onnxruntime.InferenceSession
REAL_PROVIDERS = onnxruntime.get_available_providers()
GPU_BUILD_PROVIDERS = [TENSORRT_PROVIDER, CUDA_PROVIDER, CPU_PROVIDER]  # what onnxruntime-gpu lists


class FakeSession:
    """A session whose providers are the stand-in's answer; everything else is the real CPU session's."""

    def __init__(self, real, providers: list[str], run_error: str | None) -> None:
        self._real, self._providers, self._run_error = real, providers, run_error
        self.fallback_disabled = False

    def get_providers(self):
        return list(self._providers)

    def disable_fallback(self):
        self.fallback_disabled = True

    def run(self, *args, **kwargs):
        if self._run_error:
            raise RuntimeError(self._run_error)
        return self._real.run(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._real, name)


class FakeGpuOrt:
    """`onnxruntime.InferenceSession` of a GPU host: providers in `started` start, the others fall back."""

    def __init__(self, started=(CUDA_PROVIDER, TENSORRT_PROVIDER), *, raises: str | None = None,
                 run_error: str | None = None, retries_on_cpu: bool = False) -> None:
        self.started, self.raises, self.run_error = set(started), raises, run_error
        self.retries_on_cpu = retries_on_cpu  # ORT 1.22: no enable_fallback keyword, prints and retries
        self.calls: list[dict] = []
        self.sessions: list[FakeSession] = []

    def __call__(self, model, options=None, providers=None, **kwargs):
        names = [p[0] if isinstance(p, tuple) else p for p in providers or []]
        self.calls.append({"names": names, "providers": providers, "kwargs": kwargs})
        if names == [CPU_PROVIDER]:
            return REAL_SESSION(model, options, providers=providers)
        if self.raises and not self.retries_on_cpu:
            raise RuntimeError(self.raises)
        if self.raises:  # what onnxruntime_inference_collection.py of 1.22 prints before its CPU retry
            print("*************** EP Error ***************")
            print(f"EP Error {self.raises} when using {providers}")
            print("Falling back to ['CPUExecutionProvider'] and retrying.")
            names = []
        real = REAL_SESSION(model, options, providers=[CPU_PROVIDER])
        session = FakeSession(real, [n for n in names if n in self.started] + [CPU_PROVIDER], self.run_error)
        self.sessions.append(session)
        return session


@pytest.fixture
def gpu_host(monkeypatch):
    """A host with a CUDA device and onnxruntime-gpu; returns a function installing a session stand-in."""
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: list(GPU_BUILD_PROVIDERS))
    monkeypatch.setattr(targets_mod, "cuda_device_present", lambda: True)
    monkeypatch.setattr(runners_mod, "cuda_device_present", lambda: True)
    runners_mod._preload_cuda_libraries.cache_clear()
    missed = "Failed to load libcublasLt.so.12: cannot open shared object file"  # what preload_dlls prints
    monkeypatch.setattr(onnxruntime, "preload_dlls", lambda: print(missed), raising=False)

    def install(fake: FakeGpuOrt) -> FakeGpuOrt:
        monkeypatch.setattr(onnxruntime, "InferenceSession", fake)
        return fake

    yield install
    runners_mod._preload_cuda_libraries.cache_clear()


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "onerank.fp32.onnx"
    export_onnx(make_tiny_model(seed=1), path)
    return path


def _names(runners):
    return [(r.name, p.value) for r, p in runners]


def test_a_cpu_host_gets_the_runners_it_always_had_even_with_onnxruntime_gpu_installed(monkeypatch, tiny_onnx):
    model = make_tiny_model(seed=1)
    expected = [("eager-serving", "fp32"), ("onnxruntime-fp32", "fp32"), ("onnxruntime-fp32-canonical", "fp32")]
    monkeypatch.setattr(targets_mod, "cuda_device_present", lambda: False)
    assert _names(build_runners(model, ParityTargets(onnx={Precision.FP32: tiny_onnx}))) == expected
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: list(GPU_BUILD_PROVIDERS))
    assert _names(build_runners(model, ParityTargets(onnx=[tiny_onnx]))) == expected


def test_a_gpu_host_gets_cuda_and_tensorrt_runners_on_the_canonical_file(gpu_host, tmp_path, tiny_onnx):
    fp16 = tmp_path / "onerank.fp16.onnx"
    shutil.copyfile(tiny_onnx, fp16)
    runners = build_runners(make_tiny_model(seed=1), ParityTargets(onnx={Precision.FP32: tiny_onnx,
                                                                         Precision.FP16: fp16}))
    assert [n for n, _ in _names(runners)][5:] == ["onnxruntime-fp32-cuda", "onnxruntime-fp16-cuda",
                                                   "onnxruntime-fp32-tensorrt", "onnxruntime-fp16-tensorrt"]
    gpu = [r for r, _ in runners[5:]]
    assert [r.providers for r in gpu] == [[CUDA_PROVIDER]] * 2 + [[TENSORRT_PROVIDER, CUDA_PROVIDER]] * 2
    assert not any(r.cpu_rewrite for r in gpu) and [str(r.model) for r in gpu[:2]] == [str(tiny_onnx), str(fp16)]


def _run(runners):
    return run_parity_suite(make_tiny_model(seed=1), runners, default_cases(TINY),
                            invariance_case=invariance_case(TINY, 0))


def test_the_provider_that_ran_is_in_the_report_and_survives_a_saved_run(gpu_host, tmp_path, tiny_onnx):
    fake = gpu_host(FakeGpuOrt())
    report = _run(build_runners(make_tiny_model(seed=1), ParityTargets(onnx=[tiny_onnx])))
    assert report.passed
    rows = report.to_dict()["cases"]
    provider = {r["runner"]: r["provider"] for r in rows}
    assert provider == {"eager-serving": None, "onnxruntime-fp32": CPU_PROVIDER,
                        "onnxruntime-fp32-canonical": CPU_PROVIDER, "onnxruntime-fp32-cuda": CUDA_PROVIDER,
                        "onnxruntime-fp32-tensorrt": TENSORRT_PROVIDER}
    assert all(r["status"] == "passed" for r in rows)
    # The GPU sessions: TF32 off on CUDA, CUDA behind TensorRT, ORT's fallback off at creation and in run().
    gpu_calls = [c for c in fake.calls if c["names"] != [CPU_PROVIDER]]
    assert [c["providers"] for c in gpu_calls] == [[(CUDA_PROVIDER, {"use_tf32": "0"})],
                                                   [TENSORRT_PROVIDER, (CUDA_PROVIDER, {"use_tf32": "0"})]]
    assert all(c["kwargs"] == {"enable_fallback": 0} for c in gpu_calls)
    assert fake.sessions and all(s.fallback_disabled for s in fake.sessions)
    saved = RunResults.load(report.run_results.save(tmp_path / "run.npz"))
    assert {r.name: r.provider for r in saved.targets}["onnxruntime-fp32-tensorrt"] == TENSORRT_PROVIDER
    report.write_json(tmp_path / "parity.json")
    assert json.loads((tmp_path / "parity.json").read_text())["cases"][0]["provider"] is None


def test_a_silent_fallback_to_the_cpu_is_skipped_with_the_reason_never_passed(gpu_host, tiny_onnx):
    gpu_host(FakeGpuOrt(started=[CUDA_PROVIDER]))  # TensorRT's libraries are missing: ORT says nothing
    report = _run(build_runners(make_tiny_model(seed=1), ParityTargets(onnx=[tiny_onnx])))
    trt = [c for c in report.cases if c.runner == "onnxruntime-fp32-tensorrt"]
    cuda = [c for c in report.cases if c.runner == "onnxruntime-fp32-cuda"]
    assert trt and all(c.status is Outcome.SKIPPED and c.provider is None for c in trt)
    assert all(c.status is Outcome.PASSED and c.provider == CUDA_PROVIDER for c in cuda)
    reason = trt[0].reason
    assert reason.startswith("onnxruntime did not start TensorrtExecutionProvider and fell back to "
                             "CUDAExecutionProvider, CPUExecutionProvider")
    assert "Failed to load libcublasLt.so.12" in reason and "print_debug_info" in reason and "\n" not in reason
    assert not any(i.runner == "onnxruntime-fp32-tensorrt" for i in report.invariances)
    assert report.passed  # skipped is not failed, and not passed: counts say so
    assert report.counts()["skipped"] == len(trt)


def test_a_cpu_only_session_for_a_gpu_runner_is_caught_for_any_provider(gpu_host, tiny_onnx):
    gpu_host(FakeGpuOrt(started=[]))
    runner = OnnxRuntimeRunner(tiny_onnx, "onnxruntime-fp32-cuda", providers=[CUDA_PROVIDER], cpu_rewrite=False)
    with pytest.raises(RunnerUnavailable, match="did not start CUDAExecutionProvider and fell back to "
                                                "CPUExecutionProvider"):
        runner.activate()
    assert not runner.is_active and runner.provider is None


def test_a_provider_that_cannot_start_is_a_reason_not_a_crash(gpu_host, tiny_onnx):
    gpu_host(FakeGpuOrt(raises="CUDA failure 35: CUDA driver version is insufficient for CUDA runtime version\n..."))
    runner = OnnxRuntimeRunner(tiny_onnx, providers=[CUDA_PROVIDER], cpu_rewrite=False)
    with pytest.raises(RunnerUnavailable) as exc:
        runner.activate()
    assert str(exc.value) == ("onnxruntime could not start CUDAExecutionProvider: CUDA failure 35: CUDA driver "
                              "version is insufficient for CUDA runtime version")


def test_an_ort_that_retries_on_the_cpu_regardless_is_caught_with_its_printed_error(gpu_host, tiny_onnx):
    gpu_host(FakeGpuOrt(raises="CUDNN_STATUS_NOT_INITIALIZED", retries_on_cpu=True))
    runner = OnnxRuntimeRunner(tiny_onnx, providers=[CUDA_PROVIDER], cpu_rewrite=False)
    with pytest.raises(RunnerUnavailable) as exc:
        runner.activate()
    assert str(exc.value).startswith("onnxruntime did not start CUDAExecutionProvider and fell back to "
                                     "CPUExecutionProvider (EP Error CUDNN_STATUS_NOT_INITIALIZED when using [(")


def test_no_cuda_device_is_the_reason_before_any_session(gpu_host, monkeypatch, tiny_onnx):
    fake = gpu_host(FakeGpuOrt())
    monkeypatch.setattr(runners_mod, "cuda_device_present", lambda: False)
    with pytest.raises(RunnerUnavailable, match=r"^no CUDA device$"):
        OnnxRuntimeRunner(tiny_onnx, providers=[CUDA_PROVIDER], cpu_rewrite=False).activate()
    assert fake.calls == []


def test_a_provider_error_on_a_request_is_one_line_not_a_cpu_rerun(gpu_host, tiny_onnx):
    gpu_host(FakeGpuOrt(run_error="[ONNXRuntimeError] : 11 : EP_FAIL : CUDA out of memory\nstack..."))
    case = default_cases(TINY)[0]
    runner = OnnxRuntimeRunner(tiny_onnx, "onnxruntime-fp32-cuda", providers=[CUDA_PROVIDER], cpu_rewrite=False)
    with runner, pytest.raises(StageError) as exc:
        runner.infer(case.feed)
    message = str(exc.value)
    assert message.startswith("onnxruntime-fp32-cuda: onnxruntime's CUDAExecutionProvider failed on a request with "
                              "batch=") and "EP_FAIL : CUDA out of memory" in message and "\n" not in message


class _Dist:
    def __init__(self, name: str, version: str, files: list[str]) -> None:
        self.metadata = {"Name": name}
        self.version = version
        self.files = [metadata.PackagePath(f) for f in files]


ORT_FILES = ["onnxruntime/__init__.py", "onnxruntime/capi/_pybind_state.py"]


@pytest.mark.parametrize(("installed", "expected"), [
    ([("onnxruntime", "1.22.0", ORT_FILES), ("onnxruntime-gpu", "1.22.0", ORT_FILES),
      ("onnxruntime-genai", "0.8.0", ["onnxruntime_genai/__init__.py"])],
     "onnxruntime has no CUDAExecutionProvider here: onnxruntime and onnxruntime-gpu are installed into one "
     "`onnxruntime` directory and another build's files are in use; run `pip install --force-reinstall --no-deps "
     "onnxruntime-gpu==1.22.0` (docs/engine.md#onnx-runtime-on-a-gpu-host)"),
    ([("onnxruntime", "1.22.0", ORT_FILES)],
     "onnxruntime has no CUDAExecutionProvider here (onnxruntime 1.22.0 installed; a GPU host needs "
     "onnxruntime-gpu: docs/engine.md#onnx-runtime-on-a-gpu-host)"),
    ([("onnxruntime_gpu", "1.23.2", ORT_FILES)],
     "onnxruntime has no CUDAExecutionProvider here (onnxruntime-gpu 1.23.2 is installed without it)"),
])
def test_a_missing_provider_says_which_onnxruntime_is_installed_and_the_fix(monkeypatch, installed, expected):
    monkeypatch.setattr(metadata, "distributions", lambda: [_Dist(*d) for d in installed])
    assert provider_missing_reason(CUDA_PROVIDER) == expected


def test_the_real_install_here_is_the_cpu_build_alone():
    dists = runners_mod.onnxruntime_distributions()
    assert list(dists) == ["onnxruntime"] and dists["onnxruntime"] == onnxruntime.__version__
    with pytest.raises(RunnerUnavailable, match=r"^onnxruntime has no CUDAExecutionProvider here \(onnxruntime "):
        OnnxRuntimeRunner(b"", providers=[CUDA_PROVIDER]).activate()
    assert CUDA_PROVIDER not in REAL_PROVIDERS


def _gpu_model_dir(root, model):
    from onerank_export.serving import model_config as mcfg
    from onerank_export.serving.profiles import Target, serving_plan

    cfg = mcfg.onnxruntime_config("onerank_onnx_fp32", TINY, "fp32", serving_plan(Target.GPU, "tests", "latency"))
    model_dir = root / "onerank_onnx_fp32"
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "config.pbtxt").write_text(mcfg.to_text(cfg))
    shutil.copyfile(model, model_dir / "1" / cfg.default_model_filename)
    return model_dir


def test_a_kind_gpu_repository_model_that_falls_back_is_skipped_and_one_that_starts_says_so(gpu_host, tmp_path,
                                                                                           tiny_onnx):
    model_dir = _gpu_model_dir(tmp_path, tiny_onnx)
    gpu_host(FakeGpuOrt(started=[]))
    with pytest.raises(RunnerUnavailable, match="did not start CUDAExecutionProvider"):
        TritonOrtBackendRunner(model_dir).activate()
    gpu_host(FakeGpuOrt())
    with TritonOrtBackendRunner(model_dir) as runner:
        assert runner.provider == CUDA_PROVIDER and runner.session.fallback_disabled
