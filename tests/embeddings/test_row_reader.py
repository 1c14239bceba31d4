"""The build's pread lookups return exactly what the memory-mapped ones do (every dtype, OOV, shapes)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import make_tiny_model

from onerank_export.embeddings.row_reader import FileRows
from onerank_export.embeddings.store import StoreError, open_store, write_store
from onerank_export.model.checkpoint import save_checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_checkpoint(make_tiny_model(seed=9), tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "int8"])
def test_pread_lookups_equal_mapped_lookups(ckpt, tmp_path, dtype):
    write_store(ckpt, tmp_path / dtype, dtype)
    mapped = open_store(tmp_path / dtype).table()
    read = open_store(tmp_path / dtype, mapped=False).table()
    assert isinstance(read.data, FileRows) and isinstance(mapped.data, np.memmap)
    assert read.nbytes() == mapped.nbytes()
    ids = np.random.default_rng(0).integers(0, read.rows, size=(3, 7, 5))
    ids[0, 0, :3] = [5, 5, 5]  # repeats
    ids[1, 2, 1] = read.rows + 10  # out of the table: the pad row under "pad"
    got, want = read.lookup(ids), mapped.lookup(ids)
    assert got.dtype == np.float32 and got.shape == (3, 7, 5, read.dim)
    assert np.array_equal(got, want)
    assert read.oov_count == mapped.oov_count == 1
    assert read.lookup(np.zeros((2, 0), dtype=np.int64)).shape == (2, 0, read.dim)


def test_a_truncated_file_is_still_refused_when_opened_unmapped(ckpt, tmp_path):
    write_store(ckpt, tmp_path / "s", "fp32")
    data = tmp_path / "s" / "item.float32.bin"
    with open(data, "r+b") as f:
        f.truncate(data.stat().st_size - 4)
    with pytest.raises(StoreError, match="the file is truncated or corrupt: rebuild the store"):
        open_store(tmp_path / "s", mapped=False)
