"""The pipeline runner: preflight before any slow work (also for Python callers), the error rule
that turns a stage's exception into a FAILED verdict or a stop, and the plan's requires/provides."""

from __future__ import annotations

import json

import pytest
from helpers import make_tiny_model

from onerank_export.errors import ConfigError, OneRankError, StageError
from onerank_export.model.checkpoint import save_checkpoint
from onerank_export.pipeline.options import BuildOptions
from onerank_export.pipeline.result import StageResult, Status
from onerank_export.pipeline.runner import build, preflight
from onerank_export.pipeline.stages.base import Stage
from onerank_export.pipeline.stages.checkpoint import CheckpointStage
from onerank_export.pipeline.stages.engine import EngineStage, EngineToolchain


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return save_checkpoint(make_tiny_model(), tmp_path_factory.mktemp("ckpt") / "tiny")


class Raising(Stage):
    requires = ("model",)

    def __init__(self, name: str, error: Exception, critical: bool = False) -> None:
        self.name, self.error, self.critical = name, error, critical

    def run(self, state):
        (state.work / f"{self.name}.partial").write_text("half")
        raise self.error


class Writes(Stage):
    name = "writes"
    requires = ("model",)
    provides = ("onnx",)

    def run(self, state):
        path = state.work / "reports" / "r.json"
        path.parent.mkdir()
        path.write_text("{}")
        return StageResult(self.name, Status.OK, "wrote a report", {"report": path})


def test_a_failing_stage_fails_alone_and_the_build_still_writes_everything(tiny_ckpt, tmp_path):
    out = tmp_path / "b"
    stages = [CheckpointStage(), Raising("calibrate", StageError("gate failed: top10 overlap 0.5")), Writes()]
    outcome = build(BuildOptions(out=out, checkpoint=tiny_ckpt), stages=stages)
    assert not outcome.passed
    assert [(s.name, s.status) for s in outcome.stages] == [
        ("checkpoint", Status.OK), ("calibrate", Status.FAILED), ("writes", Status.OK)]
    assert outcome.stages[1].verdict == "failed: gate failed: top10 overlap 0.5"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["passed"] is False and [a["role"] for a in manifest["artifacts"]] == ["report"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


@pytest.mark.parametrize("error, critical", [(StageError("export failed: x"), True), (RuntimeError("a bug"), False)])
def test_a_critical_stage_error_or_a_bug_stops_the_build_and_leaves_nothing(tiny_ckpt, tmp_path, error, critical):
    out = tmp_path / "b"
    stages = [CheckpointStage(), Raising("export", error, critical=critical), Writes()]
    with pytest.raises(type(error), match=str(error)):
        build(BuildOptions(out=out, checkpoint=tiny_ckpt), stages=stages)
    assert list(tmp_path.iterdir()) == []


def test_build_from_python_runs_the_preflight_before_training_or_writing(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("ONERANK_EXPORT_CACHE", str(cache))
    not_a_build = tmp_path / "notes"
    not_a_build.mkdir()
    (not_a_build / "mine.txt").write_text("x")
    with pytest.raises(OneRankError, match="holds no onerank-export build"):
        build(BuildOptions(out=not_a_build))
    unavailable = EngineStage("require", toolchain=EngineToolchain(unavailable_reason=lambda: "no CUDA device"))
    with pytest.raises(StageError, match="--engine require: cannot build TensorRT engines here"):
        build(BuildOptions(out=tmp_path / "b"), stages=[CheckpointStage(), Writes(), unavailable])
    assert list(cache.iterdir()) == []  # the demo checkpoint was never trained
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "notes"]


def test_a_stage_that_requires_what_no_earlier_stage_provides_is_refused(tmp_path):
    with pytest.raises(AssertionError, match="writes requires"):
        preflight(BuildOptions(out=tmp_path / "b"), [Writes(), CheckpointStage()])


def test_options_accept_strings_and_record_the_manifest_options(tmp_path):
    options = BuildOptions(out=tmp_path, precisions=("int8",), engine="skip")
    assert options.describe()["precisions"] == ["int8"] and options.describe()["engine"] == "skip"
    with pytest.raises(ConfigError, match="precision 'bf16' is not one of fp32, fp16, int8"):
        BuildOptions(out=tmp_path, precisions=("bf16",))
    with pytest.raises(StageError, match="--engine 'always': expected one of auto, require, skip"):
        BuildOptions(out=tmp_path, engine="always")
    with pytest.raises(ConfigError, match="calibration method 'kl'"):
        BuildOptions(out=tmp_path, calibration_method="kl")
