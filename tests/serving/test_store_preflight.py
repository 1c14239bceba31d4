"""`serve` opens the lookup models' embedding stores before it starts tritonserver: a bad store is the
store's one-line error and exit 1, with no server started (issue 13, Build 6)."""

from __future__ import annotations

import pytest
from helpers import TINY, make_tiny_model

from onerank_export.cli.main import main
from onerank_export.embeddings.store import write_store
from onerank_export.errors import StageError
from onerank_export.model.checkpoint import save_checkpoint
from onerank_export.serving import model_config as mcfg
from onerank_export.serving.parameters import EMBEDDING_BACKEND_PARAMETER, EMBEDDING_REDIS_URL_PARAMETER
from onerank_export.serving.profiles import Target, serving_plan
from onerank_export.serving.repository import LOOKUP_MODEL, _write_model
from onerank_export.serving.store_preflight import check_lookup_stores


@pytest.fixture
def repo(tmp_path):
    """A repository with the lookup model only, reading DIR/embeddings as a split build's does."""
    ckpt = save_checkpoint(make_tiny_model(seed=2), tmp_path / "ckpt")
    write_store(ckpt, tmp_path / "build" / "embeddings", "fp32")
    repo = tmp_path / "build" / "model_repository"
    plan = serving_plan(Target.CPU, "--target cpu", "latency", cores=2)
    _write_model(repo / LOOKUP_MODEL, mcfg.lookup_config(LOOKUP_MODEL, TINY, plan, "../../embeddings"), {})
    return repo


def test_a_good_store_passes(repo):
    assert check_lookup_stores(repo, [LOOKUP_MODEL]) == [LOOKUP_MODEL]


def test_a_truncated_store_stops_serve_in_one_line_before_the_server_starts(repo, capsys):
    data = repo.parent / "embeddings" / "item.float32.bin"
    size = data.stat().st_size
    with open(data, "r+b") as f:
        f.truncate(size - 4)
    code = main(["serve", "--repository", str(repo), "--startup-timeout", "5"])
    io = capsys.readouterr()
    lines = [line for line in io.err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1, io.err
    assert lines[0].startswith(f"error: {LOOKUP_MODEL}: ")
    assert f"file item.float32.bin has {size - 4} bytes, index says {size} " in lines[0]
    assert lines[0].endswith("rebuild the store; tritonserver was not started")
    assert "starting tritonserver" not in io.out


def test_a_store_of_another_shape_is_refused_naming_the_model(repo, tmp_path):
    """The store of a d=8 model behind a d=16 model's lookup: what the lookup's load would refuse."""
    ckpt = save_checkpoint(make_tiny_model(seed=2, d_model=8), tmp_path / "ckpt8")
    write_store(ckpt, repo.parent / "embeddings", "fp32")
    with pytest.raises(StageError) as exc:
        check_lookup_stores(repo, [LOOKUP_MODEL])
    assert str(exc.value).startswith(f"{LOOKUP_MODEL}: ") and "\n" not in str(exc.value)
    assert str(exc.value).endswith("; tritonserver was not started")


def test_a_redis_lookup_is_not_contacted(repo):
    config = mcfg.read_config(repo / LOOKUP_MODEL / "config.pbtxt")
    config.parameters[EMBEDDING_BACKEND_PARAMETER].string_value = "redis"
    config.parameters[EMBEDDING_REDIS_URL_PARAMETER].string_value = "redis://127.0.0.1:1/0"  # nothing listens
    (repo / LOOKUP_MODEL / "config.pbtxt").write_text(mcfg.to_text(config))
    (repo.parent / "embeddings" / "item.float32.bin").unlink()  # and the store is gone: not read either
    assert check_lookup_stores(repo, [LOOKUP_MODEL]) == []
