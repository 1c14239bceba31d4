"""Rows of a store file read with pread instead of a memory map: for the build's own lookups.

A memory map is what serving wants (instances share the page cache; a warm lookup of 768 ids takes
~0.06 ms). It is the wrong tool for a build that must stay within its memory line: every page a
lookup faults in is mapped into the process and counted in its resident set, and the kernel maps
whole large folios around each fault. Measured on a 20M-row store (this host, Dec 2026): one
lookup of 1,536 random ids raised RssFile by 1.39 GB, ~900 KB per id (MADV_RANDOM did not change
it). pread copies just the rows; the page cache still holds the file, but nothing is mapped, so the
build's RSS does not grow with the ids it reads (docs/embeddings.md, "Build memory").
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


class FileRows:
    """A read-only [rows, *row_shape] array on disk that answers `self[int_ids]` (what Table.lookup
    asks of its data), one pread per distinct row."""

    def __init__(self, path: Path, dtype: np.dtype, shape: tuple[int, ...]) -> None:
        self.path, self.dtype, self.shape = Path(path), np.dtype(dtype), tuple(shape)
        self.row_shape = self.shape[1:]
        self.row_bytes = int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize

    @property
    def nbytes(self) -> int:
        return self.shape[0] * self.row_bytes

    def __getitem__(self, index) -> np.ndarray:
        flat = np.asarray(index, dtype=np.int64).reshape(-1)
        if flat.size and (flat.min() < 0 or flat.max() >= self.shape[0]):
            raise IndexError(f"{self.path.name}: row index outside [0, {self.shape[0]})")
        unique, inverse = np.unique(flat, return_inverse=True)
        buf = bytearray(len(unique) * self.row_bytes)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            view = memoryview(buf)
            for i, row in enumerate(unique.tolist()):
                start = i * self.row_bytes
                got = os.preadv(fd, [view[start:start + self.row_bytes]], row * self.row_bytes)
                if got != self.row_bytes:
                    raise OSError(f"{self.path.name}: short read at row {row} ({got} of {self.row_bytes} bytes)")
        finally:
            os.close(fd)
        rows = np.frombuffer(bytes(buf), dtype=self.dtype).reshape((len(unique), *self.row_shape))
        return rows[inverse].reshape((*np.shape(index), *self.row_shape))
