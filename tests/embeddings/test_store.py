"""The embedding store: round trip per dtype, streaming, atomicity and every bad input's one-line error."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from helpers import make_tiny_model

from onerank_export.embeddings.store import StoreError, open_store, write_store
from onerank_export.model.checkpoint import checkpoint_digest, save_checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_checkpoint(make_tiny_model(seed=3), tmp_path_factory.mktemp("ckpt") / "c")


@pytest.fixture(scope="module")
def table(ckpt):
    from safetensors.numpy import load_file

    return load_file(str(ckpt / "model.safetensors"))["item_emb.weight"]


def _one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg
    return msg


def test_fp32_round_trip_is_exact_and_streamed_in_chunks(ckpt, table, tmp_path):
    calls = []
    index = write_store(ckpt, tmp_path / "emb", "fp32", chunk_rows=128, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(128, 300), (256, 300), (300, 300)]  # 300 rows in three chunks
    assert index["checkpoint_sha256"] == checkpoint_digest(ckpt)
    entry = index["tables"]["item"]
    assert (entry["rows"], entry["dim"], entry["dtype"], entry["file"]) == (300, 16, "float32", "item.float32.bin")
    assert json.loads((tmp_path / "emb" / "index.json").read_text()) == index
    store = open_store(tmp_path / "emb", verify=True)
    t = store.table("item", rows=300, dim=16)
    ids = np.array([[0, 5, 299], [7, 7, 1]], dtype=np.int64)
    rows = t.lookup(ids)
    assert rows.shape == (2, 3, 16) and rows.dtype == np.float32
    np.testing.assert_array_equal(rows, table[ids])
    assert (tmp_path / "emb" / "item.float32.bin").stat().st_size == 300 * 16 * 4


@pytest.mark.parametrize(("dtype", "tol", "size"), [("fp16", 1e-3, 2), ("int8", None, 1)])
def test_reduced_stores_dequantise_within_their_step(ckpt, table, tmp_path, dtype, tol, size):
    write_store(ckpt, tmp_path / "emb", dtype)
    t = open_store(tmp_path / "emb", verify=True).table()
    rows = t.lookup(np.arange(300))
    assert t.data.nbytes == 300 * 16 * size
    if dtype == "int8":
        step = np.abs(table).max(axis=1, keepdims=True) / 127
        assert np.all(np.abs(rows - table) <= step / 2 + 1e-9)
        assert np.all(rows[0] == 0)  # the zero pad row stays exactly zero (scale 0)
        np.testing.assert_allclose(np.abs(rows).max(axis=1), np.abs(table).max(axis=1), rtol=1e-6)
    else:
        np.testing.assert_allclose(rows, table, atol=tol * np.abs(table).max())
        assert np.abs(rows - table).max() > 0  # really reduced


def test_oov_pad_counts_and_error_names_table_and_id(ckpt, tmp_path):
    write_store(ckpt, tmp_path / "pad", "fp32", oov="pad")
    t = open_store(tmp_path / "pad").table()
    rows = t.lookup(np.array([3, 300, -1, 1_000_000]))
    np.testing.assert_array_equal(rows[1:], np.broadcast_to(t.lookup(np.array([0]))[0], (3, 16)))
    assert t.oov_count == 3
    write_store(ckpt, tmp_path / "err", "fp32", oov="error")
    t = open_store(tmp_path / "err").table()
    with pytest.raises(StoreError) as e:
        t.lookup(np.array([[1, 2], [300, 4]]))
    assert "embedding table 'item': id 300 (flat position 2) is outside [0, 300)" in _one_line(e)


def test_corrupt_truncated_missing_and_wrong_dim_are_one_line(ckpt, tmp_path):
    d = tmp_path / "emb"
    write_store(ckpt, d, "int8")
    data = d / "item.int8.bin"
    raw = bytearray(data.read_bytes())
    raw[100] ^= 0xFF
    data.write_bytes(bytes(raw))
    open_store(d)  # the cheap check (sizes) passes: same size
    with pytest.raises(StoreError) as e:
        open_store(d, verify=True)
    assert "file item.int8.bin sha256" in _one_line(e) and "does not match the index" in str(e.value)
    data.write_bytes(bytes(raw[:-5]))
    with pytest.raises(StoreError) as e:
        open_store(d)
    assert "has 4795 bytes, index says 4800 (300 x 16 int8); the file is truncated" in _one_line(e)
    (d / "item.int8.scale.bin").unlink()
    data.write_bytes(bytes(raw))
    with pytest.raises(StoreError) as e:
        open_store(d)
    assert "file item.int8.scale.bin is missing" in _one_line(e)
    write_store(ckpt, d, "fp32")
    with pytest.raises(StoreError) as e:
        open_store(d).table("item", dim=32)
    assert "has dim 16, the model expects 32" in _one_line(e)
    with pytest.raises(StoreError) as e:
        open_store(tmp_path / "nowhere")
    assert "not an embedding store (no index.json)" in _one_line(e)


def test_empty_or_nonfinite_table_is_refused_and_nothing_is_written(tmp_path):
    from safetensors.numpy import save_file

    for name, weight, expected in [
        ("empty", np.zeros((0, 16), np.float32), "embedding table 'item' (item_emb.weight) is empty (0 x 16)"),
        ("nan", np.where(np.arange(10)[:, None] == 7, np.nan, np.ones((10, 4), np.float32)).astype(np.float32),
         "embedding table 'item': row 7 contains NaN or Inf"),
    ]:
        ck = tmp_path / name
        ck.mkdir()
        (ck / "config.json").write_text("{}")
        save_file({"item_emb.weight": weight}, str(ck / "model.safetensors"))
        with pytest.raises(StoreError) as e:
            write_store(ck, tmp_path / "out" / name, "fp32", chunk_rows=4)
        assert expected in _one_line(e)
        assert not (tmp_path / "out" / name).exists()
        assert os.listdir(tmp_path / "out") == []  # no temporary left behind


def test_a_failed_rewrite_keeps_the_previous_store(ckpt, tmp_path):
    d = tmp_path / "emb"
    write_store(ckpt, d, "fp32")
    before = (d / "index.json").read_text()

    def boom(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_store(ckpt, d, "fp16", progress=boom)
    assert (d / "index.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb"]


def test_a_store_written_from_the_loaded_table_is_byte_identical_to_one_read_from_the_file(tmp_path):
    """A build writes the store from its loaded model's table (one mapping of the weights, not two)."""
    from helpers import make_tiny_model

    from onerank_export.embeddings.store import write_store
    from onerank_export.model.checkpoint import save_checkpoint

    model = make_tiny_model(seed=2)
    ckpt = save_checkpoint(model, tmp_path / "ckpt")
    for dtype in ("fp32", "int8"):
        from_file = write_store(ckpt, tmp_path / f"file-{dtype}", dtype)
        from_memory = write_store(ckpt, tmp_path / f"mem-{dtype}", dtype,
                                  loaded={"item_emb.weight": model.item_emb.weight.detach().numpy()})
        assert from_file == from_memory  # same sha256s, rows, dims, files
        for f in (tmp_path / f"file-{dtype}").iterdir():
            assert f.read_bytes() == (tmp_path / f"mem-{dtype}" / f.name).read_bytes()
