"""The user-state cache through a real tritonserver (python backend) on loopback: the `onerank` model
of a `--user-cache` repository keeps today's name and contract, a repeated request is a miss then a
hit with identical scores (the server's custom metrics say so), a changed history is a miss, and the
Redis tier serves a second instance's hits and is skipped, never fatal, when Redis is down."""

from __future__ import annotations

import shutil
import urllib.request

import numpy as np
import pytest
import torch
from helpers import TINY, make_tiny_model, request

from onerank_export.cli.main import main
from onerank_export.export.onnx_config import CANDIDATE_SCORER_ONNX_CONFIG, USER_ENCODER_ONNX_CONFIG
from onerank_export.export.onnx_export import export_onnx
from onerank_export.export.ort_cpu_graph import write_ort_cpu_model
from onerank_export.serving import model_config as mcfg
from onerank_export.serving.cache_metrics import parse_cache_metrics
from onerank_export.serving.client import OneRankClient
from onerank_export.serving.profiles import Target, serving_plan
from onerank_export.serving.redis_server import RedisServer
from onerank_export.serving.repository import UserCacheModels, write_model_repository
from onerank_export.serving.server import TritonServer
from onerank_export.serving.user_cache import CacheSettings

pytestmark = pytest.mark.slow  # a real tritonserver and redis-server, ~40 s on 2 cores

SHARED = "onerank_shared"  # a second copy of the model whose only tier is Redis


@pytest.fixture(scope="module")
def redis():
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="module")
def server(tmp_path_factory, redis):
    model = make_tiny_model()
    out = tmp_path_factory.mktemp("cached-build")
    onnx = {name: out / f"{name}.onnx" for name in ("single", "encoder", "scorer")}
    export_onnx(model, onnx["single"], checkpoint_sha256="ef" * 32)
    export_onnx(model, onnx["encoder"], checkpoint_sha256="ef" * 32, export_config=USER_ENCODER_ONNX_CONFIG)
    export_onnx(model, onnx["scorer"], checkpoint_sha256="ef" * 32, export_config=CANDIDATE_SCORER_ONNX_CONFIG)
    cpu = write_ort_cpu_model(onnx["single"], out / "single.cpu.onnx")
    plan = serving_plan(Target.CPU, "tests", "latency", threads=1)
    repo = write_model_repository(out, TINY, plan, {"fp32": onnx["single"]}, {}, None, cpu_onnx={"fp32": cpu},
                                  user_cache=UserCacheModels(onnx["encoder"], onnx["scorer"],
                                                             CacheSettings(max_bytes=64 << 20)))
    # The same model with Redis as its only tier, as a second instance on another host would see it.
    shutil.copytree(repo.path / "onerank", repo.path / SHARED)
    cfg = mcfg.read_config(repo.path / SHARED / "config.pbtxt")
    cfg.name = SHARED
    shared = CacheSettings(max_bytes=0, redis_url=redis.url, retry_after_s=0.5, redis_timeout_s=0.2)
    for name, value in shared.parameters().items():
        cfg.parameters[name].string_value = value
    (repo.path / SHARED / "config.pbtxt").write_text(mcfg.to_text(cfg))
    with TritonServer(repo.path, models=["onerank", SHARED], metrics_port=0, startup_timeout=90) as s:
        yield s, model


def _metrics(server, model="onerank"):
    with urllib.request.urlopen(server.metrics_url, timeout=5) as response:
        return parse_cache_metrics(response.read().decode(), model)


def _eager(model, feed):
    with torch.no_grad():
        return model(**{k: torch.from_numpy(v) for k, v in feed.items()}).scores.numpy()


def test_same_request_is_a_miss_then_a_hit_with_identical_scores(server):
    server, model = server
    feed = request(TINY, 2, 17, 6, seed=11)
    before = _metrics(server)
    with OneRankClient(server.http_url) as client:
        first = client.score(feed)
        after_first = _metrics(server)
        second = client.score(feed)
        after_second = _metrics(server)
    assert np.array_equal(first, second)
    assert np.abs(second - _eager(model, feed)).max() <= 1e-6
    assert after_first["cache_misses_total"] - before.get("cache_misses_total", 0) == 2
    assert after_second["cache_misses_total"] == after_first["cache_misses_total"]
    assert after_second["cache_hits_total.local"] - after_first.get("cache_hits_total.local", 0) == 2
    assert after_second["cache_entries"] >= 2 and after_second["cache_bytes"] > 0
    assert after_first["encoder_seconds_total"] > before.get("encoder_seconds_total", 0)


def test_changed_history_id_is_a_miss_and_scored_exactly(server):
    server, model = server
    feed = request(TINY, 1, 12, 5, seed=12)
    with OneRankClient(server.http_url, protocol="grpc" if False else "http") as client:
        client.score(feed)
        misses = _metrics(server)["cache_misses_total"]
        changed = {k: v.copy() for k, v in feed.items()}
        changed["hist_item_ids"][0, -1] = changed["hist_item_ids"][0, -1] % (TINY.item_vocab_size - 1) + 1
        scores = client.score(changed)
    assert _metrics(server)["cache_misses_total"] == misses + 1
    assert np.abs(scores - _eager(model, changed)).max() <= 1e-6


def test_verify_checks_the_cached_model_and_prints_its_cache_metrics(server, tmp_path, capsys):
    server, _ = server
    code = main(["verify", "--checkpoint", str(_tiny_checkpoint(tmp_path)), "--triton", server.http_url,
                 "--triton-metrics", server.metrics_url, "--reports", str(tmp_path / "reports")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "user-state cache of onerank:" in out and "local hits" in out and "misses" in out


def test_redis_tier_serves_hits_and_a_down_redis_only_costs_misses(server, redis):
    server, model = server
    feed = request(TINY, 1, 9, 4, seed=13)
    with OneRankClient(server.http_url, model_name=SHARED) as client:
        first = client.score(feed)
        second = client.score(feed)
        shared = _metrics(server, SHARED)
        assert np.array_equal(first, second)
        assert shared["cache_hits_total.shared"] >= 1 and shared.get("cache_hits_total.local", 0) == 0
        redis.stop()
        try:
            again = client.score(feed)  # Redis is gone: computed, never an error
            assert np.abs(again - _eager(model, feed)).max() <= 1e-6
            assert _metrics(server, SHARED)["cache_shared_errors_total"] >= 1
        finally:
            redis.start()


def _tiny_checkpoint(tmp_path):
    from onerank_export.model.checkpoint import save_checkpoint

    path = tmp_path / "checkpoint"
    save_checkpoint(make_tiny_model(), path)
    return path
