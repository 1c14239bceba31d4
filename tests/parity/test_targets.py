"""One way to make runners for a set of artifacts: names, precisions, and plans judged by metadata."""

from __future__ import annotations

import json

import onnx
import pytest
from helpers import make_tiny_model
from onnx import helper

from onerank_export.engine.tensorrt.plan_metadata import PLAN_META_FORMAT, metadata_path
from onerank_export.errors import ConfigError
from onerank_export.parity.runners import OnnxRuntimeRunner
from onerank_export.parity.targets import ParityTargets, build_runners, plan_precision
from onerank_export.precision import Precision


def _onnx(path, precision: str):
    """An ONNX file whose only content that matters here is its precision metadata."""
    model = helper.make_model(helper.make_graph([], "g", [], []))
    model.metadata_props.add(key="onerank.precision", value=precision)
    onnx.save(model, str(path))
    return path


def _plan(path, precision: str | None):
    path.write_bytes(b"not a real engine")
    if precision is not None:
        meta = {"format": PLAN_META_FORMAT, "plan": path.name, "plan_sha256": "0", "precision": precision,
                "tensorrt_version": "10.8", "gpu": {}, "profile": {}, "onnx": {}, "plugin_library": None,
                "build_seconds": 1.0}
        metadata_path(path).write_text(json.dumps(meta))
    return path


def _names(runners):
    return [(r.name, p) for r, p in runners]


def test_a_build_and_a_verify_of_the_same_files_name_runners_alike(tmp_path):
    fp32, fp16 = _onnx(tmp_path / "onerank.fp32.onnx", "fp32"), _onnx(tmp_path / "onerank.fp16.onnx", "fp16")
    model = make_tiny_model()
    from_build = build_runners(model, ParityTargets(onnx={Precision.FP32: fp32, Precision.FP16: fp16}))
    from_verify = build_runners(model, ParityTargets(onnx=[fp32, fp16]))
    expected = [("eager-serving", "fp32"), ("onnxruntime-fp32", "fp32"), ("onnxruntime-fp16", "fp16"),
                ("onnxruntime-fp32-canonical", "fp32"), ("onnxruntime-fp16-canonical", "fp16")]
    assert _names(from_build) == _names(from_verify) == expected
    assert all(isinstance(p, Precision) for _, p in from_build + from_verify)
    ort = [r for r, _ in from_verify if isinstance(r, OnnxRuntimeRunner)]
    assert [r.cpu_rewrite for r in ort] == [True, True, False, False]


def test_targets_sharing_a_precision_get_the_file_name_then_the_path(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    one, two = _onnx(tmp_path / "one.onnx", "fp16"), _onnx(tmp_path / "two.onnx", "fp16")
    names = [n for n, _ in _names(build_runners(make_tiny_model(), ParityTargets(onnx=[one, two])))]
    assert names[1:] == ["onnxruntime-fp16:one.onnx", "onnxruntime-fp16:two.onnx",
                         "onnxruntime-fp16-canonical:one.onnx", "onnxruntime-fp16-canonical:two.onnx"]
    a, b = _onnx(tmp_path / "a" / "m.onnx", "fp32"), _onnx(tmp_path / "b" / "m.onnx", "fp32")
    names = [n for n, _ in _names(build_runners(make_tiny_model(), ParityTargets(onnx=[a, b])))]
    assert names[1:3] == [f"onnxruntime-fp32:{a}", f"onnxruntime-fp32:{b}"]
    assert len(set(names)) == len(names)


def test_a_plan_precision_comes_from_its_metadata_not_its_file_name(tmp_path):
    plan = _plan(tmp_path / "onerank.fp16.plan", "int8")
    assert plan_precision(plan) is Precision.INT8
    runners = build_runners(make_tiny_model(), ParityTargets(plans=[plan], plugin=tmp_path / "lib.so"))
    (trt, precision), = runners[1:]
    assert (trt.name, precision) == ("tensorrt-int8", Precision.INT8)
    assert trt.plan == plan and trt.plugin_library == tmp_path / "lib.so"


def test_a_plan_without_usable_metadata_is_a_one_line_config_error(tmp_path):
    plan = _plan(tmp_path / "onerank.fp16.plan", None)
    with pytest.raises(ConfigError) as exc:
        build_runners(make_tiny_model(), ParityTargets(plans=[plan]))
    message = str(exc.value)
    assert "\n" not in message and message.startswith(str(plan))
    assert "onerank.fp16.plan.json" in message and "missing" in message and "rebuild the engine" in message
    metadata_path(plan).write_text("{")
    with pytest.raises(ConfigError, match="not readable plan metadata"):
        plan_precision(plan)
    _plan(plan, "bf16")
    with pytest.raises(ConfigError, match="'bf16' is not one of fp32, fp16, int8"):
        plan_precision(plan)
