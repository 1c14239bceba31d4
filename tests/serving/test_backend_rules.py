"""Backend rules: each rule broken alone by one config edit, and the generated repositories passing them."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import TINY
from onnx import TensorProto, helper

from onerank_export.errors import ConfigError
from onerank_export.serving import model_config as mcfg
from onerank_export.serving.backend_rules import advise_model, check_model, check_repository
from onerank_export.serving.profiles import Target, serving_plan
from onerank_export.serving.repository import PYTHON_MODEL_SOURCE, write_model_repository

ONNX, PYTHON, TRT = "onerank_onnx_fp32", "onerank", "onerank_trt_fp16"
KIND = mcfg.mc.ModelInstanceGroup.Kind


def tiny_onnx(path: Path, external: bool = False) -> None:
    """A real (if trivial) ONNX file: the rules read it for external data, nothing else."""
    weight = helper.make_tensor("w", TensorProto.FLOAT, [512], np.ones(512, np.float32).tobytes(), raw=True)
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [512])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [512])], [weight])
    onnx.save_model(helper.make_model(graph), str(path), save_as_external_data=external,
                    location="model.onnx.data", size_threshold=0)


def complete(repository: Path) -> Path:
    """Put the model files the configs of the conftest repositories name into their version dirs."""
    for model_dir in (p for p in repository.iterdir() if p.is_dir()):
        cfg = mcfg.read_config(model_dir / "config.pbtxt")
        version = model_dir / "1"
        version.mkdir(exist_ok=True)
        if cfg.backend == "python":
            shutil.copyfile(PYTHON_MODEL_SOURCE, version / "model.py")
        if cfg.platform == "tensorrt_plan":
            (version / "model.plan").write_bytes(b"plan")
        else:
            tiny_onnx(version / "model.onnx")
    return repository


# conftest writes both into tmp_path/model_repository: each is moved aside as soon as it is written.
@pytest.fixture
def cpu_repo(cpu_repository):
    return complete(cpu_repository.rename(cpu_repository.with_name("cpu_repository")))


@pytest.fixture
def gpu_repo(gpu_repository):
    return complete(gpu_repository.rename(gpu_repository.with_name("gpu_repository")))


def edit(model_dir: Path, change: Callable) -> None:
    cfg = mcfg.read_config(model_dir / "config.pbtxt")
    change(cfg)
    (model_dir / "config.pbtxt").write_text(mcfg.to_text(cfg))


def params(**values: str) -> Callable:
    def change(cfg):
        for key, value in values.items():
            cfg.parameters[key].string_value = value
    return change


def kinds(*names: str, count: int = 1) -> Callable:
    def change(cfg):
        del cfg.instance_group[:]
        for name in names:
            cfg.instance_group.add(kind=KIND.Value(name), count=count)
    return change


def rules(lines: list[str]) -> set[str]:
    return {line.split("[", 1)[1].split("]", 1)[0] for line in lines}


def test_generated_repositories_pass_for_their_target(cpu_repo, gpu_repo):
    assert check_repository(cpu_repo, "cpu") == []
    assert check_repository(gpu_repo, "gpu") == []
    # ... and not for the other one: every model is named, python-backend models stay CPU.
    wrong = check_repository(gpu_repo, "cpu")
    assert rules(wrong) == {"tensorrt-gpu-only", "instance-kind"} and all("fix:" in line for line in wrong)
    assert {line.split(":")[0] for line in check_repository(cpu_repo, "gpu")} == {ONNX}


def _set_level(level):
    return lambda cfg: setattr(cfg.optimization.graph, "level", level)


def _gpu_accelerator(name, **parameters):
    def change(cfg):
        accel = cfg.optimization.execution_accelerators.gpu_execution_accelerator.add(name=name)
        for key, value in parameters.items():
            accel.parameters[key] = value
    return change


def _cpu_accelerator(name):
    return lambda cfg: cfg.optimization.execution_accelerators.cpu_execution_accelerator.add(name=name)


# (repository, model, config edit, the one rule it breaks, words of the message)
BROKEN = [
    ("gpu", ONNX, kinds("KIND_GPU", "KIND_CPU"), "instance-kind", "mixes KIND_GPU and KIND_CPU"),
    ("cpu", ONNX, kinds("KIND_GPU"), "instance-kind", "KIND_GPU but the target is cpu"),
    ("gpu", TRT, kinds("KIND_CPU"), "instance-kind", "KIND_CPU but the target is gpu"),
    ("cpu", PYTHON, kinds("KIND_GPU"), "instance-kind", "python-backend models run on the CPU"),
    ("cpu", ONNX, kinds("KIND_AUTO"), "instance-kind", "KIND_AUTO, decided by the host"),
    ("cpu", ONNX, kinds(), "instance-kind", "no instance_group"),
    ("cpu", ONNX, kinds("KIND_CPU", count=0), "instance-count", "no count"),
    ("cpu", ONNX, params(intra_op_thread_count="-1"), "thread-count", "'-1' is not a non-negative"),
    ("cpu", ONNX, params(intra_op_thread_count="2 threads"), "thread-count", "'2 threads'"),
    ("cpu", ONNX, params(inter_op_thread_count="99999999999"), "thread-count", "99999999999"),
    ("cpu", ONNX, params(inter_op_thread_count="2"), "thread-count", "no effect with sequential execution"),
    ("cpu", ONNX, params(intra_op_threads="2"), "parameter-name", "did you mean 'intra_op_thread_count'"),
    ("cpu", ONNX, params(**{"session.set_denormal_as_zero": "1"}), "parameter-name", "is ignored"),
    ("cpu", PYTHON, params(intra_op_thread_count="2"), "parameter-name", "did you mean 'intra_op_threads'"),
    ("gpu", TRT, params(execution_context_allocation="STATIC"), "parameter-name", "execution_context_allocation_"),
    ("cpu", ONNX, params(execution_mode="2"), "parameter-value", "execution_mode '2' is not one of [0, 1]"),
    ("cpu", ONNX, params(enable_mem_arena="yes"), "parameter-value", "enable_mem_arena 'yes' is not a boolean"),
    ("cpu", PYTHON, params(FORCE_CPU_ONLY_INPUT_TENSORS="true"), "parameter-value", "'yes' or 'no'"),
    ("cpu", PYTHON, params(intra_op_threads="two"), "thread-count", "intra_op_threads 'two'"),
    ("cpu", ONNX, _set_level(3), "graph-level", "level 3 is read as ORT_ENABLE_ALL"),
    ("cpu", ONNX, params(gpu_mem_limit="1000"), "gpu-setting", "'gpu_mem_limit' is read only for KIND_GPU"),
    ("cpu", ONNX, _gpu_accelerator("cuda"), "gpu-setting", "gpu_execution_accelerator is ignored"),
    ("gpu", ONNX, _gpu_accelerator("trt"), "accelerator", "'trt' is unknown"),
    ("gpu", ONNX, _gpu_accelerator("tensorrt", fp16="1"), "accelerator", "parameter 'fp16' is unknown"),
    ("gpu", ONNX, _gpu_accelerator("tensorrt", precision_mode="fp16"), "accelerator", "precision_mode 'fp16'"),
    ("cpu", ONNX, _cpu_accelerator("mkl"), "accelerator", "'mkl' is unknown"),
    ("cpu", ONNX, lambda cfg: setattr(cfg, "default_model_filename", "model_v2.onnx"), "model-file",
     "model_v2.onnx does not exist"),
    ("cpu", ONNX, lambda cfg: setattr(cfg, "name", "other"), "name", "differs from the directory name"),
]


@pytest.mark.parametrize(("repo", "model", "change", "rule", "words"), BROKEN,
                         ids=[f"{b[3]}:{b[4][:40]}" for b in BROKEN])
def test_each_rule_alone(request, repo, model, change, rule, words):
    repository = request.getfixturevalue(f"{repo}_repo")
    edit(repository / model, change)
    lines = check_model(repository / model, repo)
    assert rules(lines) == {rule}, lines
    assert any(words in line for line in lines), lines
    assert all(line.startswith(f"{model}: [") and "; fix: " in line and "\n" not in line for line in lines)


@pytest.mark.parametrize("change", [
    params(inter_op_thread_count="2", execution_mode="1"),  # parallel execution reads it
    params(intra_op_thread_count="0", inter_op_thread_count="1", enable_mem_pattern="OFF"),
    _set_level(-1), _set_level(2), _cpu_accelerator("openvino"),
    params(**{"onerank.anything": "x", "session.use_device_allocator_for_initializers": "1"}),
], ids=["parallel", "zero-and-bools", "basic", "disable-all", "openvino", "own-and-session-keys"])
def test_settings_the_backend_reads_pass(cpu_repo, change):
    edit(cpu_repo / ONNX, change)
    assert check_model(cpu_repo / ONNX, "cpu") == []


def test_gpu_accelerators_and_cuda_settings_pass_on_gpu(gpu_repo):
    edit(gpu_repo / ONNX, _gpu_accelerator("tensorrt", precision_mode="FP16", trt_engine_cache_enable="1"))
    edit(gpu_repo / ONNX, params(gpu_mem_limit="1000", cudnn_conv_algo_search="1"))
    assert check_model(gpu_repo / ONNX, "gpu") == []


def test_tensorrt_plan_in_a_cpu_repository(cpu_repo, gpu_repo):
    shutil.copytree(gpu_repo / TRT, cpu_repo / TRT)
    lines = check_repository(cpu_repo, "cpu")
    assert rules(lines) == {"tensorrt-gpu-only"} and lines[0].startswith(f"{TRT}: ")


@pytest.mark.parametrize(("damage", "rule", "words"), [
    (lambda d: (d / "1" / "model.onnx").unlink(), "model-file", "model.onnx does not exist"),
    (lambda d: (d / "1" / "model.onnx").write_bytes(b"not onnx"), "model-file", "not a readable ONNX model"),
    (lambda d: (d / "1").rename(d / "01"), "version", "no numeric version directory"),
    (lambda d: (d / "warmup" / "cand_item_ids").unlink(), "warmup", "warmup/cand_item_ids does not exist"),
    (lambda d: (d / "warmup" / "context_ids").write_bytes(b"\0" * 3), "warmup", "has 3 bytes"),
], ids=["missing-model", "not-onnx", "leading-zero-version", "missing-warmup", "warmup-size"])
def test_file_rules(cpu_repo, damage, rule, words):
    damage(cpu_repo / ONNX)
    lines = check_model(cpu_repo / ONNX, "cpu")
    assert rules(lines) == {rule} and any(words in line for line in lines), lines


def test_the_python_model_needs_the_onnx_it_runs(cpu_repo):
    (cpu_repo / PYTHON / "1" / "model.onnx").unlink()
    lines = check_model(cpu_repo / PYTHON, "cpu")
    assert rules(lines) == {"model-file"} and "model.py runs it" in lines[0]


def test_external_data_beside_the_model(cpu_repo):
    version = cpu_repo / ONNX / "1"
    tiny_onnx(version / "model.onnx", external=True)
    assert (version / "model.onnx.data").stat().st_size == 512 * 4
    assert check_model(cpu_repo / ONNX, "cpu") == []
    (version / "model.onnx.data").unlink()
    lines = check_model(cpu_repo / ONNX, "cpu")
    assert rules(lines) == {"external-data"} and "needs 'model.onnx.data'" in lines[0]


def test_a_model_without_config_and_an_unknown_target(cpu_repo):
    (cpu_repo / ONNX / "config.pbtxt").unlink()
    assert rules(check_model(cpu_repo / ONNX, "cpu")) == {"config"}
    with pytest.raises(ConfigError, match="resolve 'auto' first"):
        check_model(cpu_repo / PYTHON, "auto")


def test_oversubscription_is_advice_not_a_violation(cpu_repo):
    edit(cpu_repo / ONNX, kinds("KIND_CPU", count=2))
    edit(cpu_repo / ONNX, params(intra_op_thread_count="4"))
    assert check_model(cpu_repo / ONNX, "cpu") == []
    assert advise_model(cpu_repo / ONNX, cores=2) == [
        f"{ONNX}: 2 CPU instance(s) x 4 threads = 8 threads on 2 cores (oversubscribed under load)"]
    edit(cpu_repo / ONNX, params(intra_op_thread_count="0"))
    assert "one ONNX Runtime thread per physical core" in advise_model(cpu_repo / ONNX, cores=2)[0]


@pytest.mark.parametrize("target", ["gpu", "cpu"])
def test_what_write_model_repository_writes_passes(tmp_path, target):
    model = tmp_path / "onnx" / "onerank.fp32.onnx"
    model.parent.mkdir()
    tiny_onnx(model)
    (tmp_path / "plugins").mkdir()
    plan_file, plugin = tmp_path / "onerank.fp16.plan", tmp_path / "plugins" / "libonerank_plugins.so"
    plan_file.write_bytes(b"plan")
    plugin.write_bytes(b"so")
    written = write_model_repository(tmp_path, TINY, serving_plan(Target(target), "tests", "throughput"),
                                     {"fp32": model}, {"fp16": plan_file} if target == "gpu" else {},
                                     plugin if target == "gpu" else None, cpu_onnx={"fp32": model})
    assert check_repository(written.path, target) == []
