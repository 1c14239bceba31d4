"""Serving-time bad stores (issue 13, Build 6): a truncated store file, or a corrupted one with
`onerank.embedding_verify: yes`, makes `onerank_lookup` fail to LOAD with the store's one-line error in
the server's answer and log, while the server process and the other models stay up (explicit model
control: the ensemble `onerank` then cannot load either)."""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request

import pytest
from helpers import make_tiny_model

from onerank_export.cli.main import main
from onerank_export.model.checkpoint import save_checkpoint
from onerank_export.serving.server import TritonServer, resolve_repository

pytestmark = pytest.mark.slow  # a build and a real tritonserver per fault


@pytest.fixture(scope="module")
def split_build(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad-store")
    ckpt = save_checkpoint(make_tiny_model(seed=8), tmp / "ckpt")
    out = tmp / "build"
    assert main(["build", "--checkpoint", str(ckpt), "--out", str(out), "--engine", "skip", "--target", "cpu",
                 "--embeddings", "split"]) == 0
    return out


def _truncate(build):
    data = build / "embeddings" / "item.float32.bin"
    size = data.stat().st_size
    with open(data, "r+b") as f:
        f.truncate(size - 4)
    return f"file item.float32.bin has {size - 4} bytes, index says {size} "


def _corrupt_and_verify(build):
    data = build / "embeddings" / "item.float32.bin"
    raw = bytearray(data.read_bytes())
    raw[100] ^= 0xFF  # same size: only the sha256 tells
    data.write_bytes(bytes(raw))
    config = build / "model_repository" / "onerank_lookup" / "config.pbtxt"
    config.write_text(config.read_text() + 'parameters {\n  key: "onerank.embedding_verify"\n'
                      '  value {\n    string_value: "yes"\n  }\n}\n')
    return "file item.float32.bin sha256 "


def _store_error(build) -> str:
    from onerank_export.embeddings.backends import open_lookup
    from onerank_export.embeddings.store import StoreError

    config = (build / "model_repository" / "onerank_lookup" / "config.pbtxt").read_text()
    params = {"embedding_store": "../../embeddings",  # as the lookup model's config.pbtxt has it
              "embedding_verify": "yes" if "onerank.embedding_verify" in config else "no"}
    with pytest.raises(StoreError) as exc:
        open_lookup(params, base=str((build / "model_repository" / "onerank_lookup").resolve()))
    return str(exc.value)


def _post(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=b"{}", method="POST"), timeout=60) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _ready(server, model: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{server.http_url}/v2/models/{model}/ready", timeout=5) as r:
            return r.status == 200
    except urllib.error.URLError:
        return False


@pytest.mark.parametrize("fault", [_truncate, _corrupt_and_verify], ids=["truncated", "corrupt-verify"])
def test_a_bad_store_fails_the_lookup_load_in_one_line_and_the_server_stays_up(split_build, tmp_path, fault):
    build = tmp_path / "build"
    shutil.copytree(split_build, build)
    problem = fault(build)
    repo = resolve_repository(build)
    with TritonServer(repo, models=["onerank_dense"], startup_timeout=120) as server:
        status, body = _post(f"http://{server.http_url}/v2/repository/models/onerank_lookup/load")
        assert status == 400, body
        error = json.loads(body)["error"]
        # The store's own one-line error, as open_store gives it outside the server, ends the answer's first
        # line (the python backend appends the Python traceback on the lines after it).
        expected = _store_error(build)
        assert problem in expected and "rebuild the store" in expected and "\n" not in expected
        assert error.splitlines()[0].startswith("load failed for model 'onerank_lookup'")
        assert error.splitlines()[0].endswith(expected), error
        # the ensemble needs the lookup: it cannot load either, and says which step failed
        status, body = _post(f"http://{server.http_url}/v2/repository/models/onerank/load")
        assert status == 400 and "onerank_lookup" in json.loads(body)["error"], body
        # the server and the dense model stay up
        assert server.process.poll() is None
        assert _ready(server, "onerank_dense") and not _ready(server, "onerank_lookup")
        log = server.log_file.read_text(errors="replace")
        assert any(expected in line and "onerank_lookup" in line for line in log.splitlines()), log[-3000:]
        assert "failed to load 'onerank_lookup'" in server.last_error() and expected in server.last_error()
