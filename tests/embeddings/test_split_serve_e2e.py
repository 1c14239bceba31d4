"""Split mode end to end: `build --embeddings split --target cpu`, then the bundled tritonserver serves the
`onerank` ensemble (lookup -> dense) to the same client code as the inline model, within 1e-6 of eager
(fp32 store); an id past the table under --embedding-oov error is INVALID_ARGUMENT and the server keeps
answering."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import TINY, make_tiny_model, request

from onerank_export.cli.main import main
from onerank_export.errors import RequestError
from onerank_export.model.checkpoint import save_checkpoint
from onerank_export.parity.cases import default_cases
from onerank_export.parity.runners import EagerDenseRunner
from onerank_export.parity.suite import run_parity
from onerank_export.parity.triton_runner import TritonRunner
from onerank_export.serving.server import TritonServer, resolve_repository, servable_models

pytestmark = pytest.mark.slow  # a build and a real tritonserver


def test_split_build_serves_the_ensemble_within_1e6_and_refuses_ids_past_the_table(tmp_path, capsys):
    ckpt = save_checkpoint(make_tiny_model(), tmp_path / "ckpt")
    out = tmp_path / "build"
    code = main(["build", "--checkpoint", str(ckpt), "--out", str(out), "--engine", "skip", "--target", "cpu",
                 "--embeddings", "split", "--embedding-oov", "error"])
    assert code == 0, capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    stages = {s["name"]: s for s in manifest["stages"]}
    assert list(stages) == ["checkpoint", "embeddings", "fp16", "int8", "engine", "triton", "parity"]
    assert all(stages[p]["status"] == "ok" and "dense graph" in stages[p]["verdict"] for p in ("fp16", "int8"))
    assert stages["parity"]["metrics"]["max_abs"]["split-fp32[fp32]"] <= 1e-6
    repo = resolve_repository(out)
    # one store, referenced (not copied) by the lookup model
    assert sorted(p.name for p in out.rglob("item.float32.bin")) == ["item.float32.bin"]
    load, skipped = servable_models(repo)
    assert sorted(load) == ["onerank", "onerank_dense", "onerank_lookup"]
    # the ONNX Runtime backend's dense model, and its ensemble, are for NVIDIA's Triton container
    assert [name for name, _ in skipped] == [f"{model}_{p}" for model in ("onerank_dense_onnx", "onerank_onnx")
                                             for p in ("fp16", "fp32", "int8")]
    with TritonServer(repo, models=load, startup_timeout=120) as server:
        report = run_parity(EagerDenseRunner(make_tiny_model()), [(TritonRunner(server.http_url), "fp32")],
                            default_cases(TINY, seed=5), {})
        assert report.passed and max(o.max_abs for c in report.cases for o in c.outputs) <= 1e-6
        from onerank_export.serving.client import OneRankClient

        client = OneRankClient(server.http_url)
        client.validate = False  # let the server judge the id, as a client without the contract checker would
        bad = request(TINY, 1, 5, 4, seed=2)
        bad["cand_item_ids"][0, 1] = TINY.item_vocab_size + 7
        with pytest.raises(RequestError) as e:
            client.score(bad)
        text = str(e.value)
        assert "embedding table 'item': id 307" in text and "\n" not in text
        good = request(TINY, 1, 5, 4, seed=3)
        scores = client.score(good)
        want = EagerDenseRunner(make_tiny_model()).infer_impl(good)["scores"]
        np.testing.assert_allclose(np.asarray(scores), want, atol=1e-6)


def test_split_build_with_the_redis_backend_serves_pushed_rows_and_survives_redis_going_down(tmp_path, capsys):
    """The same ensemble with `--embedding-backend redis`: before the push the lookup answers UNAVAILABLE,
    after `embeddings push` the scores are eager's within 1e-6, Redis down is UNAVAILABLE (one line)
    while the server keeps answering, and Redis back is served again."""
    import urllib.request

    from onerank_export.serving.client import OneRankClient
    from onerank_export.serving.redis_server import RedisServer

    ckpt = save_checkpoint(make_tiny_model(), tmp_path / "ckpt")
    out = tmp_path / "build"
    with RedisServer() as redis:
        code = main(["build", "--checkpoint", str(ckpt), "--out", str(out), "--engine", "skip", "--target", "cpu",
                     "--embeddings", "split", "--embedding-backend", "redis", "--embedding-redis", redis.url])
        assert code == 0, capsys.readouterr().err
        repo = resolve_repository(out)
        load, _ = servable_models(repo)
        good = request(TINY, 2, 6, 5, seed=4)
        want = EagerDenseRunner(make_tiny_model()).infer_impl(good)["scores"]
        with TritonServer(repo, models=load, startup_timeout=120) as server:
            client = OneRankClient(server.http_url)
            with pytest.raises(RequestError) as e:  # nothing pushed yet
                client.score(good)
            assert "\n" not in str(e.value)
            assert main(["embeddings", "push", "--store", str(out), "--redis", redis.url]) == 0
            np.testing.assert_allclose(client.score(good), want, atol=1e-6)
            redis.stop()
            with pytest.raises(RequestError) as e:
                client.score(good)
            assert "\n" not in str(e.value)
            with urllib.request.urlopen(f"http://{server.http_url}/v2/health/ready", timeout=5) as r:
                assert r.status == 200  # the server keeps answering
            redis.start()
            assert main(["embeddings", "push", "--store", str(out), "--redis", redis.url]) == 0
            np.testing.assert_allclose(client.score(good), want, atol=1e-6)
