"""A model directory opened as Triton's ONNX Runtime backend opens it: file, external data, session options."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import TINY, make_tiny_model, request

from onerank_export import spec
from onerank_export.errors import ConfigError
from onerank_export.export.onnx_export import export_onnx
from onerank_export.serving import model_config as mcfg
from onerank_export.serving.ort_backend import (
    ORT_BACKEND_PARAMETERS,
    backend_bool,
    backend_int,
    session_like_onnxruntime_backend,
)
from onerank_export.serving.profiles import Target, serving_plan

REQUEST = request(TINY, batch=2, hist_len=7, num_candidates=5, seed=3)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "onerank.fp32.onnx"
    export_onnx(make_tiny_model(seed=1), path)
    return path


def write_model_dir(root: Path, model: Path | None, parameters: dict[str, str] | None = None, level: int | None = None,
                    kind: str = "KIND_CPU", name: str = "onerank_onnx_fp32") -> Path:
    """A model directory as the repository writer lays it out, with the backend parameters of the test."""
    target = Target.GPU if kind == "KIND_GPU" else Target.CPU
    cfg = mcfg.onnxruntime_config(name, TINY, "fp32", serving_plan(target, "tests", "latency"))
    assert [mcfg.mc.ModelInstanceGroup.Kind.Name(g.kind) for g in cfg.instance_group] == [kind]
    for key in ORT_BACKEND_PARAMETERS:  # only what the test sets, so the defaults can be seen
        cfg.parameters.pop(key, None)
    for key, value in (parameters or {}).items():
        cfg.parameters[key].string_value = value
    if level is not None:
        cfg.optimization.graph.level = level
    model_dir = root / name
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "config.pbtxt").write_text(mcfg.to_text(cfg))
    if model is not None:
        shutil.copyfile(model, model_dir / "1" / cfg.default_model_filename)
    return model_dir


def plain_scores(model: Path) -> np.ndarray:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return session.run(list(spec.OUTPUT_NAMES), REQUEST)[0]


def test_scores_match_plain_onnxruntime_and_config_options_are_applied(tmp_path, exported):
    params = {"intra_op_thread_count": "2", "inter_op_thread_count": "3", "execution_mode": "1",
              "enable_mem_pattern": "off", "session.use_device_allocator_for_initializers": "1",
              "memory.enable_memory_arena_shrinkage": "cpu:0"}
    session, applied = session_like_onnxruntime_backend(write_model_dir(tmp_path, exported, params, level=1))
    scores = session.run(list(spec.OUTPUT_NAMES), REQUEST, applied.run_options())[0]
    np.testing.assert_allclose(scores, plain_scores(exported), rtol=0, atol=1e-6)
    assert applied.model_path == tmp_path / "onerank_onnx_fp32" / "1" / "model.onnx"
    assert (applied.intra_op_num_threads, applied.inter_op_num_threads) == (2, 3)
    assert (applied.graph_optimization_level, applied.execution_mode) == ("ORT_ENABLE_EXTENDED", "ORT_PARALLEL")
    assert applied.enable_mem_pattern is False and applied.enable_cpu_mem_arena is True
    assert applied.session_config == {"session.use_device_allocator_for_initializers": "1"}
    assert applied.run_options().get_run_config_entry("memory.enable_memory_arena_shrinkage") == "cpu:0"
    assert applied.providers == ("CPUExecutionProvider",) and applied.not_reproduced == ()
    # What the record says is what the session holds.
    held = session.get_session_options()
    assert held.intra_op_num_threads == 2
    assert held.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED


def test_backend_defaults_when_the_config_says_nothing(tmp_path, exported):
    _, applied = session_like_onnxruntime_backend(write_model_dir(tmp_path, exported))
    assert (applied.graph_optimization_level, applied.execution_mode) == ("ORT_ENABLE_ALL", "ORT_SEQUENTIAL")
    assert (applied.intra_op_num_threads, applied.inter_op_num_threads) == (0, 0)  # ORT picks: one per core
    assert applied.enable_cpu_mem_arena and applied.enable_mem_pattern
    assert applied.session_config == {} and applied.run_config == {}


@pytest.mark.parametrize(("params", "level", "threads", "graph"), [
    ({"intra_op_thread_count": "-3"}, 3, 0, "ORT_ENABLE_ALL"),  # negative: skipped; unknown level: all
    ({"intra_op_thread_count": "2 threads"}, 2, 2, "ORT_DISABLE_ALL"),  # std::stoi reads the leading number
    ({"intra_op_thread_count": "0"}, -1, 0, "ORT_ENABLE_BASIC"),
])
def test_thread_counts_and_levels_are_read_the_backends_way(tmp_path, exported, params, level, threads, graph):
    _, applied = session_like_onnxruntime_backend(write_model_dir(tmp_path, exported, params, level=level))
    assert (applied.intra_op_num_threads, applied.graph_optimization_level) == (threads, graph)


def test_external_data_resolves_relative_to_the_version_directory(tmp_path, exported, monkeypatch):
    model_dir = write_model_dir(tmp_path, None)
    proto = onnx.load(str(exported))
    onnx.save_model(proto, str(model_dir / "1" / "model.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="model.onnx.data", size_threshold=1024)
    # (onnx's default threshold: ORT's shape inference cannot read small shape constants stored outside)
    assert (model_dir / "1" / "model.onnx.data").stat().st_size > 10_000  # the weights live outside
    moved = shutil.move(str(model_dir), str(tmp_path / "elsewhere"))  # a repository copied to the server
    monkeypatch.chdir(tmp_path)  # and a working directory that is not the model's
    session, applied = session_like_onnxruntime_backend(moved)
    assert applied.model_path == Path(moved) / "1" / "model.onnx"
    np.testing.assert_allclose(session.run(list(spec.OUTPUT_NAMES), REQUEST)[0], plain_scores(exported),
                               rtol=0, atol=1e-6)


def test_a_model_directory_named_like_the_model_file(tmp_path, exported):
    """The large-model layout: <version>/model.onnx/ is a directory holding model.onnx."""
    model_dir = write_model_dir(tmp_path, None)
    (model_dir / "1" / "model.onnx").mkdir()
    shutil.copyfile(exported, model_dir / "1" / "model.onnx" / "model.onnx")
    _, applied = session_like_onnxruntime_backend(model_dir)
    assert applied.model_path == model_dir / "1" / "model.onnx" / "model.onnx"


def test_a_missing_model_file_is_one_line(tmp_path):
    model_dir = write_model_dir(tmp_path, None)
    with pytest.raises(ConfigError) as err:
        session_like_onnxruntime_backend(model_dir)
    message = str(err.value)
    assert "\n" not in message and "unable to find" in message and str(model_dir / "1" / "model.onnx") in message


@pytest.mark.parametrize(("params", "words"), [
    ({"execution_mode": "2"}, "execution_mode must be 0 or 1"),
    ({"intra_op_thread_count": "four"}, "failed to convert 'four' to integral number"),
    ({"enable_mem_arena": "yes"}, "failed to convert 'yes' to boolean"),
])
def test_a_config_the_backend_refuses_is_one_line(tmp_path, exported, params, words):
    with pytest.raises(ConfigError) as err:
        session_like_onnxruntime_backend(write_model_dir(tmp_path, exported, params))
    assert words in str(err.value) and "would not load" in str(err.value) and "\n" not in str(err.value)


def test_gpu_providers_on_a_cpu_only_model_are_refused_and_gpu_kinds_are_noted(tmp_path, exported):
    with pytest.raises(ConfigError, match="KIND_CPU"):
        session_like_onnxruntime_backend(write_model_dir(tmp_path, exported), providers=("CUDAExecutionProvider",))
    _, applied = session_like_onnxruntime_backend(write_model_dir(tmp_path, exported, kind="KIND_GPU", name="g"))
    assert any("CUDA provider" in note for note in applied.not_reproduced)


def test_parsers_follow_the_backend_library():
    assert [backend_int(v) for v in ("4", " 4", "+4", "4x", "-1")] == [4, 4, 4, 4, -1]
    for bad in ("", "x4", "99999999999"):
        with pytest.raises(ValueError):
            backend_int(bad)
    assert [backend_bool(v) for v in ("TRUE", "on", "1", "False", "OFF", "0")] == [True] * 3 + [False] * 3
    with pytest.raises(ValueError):
        backend_bool("yes")


def test_only_onnx_runtime_backend_models(tmp_path, exported):
    model_dir = write_model_dir(tmp_path, exported)
    cfg = mcfg.read_config(model_dir / "config.pbtxt")
    cfg.platform, cfg.backend = "", "python"
    (model_dir / "config.pbtxt").write_text(mcfg.to_text(cfg))
    with pytest.raises(ConfigError, match="not a model of Triton's ONNX Runtime backend"):
        session_like_onnxruntime_backend(model_dir)


@pytest.mark.parametrize("change, words", [
    (lambda cfg: cfg.input[2].dims.__setitem__(0, TINY.num_context_fields + 1), "has shape"),
    (lambda cfg: cfg.input[4].dims.append(1), "has rank"),
    (lambda cfg: setattr(cfg.input[0], "data_type", mcfg.mc.TYPE_INT32), "tensor(int64) in the model"),
    (lambda cfg: setattr(cfg.output[0], "name", "probabilities"), "output 'probabilities'"),
])
def test_a_config_that_disagrees_with_the_graph_is_refused_like_the_backend(tmp_path, exported, change, words):
    """ModelState::ValidateInputs/ValidateOutputs: names, element types, ranks and static dims."""
    model_dir = write_model_dir(tmp_path, exported)
    cfg = mcfg.read_config(model_dir / "config.pbtxt")
    change(cfg)
    (model_dir / "config.pbtxt").write_text(mcfg.to_text(cfg))
    with pytest.raises(ConfigError) as err:
        session_like_onnxruntime_backend(model_dir)
    assert words in str(err.value) and "Triton would not load it" in str(err.value) and "\n" not in str(err.value)
