"""The user's path end to end with the defaults: `build --target cpu` (default profile, latency), then
the bundled tritonserver loads the repository as written (the python-backend model; the ONNX Runtime
models are skipped with a reason) and what it serves matches eager within 1e-5."""

from __future__ import annotations

import json

import pytest
from helpers import TINY, make_tiny_model

from onerank_export.cli.main import main
from onerank_export.model.checkpoint import save_checkpoint
from onerank_export.parity.cases import default_cases
from onerank_export.parity.runners import EagerDenseRunner
from onerank_export.parity.suite import run_parity
from onerank_export.parity.triton_runner import TritonRunner
from onerank_export.serving.model_config import read_config
from onerank_export.serving.server import TritonServer, resolve_repository, servable_models

pytestmark = pytest.mark.slow  # a build and a real tritonserver, ~40 s on 2 cores


def test_a_default_cpu_build_is_served_as_written_and_matches_eager(tmp_path, capsys):
    ckpt = save_checkpoint(make_tiny_model(), tmp_path / "ckpt")
    out = tmp_path / "build"
    code = main(["build", "--checkpoint", str(ckpt), "--out", str(out), "--precision", "none", "--engine", "skip",
                 "--target", "cpu"])
    assert code == 0, capsys.readouterr().err
    repo = resolve_repository(out)
    python = read_config(repo / "onerank" / "config.pbtxt")
    assert (python.instance_group[0].count, python.dynamic_batching.max_queue_delay_microseconds) == (1, 0)  # latency
    load, skipped = servable_models(repo)
    assert load == ["onerank"] and [name for name, _ in skipped] == ["onerank_onnx_fp32"]
    triton = next(s for s in json.loads((out / "manifest.json").read_text())["stages"] if s["name"] == "triton")
    assert triton["metrics"]["profile"] == "latency" and triton["status"] == "ok"
    with TritonServer(repo, models=load, startup_timeout=90) as server:
        report = run_parity(EagerDenseRunner(make_tiny_model()), [(TritonRunner(server.http_url), "fp32")],
                            default_cases(TINY, seed=5), {})
    assert report.passed and max(o.max_abs for c in report.cases for o in c.outputs) <= 1e-5
