"""The Redis lookup backend (embeddings/redis_backend.py, backends.py) against a real redis-server on loopback
(serving/redis_server.py): push + verification, lookups equal to the store's, and every fault's one line."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import time

import numpy as np
import pytest
import redis
from helpers import make_tiny_model

from onerank_export.embeddings.backends import open_lookup
from onerank_export.embeddings.redis_backend import RedisTable, default_prefix, push, value_size
from onerank_export.embeddings.store import StoreError, open_store, write_store
from onerank_export.errors import ConfigError, RequestError, ServiceUnavailable, StageError
from onerank_export.model.checkpoint import save_checkpoint
from onerank_export.serving.redis_server import RedisServer

ROWS, DIM = 300, 16  # the tiny model's item table


@pytest.fixture
def server(redis_server):
    return redis_server  # the session's loopback redis-server (tests/conftest.py); each test its own prefix


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """{dtype: store dir} for fp32/fp16/int8, plus "error": an fp32 store with the error OOV policy."""
    root = tmp_path_factory.mktemp("stores")
    ckpt = save_checkpoint(make_tiny_model(seed=3), root / "ckpt")
    out = {dtype: root / dtype for dtype in ("fp32", "fp16", "int8")}
    for dtype, path in out.items():
        write_store(ckpt, path, dtype)
    write_store(ckpt, root / "error", "fp32", oov="error")
    out["error"] = root / "error"
    return out


@pytest.fixture
def prefix(request) -> str:
    return "test:" + request.node.name.replace("[", "-").replace("]", "") + ":"  # no glob characters (SCAN)


def admin(server) -> redis.Redis:
    return redis.Redis.from_url(server.url)


def one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message
    return message


def mget_calls(client: redis.Redis) -> int:
    return client.info("commandstats").get("cmdstat_mget", {}).get("calls", 0)


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "int8"])
def test_push_verifies_then_lookup_equals_the_store_exactly(server, stores, prefix, dtype):
    progress = []
    report = push(stores[dtype], server.url, prefix=prefix, batch_rows=128, progress=lambda *a: progress.append(a))
    assert [p[:2] for p in progress] == [(128, ROWS), (256, ROWS), (ROWS, ROWS)]
    store = open_store(stores[dtype])
    entry = store.index["tables"]["item"]
    assert (report.rows, report.bytes, report.sampled) == (ROWS, ROWS * value_size(entry), ROWS)
    db = admin(server)
    meta = json.loads(db.get(f"{prefix}index"))
    assert meta["tables"]["item"] == entry and meta["checkpoint_sha256"] == store.checkpoint_sha256
    assert len(list(db.scan_iter(f"{prefix}item:*", count=1000))) == ROWS
    raw = db.get(f"{prefix}item:7")  # the documented layout: row bytes (+ the int8 scale)
    expected = store.tables["item"].data[7].tobytes()
    if dtype == "int8":
        expected += store.tables["item"].scale[7:8].astype("<f4").tobytes()
    assert raw == expected

    table = RedisTable(server.url, prefix, batch_rows=64)
    assert (table.rows, table.dim, table.dtype) == (ROWS, DIM, entry["dtype"])
    ids = np.array([[0, 5, 299], [7, 7, 1]])
    np.testing.assert_array_equal(table.lookup(ids), store.table().lookup(ids))
    before = mget_calls(db)
    everything = table.lookup(np.arange(ROWS)[::-1])
    assert mget_calls(db) - before == 5  # 300 distinct rows in MGETs of 64
    np.testing.assert_array_equal(everything, store.table().lookup(np.arange(ROWS)[::-1]))
    assert everything.dtype == np.float32


def test_l256_n512_request_dedupes_ids_into_one_round_trip_of_mgets(server, stores, prefix):
    push(stores["fp32"], server.url, prefix=prefix)
    table = RedisTable(server.url, prefix, batch_rows=256)
    rng = np.random.default_rng(1)
    hist, cand = rng.integers(0, ROWS, size=(1, 256)), rng.integers(0, ROWS, size=(1, 512))
    ids = np.concatenate([hist, cand], axis=1)
    before = mget_calls(admin(server))
    rows = table.lookup(ids)
    assert mget_calls(admin(server)) - before == -(-len(np.unique(ids)) // 256)
    np.testing.assert_array_equal(rows, open_store(stores["fp32"]).table().lookup(ids))


def test_ids_past_the_table_get_the_pad_row_or_a_one_line_error(server, stores, prefix):
    push(stores["fp32"], server.url, prefix=prefix + "pad:")
    padded = RedisTable(server.url, prefix + "pad:").lookup(np.array([3, ROWS, -1, ROWS + 10**9]))
    pad = open_store(stores["fp32"]).table().lookup(np.array([3, 0, 0, 0]))
    np.testing.assert_array_equal(padded, pad)

    push(stores["error"], server.url, prefix=prefix + "err:")
    strict = RedisTable(server.url, prefix + "err:")
    with pytest.raises(RequestError) as exc:
        strict.lookup(np.array([[1, ROWS + 5, 2, -3]]))
    assert one_line(exc) == (f"embedding table item: id {ROWS + 5} outside rows 0..{ROWS - 1} (2 such ids; "
                             "out-of-vocabulary policy 'error'); send ids below the table size or build the store "
                             "with --oov pad")


def test_a_missing_row_key_is_unavailable_naming_table_and_row(server, stores, prefix):
    push(stores["int8"], server.url, prefix=prefix)
    admin(server).delete(f"{prefix}item:42")
    table = RedisTable(server.url, prefix)
    table.lookup(np.array([1, 2, 43]))  # other rows still answer
    with pytest.raises(ServiceUnavailable) as exc:
        table.lookup(np.array([[1, 42, 42]]))
    assert one_line(exc).startswith(f"embedding table item, row 42: key {prefix}item:42 in Redis at {server.url} "
                                    "is missing; re-run `onerank-export embeddings push`")


def test_redis_stopping_or_hanging_mid_lookup_is_unavailable_within_the_timeout(stores):
    with RedisServer() as own:
        push(stores["fp32"], own.url, prefix="p:")
        table = RedisTable(own.url, "p:", socket_timeout=0.3)
        table.lookup(np.array([1, 2]))
        os.kill(own.process.pid, signal.SIGSTOP)  # hung: the kernel accepts, nothing answers
        try:
            started = time.monotonic()
            with pytest.raises(ServiceUnavailable) as exc:
                table.lookup(np.array([3, 4]))
            assert time.monotonic() - started < 2.0
            assert one_line(exc).startswith(f"embedding table item: Redis at {own.url} failed looking up 2 rows "
                                            "(first row 3): Timeout")
        finally:
            os.kill(own.process.pid, signal.SIGCONT)
        table.lookup(np.array([5]))  # answers again
        own.stop()
        started = time.monotonic()
        with pytest.raises(ServiceUnavailable, match=r"^embedding table item: Redis at .* failed looking up 1 rows "
                                                     r"\(first row 6\): .*; check that Redis is up$"):
            table.lookup(np.array([6]))
        assert time.monotonic() - started < 2.0
        with pytest.raises(ServiceUnavailable, match=r"^embedding table item: Redis at .* unreachable"):
            RedisTable(own.url, "p:", socket_timeout=0.3)


class FailingClient:
    """A real client whose MSET fails (connection lost) after `ok` calls: a push interrupted half-way."""

    def __init__(self, url: str, ok: int) -> None:
        self._client, self.ok = redis.Redis.from_url(url), ok

    def mset(self, mapping):
        if self.ok == 0:
            raise redis.ConnectionError("Connection closed by server.")
        self.ok -= 1
        return self._client.mset(mapping)

    def __getattr__(self, name):
        return getattr(self._client, name)


def test_an_interrupted_push_claims_nothing_and_readers_refuse_the_prefix(server, stores, prefix):
    push(stores["fp32"], server.url, prefix=prefix)  # a served table, then a re-push that dies half-way
    RedisTable(server.url, prefix).lookup(np.array([1]))
    with pytest.raises(StageError) as exc:
        push(stores["fp32"], server.url, prefix=prefix, batch_rows=64, client=FailingClient(server.url, ok=2))
    assert one_line(exc) == (f"push of table item to Redis at {server.url} failed after 128 of {ROWS} rows: "
                             f"Connection closed by server.; nothing is claimed (no {prefix}index key): re-run the "
                             "push when Redis answers")
    assert admin(server).get(f"{prefix}index") is None
    with pytest.raises(ServiceUnavailable) as exc:
        RedisTable(server.url, prefix)
    assert one_line(exc) == (f"embedding table item: Redis at {server.url} has no {prefix}index key naming it (never "
                             "pushed, or the push did not finish): run `onerank-export embeddings push --store DIR "
                             f"--redis {server.url} --prefix {prefix}`")
    push(stores["fp32"], server.url, prefix=prefix)  # the re-run claims it again
    RedisTable(server.url, prefix).lookup(np.array([1]))


def other_dim_store(stores, tmp_path):
    """The fp32 store's bytes re-read as 600 rows of dim 8: a valid store of another dim."""
    shutil.copytree(stores["fp32"], tmp_path / "dim8")
    index = json.loads((tmp_path / "dim8" / "index.json").read_text())
    index["tables"]["item"].update(rows=2 * ROWS, dim=DIM // 2)
    (tmp_path / "dim8" / "index.json").write_text(json.dumps(index))
    return tmp_path / "dim8"


def test_a_prefix_holding_another_dim_is_refused_before_writing(server, stores, prefix, tmp_path):
    push(stores["fp32"], server.url, prefix=prefix)
    with pytest.raises(StageError) as exc:
        push(other_dim_store(stores, tmp_path), server.url, prefix=prefix)
    assert one_line(exc) == (f"Redis prefix '{prefix}' at {server.url} holds table item with dim {DIM} (float32); "
                             f"this store's is dim {DIM // 2} (float32): push to another --prefix, or delete the keys "
                             f"under '{prefix}' first")
    db = admin(server)
    assert db.exists(f"{prefix}index") and not db.exists(f"{prefix}item:{ROWS}")  # untouched
    assert RedisTable(server.url, prefix).dim == DIM


def test_unclaimed_rows_of_another_size_are_refused_too(server, stores, prefix, tmp_path):
    with pytest.raises(StageError):
        push(stores["fp32"], server.url, prefix=prefix, batch_rows=64, client=FailingClient(server.url, ok=1))
    with pytest.raises(StageError, match=rf"holds item rows of {DIM * 4} bytes \(another dim or dtype, unclaimed\); "
                                         rf"this store's rows are {DIM * 2} bytes \(dim {DIM // 2}, float32\)"):
        push(other_dim_store(stores, tmp_path), server.url, prefix=prefix)


def test_a_store_file_changed_since_the_build_is_pushed_but_never_claimed(server, stores, prefix, tmp_path):
    shutil.copytree(stores["int8"], tmp_path / "bad")
    with open(tmp_path / "bad" / "item.int8.scale.bin", "r+b") as f:
        f.seek(40)
        f.write(b"\x7f")
    with pytest.raises(StoreError, match=r"^embedding table 'item': file item.int8.scale.bin sha256 .* does not match "
                                         r"the index .*; the file changed or is corrupt: rebuild the store$"):
        push(tmp_path / "bad", server.url, prefix=prefix)
    assert admin(server).get(f"{prefix}index") is None


def test_push_errors_are_one_line(server, stores, tmp_path):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    with pytest.raises(StageError) as exc:
        push(stores["fp32"], f"redis://127.0.0.1:{port}/0", socket_timeout=0.5)
    assert one_line(exc).startswith(f"push of table item to Redis at redis://127.0.0.1:{port}/0 failed: Error ")
    with pytest.raises(StoreError, match="not an embedding store"):
        push(tmp_path, server.url)
    with pytest.raises(ConfigError, match=r"Redis URL 'http://x'"):
        push(stores["fp32"], "http://x")


def test_open_lookup_selects_the_backend_and_checks_redis_against_the_store(server, stores):
    ids = np.array([[4, 0, 299]])
    mmap = open_lookup({"embedding_store": str(stores["fp16"])}, dim=DIM)
    push(stores["fp16"], server.url)  # the default prefix: onerank:emb:<checkpoint sha[:12]>:
    via_redis = open_lookup({"embedding_backend": "redis", "embedding_store": str(stores["fp16"]),
                             "embedding_redis_url": server.url, "embedding_redis_batch_rows": "2"}, dim=DIM)
    assert via_redis.prefix == default_prefix(open_store(stores["fp16"]).checkpoint_sha256)
    np.testing.assert_array_equal(via_redis.lookup(ids), mmap.lookup(ids))
    with pytest.raises(ServiceUnavailable, match=r"has dtype 'float16', the model's 'float32': push this model's"):
        open_lookup({"embedding_backend": "redis", "embedding_store": str(stores["fp32"]),
                     "embedding_redis_url": server.url, "embedding_redis_prefix": via_redis.prefix}, lazy=False)
    wrong_dim = open_lookup({"onerank.embedding_backend": "redis", "onerank.embedding_redis_url": server.url,
                             "onerank.embedding_redis_prefix": via_redis.prefix}, dim=32)  # lazy: at the lookup
    with pytest.raises(ServiceUnavailable, match=r"\(onerank:emb:\w{12}:index\) has dim 16, the model's 32"):
        wrong_dim.lookup(ids)
    relative = open_lookup({"onerank.embedding_store": stores["fp16"].name}, base=stores["fp16"].parent)
    np.testing.assert_array_equal(relative.lookup(ids), mmap.lookup(ids))
    for parameters, message in (({"embedding_backend": "hbase"}, "embedding_backend 'hbase': use one of mmap, redis"),
                                ({}, "embedding_backend mmap needs embedding_store"),
                                ({"embedding_backend": "redis"}, "needs embedding_redis_url"),
                                ({"embedding_backend": "redis", "embedding_redis_url": server.url},
                                 "needs embedding_redis_prefix, or embedding_store"),
                                ({"embedding_backend": "redis", "embedding_redis_url": server.url,
                                  "embedding_redis_prefix": "x:", "embedding_redis_batch_rows": "0"},
                                 "embedding_redis_batch_rows '0': must be a number > 0")):
        with pytest.raises(ConfigError, match=message):
            open_lookup(parameters)


# ----- the CLI: onerank-export embeddings push ------------------------------------------------------


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    from onerank_export.cli.main import main

    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_push_from_a_build_directory_reports_progress_and_verification(capsys, server, stores, prefix, tmp_path):
    shutil.copytree(stores["int8"], tmp_path / "build" / "embeddings")
    code, out, err = run_cli(capsys, "embeddings", "push", "--store", str(tmp_path / "build"), "--redis", server.url,
                             "--prefix", prefix, "--batch-rows", "100")
    assert code == 0, err
    assert err.splitlines()[0] == f"pushing table item of {tmp_path / 'build'} to {server.url} ..."
    assert err.splitlines()[-1].startswith(f"  {ROWS}/{ROWS} rows (100%), ")
    assert out.startswith(f"pushed table item: {ROWS} rows (0.0 MiB) under '{prefix}' in ")
    assert out.rstrip().endswith(f"verified {ROWS} keys and {ROWS} sampled rows byte-equal; claimed by {prefix}index")
    np.testing.assert_array_equal(RedisTable(server.url, prefix).lookup(np.arange(ROWS)),
                                  open_store(stores["int8"]).table().lookup(np.arange(ROWS)))


def test_cli_push_failures_are_one_line_and_exit_1(capsys, server, stores, prefix, tmp_path):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    code, _, err = run_cli(capsys, "embeddings", "push", "--store", str(stores["fp32"]), "--redis",
                           f"redis://user:secret@127.0.0.1:{port}/0")
    assert code == 1 and "Traceback" not in err and "secret" not in err
    assert err.splitlines()[-1].startswith(f"error: push of table item to Redis at redis://***@127.0.0.1:{port}/0 "
                                           "failed: ")
    assert len(err.splitlines()) == 2  # the "pushing ..." line, then the error

    push(stores["fp32"], server.url, prefix=prefix)
    code, _, err = run_cli(capsys, "embeddings", "push", "--store", str(other_dim_store(stores, tmp_path)),
                           "--redis", server.url, "--prefix", prefix)
    assert code == 1
    assert err.splitlines()[-1].startswith(f"error: Redis prefix '{prefix}' at {server.url} holds table item with "
                                           f"dim {DIM} (float32); this store's is dim {DIM // 2}")
    assert RedisTable(server.url, prefix).dim == DIM  # still served, untouched

    code, _, err = run_cli(capsys, "embeddings", "push", "--store", str(tmp_path), "--redis", server.url)
    assert code == 1 and err.splitlines()[-1] == (f"error: {tmp_path}: not an embedding store (no index.json); "
                                                  "build one with --embeddings split")


def test_a_server_may_start_before_redis_lookups_are_unavailable_until_it_answers(stores):
    later = RedisServer()  # its port is chosen now, the server starts below
    lookup = open_lookup({"embedding_backend": "redis", "embedding_store": str(stores["fp32"]),
                          "embedding_redis_url": later.url, "embedding_redis_timeout_s": "0.3"}, dim=DIM)
    with pytest.raises(ServiceUnavailable) as exc:
        lookup.lookup(np.array([1]))
    assert one_line(exc).startswith(f"embedding table item: Redis at {later.url} unreachable (Error ")
    with later:
        with pytest.raises(ServiceUnavailable, match=r"has no onerank:emb:\w{12}:index key naming it"):
            lookup.lookup(np.array([1]))
        push(stores["fp32"], later.url)
        np.testing.assert_array_equal(lookup.lookup(np.array([1, 2])),
                                      open_store(stores["fp32"]).table().lookup(np.array([1, 2])))


class ClusterNode(RedisServer):
    """A cluster-enabled redis-server; its port stays below 55535 (the cluster bus listens on port + 10000)."""

    def __init__(self) -> None:
        from onerank_export.serving.server import free_port

        port = free_port()
        while port >= 55000:
            port = free_port()
        super().__init__(port=port)

    def command(self) -> list[str]:
        return [*super().command(), "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]


@pytest.mark.slow  # three redis-server processes forming a cluster, ~9 s
def test_push_and_lookup_through_a_three_shard_redis_cluster(stores):
    nodes = [ClusterNode() for _ in range(3)]
    try:
        for node in nodes:
            node.start()
        admins = [redis.Redis(host="127.0.0.1", port=node.port) for node in nodes]
        for i, db in enumerate(admins):  # three masters, a third of the 16384 hash slots each
            db.execute_command("CLUSTER", "ADDSLOTS", *range(i * 16384 // 3, (i + 1) * 16384 // 3))
        for db in admins[1:]:
            db.execute_command("CLUSTER", "MEET", "127.0.0.1", nodes[0].port)
        deadline = time.monotonic() + 20
        while not all(db.cluster("info")["cluster_state"] == "ok" for db in admins):
            assert time.monotonic() < deadline, "the cluster did not form"
            time.sleep(0.1)
        url = nodes[1].url.rsplit("/", 1)[0]  # any node; a cluster has only db 0
        report = push(stores["int8"], url, cluster=True, batch_rows=64)
        assert report.rows == ROWS
        sizes = [db.dbsize() for db in admins]
        assert sum(sizes) == ROWS + 1 and min(sizes) > ROWS // 5  # rows spread over the shards, + the index key
        lookup = open_lookup({"embedding_backend": "redis", "embedding_store": str(stores["int8"]),
                              "embedding_redis_url": url, "embedding_redis_cluster": "true",
                              "embedding_redis_batch_rows": "100"}, dim=DIM, lazy=False)
        ids = np.arange(ROWS).reshape(3, 100)
        np.testing.assert_array_equal(lookup.lookup(ids), open_store(stores["int8"]).table().lookup(ids))
        admins[2].flushall()  # a shard loses its data: the lookup names a row it held
        with pytest.raises(ServiceUnavailable, match=r"^embedding table item, row \d+: key .* is missing"):
            lookup.lookup(ids)
    finally:
        for node in nodes:
            node.close()
