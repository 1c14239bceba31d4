"""The GPU-target shape of the cached model on a real tritonserver: `onerank` calls the user encoder and
the candidate scorer as Triton models (BLS, serving/bls.py). Here they are python-backend stand-ins that
run the halves' ONNX with ONNX Runtime (the bundled server has no TensorRT backend); on a GPU host the
same calls reach the TensorRT models."""

from __future__ import annotations

import shutil
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY, make_tiny_model, request

from onerank_export.export.onnx_config import CANDIDATE_SCORER_ONNX_CONFIG, USER_ENCODER_ONNX_CONFIG
from onerank_export.export.onnx_export import export_onnx
from onerank_export.serving import model_config as mcfg
from onerank_export.serving import parameters as names
from onerank_export.serving.cache_metrics import parse_cache_metrics
from onerank_export.serving.client import OneRankClient
from onerank_export.serving.profiles import Target, serving_plan
from onerank_export.serving.repository import PYTHON_MODEL_SOURCE
from onerank_export.serving.server import TritonServer
from onerank_export.serving.user_cache import CacheSettings
from onerank_export.user_states import ENCODER_INPUTS, SCORER_REQUEST_INPUTS, state_specs

pytestmark = pytest.mark.slow  # a real tritonserver with three models, ~25 s on 2 cores

STAND_IN = Path(__file__).parent / "standins" / "ort_model.py"
ENCODER, SCORER = "onerank_user_encoder_standin", "onerank_candidate_scorer_standin"
TYPES = {"int64": "TYPE_INT64", "float32": "TYPE_FP32"}


def _tensor(name: str, dtype: str, rank: int) -> str:
    return f'{{ name: "{name}" data_type: {TYPES[dtype]} dims: [{", ".join(["-1"] * rank)}] }}'


def _stand_in(repo: Path, name: str, onnx: Path, inputs: list[str], outputs: list[str]) -> None:
    (repo / name / "1").mkdir(parents=True)
    shutil.copyfile(onnx, repo / name / "1" / "model.onnx")
    shutil.copyfile(STAND_IN, repo / name / "1" / "model.py")
    text = (f'name: "{name}"\nbackend: "python"\nmax_batch_size: 0\ninput [{", ".join(inputs)}]\n'
            f'output [{", ".join(outputs)}]\ninstance_group [{{ kind: KIND_CPU count: 1 }}]\n')
    mcfg.parse_config(text)  # the schema accepts it
    (repo / name / "config.pbtxt").write_text(text)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    model = make_tiny_model()
    out = tmp_path_factory.mktemp("bls")
    enc, sc = out / "enc.onnx", out / "sc.onnx"
    export_onnx(model, enc, checkpoint_sha256="aa" * 32, export_config=USER_ENCODER_ONNX_CONFIG)
    export_onnx(model, sc, checkpoint_sha256="aa" * 32, export_config=CANDIDATE_SCORER_ONNX_CONFIG)
    repo = out / "model_repository"
    states = [_tensor(s.name, "float32", len(s.axes)) for s in state_specs(TINY)]
    hist = [_tensor(n, "int64", 2) for n in ENCODER_INPUTS]
    rest = [_tensor("context_ids", "int64", 2), _tensor("cand_item_ids", "int64", 2),
            _tensor("cand_features", "float32", 3)]
    assert [n for n in SCORER_REQUEST_INPUTS] == ["context_ids", "cand_item_ids", "cand_features"]
    _stand_in(repo, ENCODER, enc, hist, states)
    _stand_in(repo, SCORER, sc, states + rest, [_tensor("scores", "float32", 3)])
    plan = serving_plan(Target.CPU, "tests", "latency", threads=1)
    # No warm-up: BLS calls fail while the server is still starting ("Server not ready"); the called
    # models warm themselves up.
    cfg = mcfg.python_onnx_config("onerank", TINY, plan)
    params = {names.USER_ENCODER_MODEL_PARAMETER: ENCODER, names.CANDIDATE_SCORER_MODEL_PARAMETER: SCORER,
              names.USER_CACHE_IDENTITY_PARAMETER: "tests/bls",
              **CacheSettings(max_bytes=16 << 20).parameters()}
    for key, value in params.items():
        cfg.parameters[key].string_value = value
    (repo / "onerank" / "1").mkdir(parents=True)
    shutil.copyfile(PYTHON_MODEL_SOURCE, repo / "onerank" / "1" / "model.py")
    (repo / "onerank" / "config.pbtxt").write_text(mcfg.to_text(cfg))
    with TritonServer(repo, models=[ENCODER, SCORER, "onerank"], metrics_port=0, startup_timeout=90) as s:
        yield s, model


def test_bls_cached_model_is_a_miss_then_a_hit_and_matches_eager(server):
    server, model = server
    feed = request(TINY, 2, 15, 4, seed=21)
    with OneRankClient(server.http_url) as client:
        first, second = client.score(feed), client.score(feed)
    with urllib.request.urlopen(server.metrics_url, timeout=5) as response:
        metrics = parse_cache_metrics(response.read().decode(), "onerank")
    with torch.no_grad():
        eager = model(**{k: torch.from_numpy(v) for k, v in feed.items()}).scores.numpy()
    assert np.array_equal(first, second)
    assert np.abs(second - eager).max() <= 1e-6
    assert metrics["cache_hits_total.local"] == 2 and metrics["cache_misses_total"] == 2
