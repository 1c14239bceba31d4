"""A store table's raw bytes, for pushing it elsewhere (embeddings/redis_backend.py): the store's memory
maps (embeddings/store.py checks the index and file sizes) read once in row order, with the files' sha256
computed on the way instead of in a separate pass over a table that may be gigabytes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from onerank_export.embeddings.store import INDEX, StoreError, open_store


def store_dir(path) -> Path:
    """DIR (holding index.json) or a build directory's DIR/embeddings."""
    path = Path(path)
    if not (path / INDEX).is_file() and (path / "embeddings" / INDEX).is_file():
        return path / "embeddings"
    return path


class StoreSource:
    """One table of a store: values(start, stop) -> uint8 [n, value_size] (row bytes, + int8 scale bytes)."""

    def __init__(self, path, table: str = "item") -> None:
        store = open_store(store_dir(path))  # one-line StoreError: no index, bad index, size mismatch
        self.table_obj = store.table(table)
        self.index, self.table = store.index, table
        self.entry = dict(store.index["tables"][table])
        self.checkpoint_sha256 = store.checkpoint_sha256
        self.rows, self.dim, self.dtype = self.table_obj.rows, self.table_obj.dim, self.table_obj.dtype
        self.data = self.table_obj.data.view(np.uint8)  # [rows, dim * itemsize]
        scale = self.table_obj.scale
        self.scales = None if scale is None else scale.view(np.uint8).reshape(self.rows, 4)
        self.value_size = self.data.shape[1] + (4 if self.scales is not None else 0)
        self._hashes = {"sha256": hashlib.sha256(), "scale_sha256": hashlib.sha256()}
        self._hashed_to = 0

    def values(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as one uint8 block; reading the table in order also hashes it."""
        data = self.data[start:stop]
        if start == self._hashed_to:
            self._hashes["sha256"].update(data)
            if self.scales is not None:
                self._hashes["scale_sha256"].update(self.scales[start:stop])
            self._hashed_to = stop
        if self.scales is None:
            return np.asarray(data)
        return np.concatenate([data, self.scales[start:stop]], axis=1)

    def check_hashes(self) -> None:
        """After values() has read every row in order: the files' sha256 against the index (one line)."""
        if self._hashed_to != self.rows:
            raise RuntimeError(f"hashed {self._hashed_to} of {self.rows} rows")  # a caller bug, not a user error
        for field, name in (("sha256", "file"), ("scale_sha256", "scale_file")):
            expected, actual = self.entry.get(field), self._hashes[field].hexdigest()
            if expected and actual != expected:
                raise StoreError(f"embedding table '{self.table}': file {self.entry.get(name)} sha256 {actual[:12]}... "
                                 f"does not match the index ({str(expected)[:12]}...); the file changed or is "
                                 "corrupt: rebuild the store")

    def close(self) -> None:
        self.data = self.scales = self.table_obj = None
