"""The embedding store: the item table as a build artifact of its own (split mode).

Layout of `DIR/embeddings/` (docs/embeddings.md):

    index.json           {"format": "onerank-embedding-store", "version": 1, "checkpoint_sha256": ...,
                          "tables": {"item": {"file", "rows", "dim", "dtype", "scale_file", "pad_row", "oov",
                                              "sha256", "scale_sha256"}}}
    item.<dtype>.bin     raw little-endian row-major [rows, dim] (numpy.memmap-able)
    item.int8.scale.bin  int8 only: float32 [rows], row = int8 * scale (symmetric, per-row absmax / 127)

Torch-free: the Triton python lookup model and the Redis loader import it. The writer streams rows
from the checkpoint's safetensors file (memory-mapped, `chunk_rows` at a time), hashing as it writes,
so the table is never in memory twice; index.json is written last inside a temporary directory that
replaces the destination only when complete.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onerank_export.embeddings.row_reader import FileRows
from onerank_export.errors import OneRankError
from onerank_export.io import atomic_directory, sha256_files

FORMAT = "onerank-embedding-store"
VERSION = 1
INDEX = "index.json"
# The big table(s): only the item table moves out of the dense graph (the others are tiny).
TABLES = {"item": "item_emb.weight"}
STORE_DTYPES = {"fp32": "float32", "fp16": "float16", "int8": "int8"}
OOV_POLICIES = ("pad", "error")
DEFAULT_CHUNK_ROWS = 1 << 16
_CONFIG_FILE = "config.json"
_WEIGHTS_FILE = "model.safetensors"

Progress = Callable[[int, int], None]  # (rows written, rows total)


class StoreError(OneRankError):
    """The embedding store is missing, corrupt, inconsistent or asked for rows it does not hold."""


# ----- writing ---------------------------------------------------------------------------------

def write_store(checkpoint_dir: str | Path, out_dir: str | Path, dtype: str = "fp32", *, oov: str = "pad",
                chunk_rows: int = DEFAULT_CHUNK_ROWS, progress: Progress | None = None,
                checkpoint_sha256: str | None = None, loaded: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the store for `checkpoint_dir` into `out_dir` (replaced atomically); return the index.

    `loaded`: {checkpoint tensor name: array} already in this process (a build's loaded model): rows are
    read from it instead of mapping the weights file a second time (the same pages mapped twice count
    twice in RSS: 10.7 GB instead of ~5.6 GB for a 5.1 GB table, docs/benchmarks.md)."""
    if dtype not in STORE_DTYPES:
        raise StoreError(f"embedding store dtype '{dtype}' is not supported; use one of {', '.join(STORE_DTYPES)}")
    if oov not in OOV_POLICIES:
        raise StoreError(f"out-of-vocabulary policy '{oov}' is not supported; use one of {', '.join(OOV_POLICIES)}")
    checkpoint_dir = Path(checkpoint_dir)
    weights = checkpoint_dir / _WEIGHTS_FILE
    if not weights.is_file():
        raise StoreError(f"{weights}: not found; the embedding store is written from a checkpoint's {_WEIGHTS_FILE}")
    digest = checkpoint_sha256 or _checkpoint_sha256(checkpoint_dir)
    tables: dict[str, Any] = {}
    with atomic_directory(out_dir) as tmp:
        for name, tensor in TABLES.items():
            source = (loaded or {}).get(tensor)
            if source is not None:
                tables[name] = _write_rows(_ArraySlice(source), f"the loaded '{tensor}'", name, tensor, tmp,
                                           STORE_DTYPES[dtype], oov, chunk_rows, progress)
                continue
            tables[name] = _write_table(weights, tensor, name, tmp, STORE_DTYPES[dtype], oov, chunk_rows, progress)
        index = {"format": FORMAT, "version": VERSION, "checkpoint_sha256": digest, "tables": tables}
        # Last: a directory with an index.json is a complete store (and the rename makes it visible at once).
        (tmp / INDEX).write_text(json.dumps(index, indent=2) + "\n")
    return index


def _write_table(weights: Path, tensor: str, name: str, out: Path, dtype: str, oov: str, chunk_rows: int,
                 progress: Progress | None) -> dict[str, Any]:
    from safetensors import SafetensorError, safe_open  # numpy framework: no torch

    try:
        handle = safe_open(str(weights), framework="numpy")
    except (SafetensorError, OSError, ValueError) as exc:
        raise StoreError(f"{weights}: not a readable safetensors file ({_first(exc)}); re-export the checkpoint") \
            from None
    with handle as f:
        if tensor not in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
            raise StoreError(f"{weights}: no tensor '{tensor}'; is this a OneRank checkpoint?")
        return _write_rows(f.get_slice(tensor), f"{weights}: tensor '{tensor}'", name, tensor, out, dtype, oov,
                           chunk_rows, progress)


class _ArraySlice:
    """An in-memory table with the two methods of a safetensors slice the writer uses."""

    def __init__(self, array) -> None:
        self.array = array

    def get_shape(self) -> list[int]:
        return list(self.array.shape)

    def get_dtype(self) -> str:
        return "F32" if np.dtype(self.array.dtype) == np.float32 else str(self.array.dtype)

    def __getitem__(self, index):
        return self.array[index]


def _write_rows(sl, what: str, name: str, tensor: str, out: Path, dtype: str, oov: str, chunk_rows: int,
                progress: Progress | None) -> dict[str, Any]:
    """Stream the rows of `sl` (a safetensors slice or an in-memory table) into the store's files."""
    shape, src_dtype = sl.get_shape(), sl.get_dtype()
    if len(shape) != 2 or src_dtype != "F32":
        raise StoreError(f"{what} is {src_dtype} {list(shape)}, expected float32 [rows, dim]")
    rows, dim = int(shape[0]), int(shape[1])
    if rows == 0 or dim == 0:
        raise StoreError(f"embedding table '{name}' ({tensor}) is empty ({rows} x {dim}); "
                         "a store needs at least the pad row: check item_vocab_size / d_model")
    entry: dict[str, Any] = {"file": f"{name}.{dtype}.bin", "rows": rows, "dim": dim, "dtype": dtype,
                             "scale_file": None, "pad_row": 0, "oov": oov, "sha256": None, "scale_sha256": None}
    h, hs = hashlib.sha256(), hashlib.sha256()
    with open(out / entry["file"], "wb") as data_f:
        scale_f = open(out / f"{name}.int8.scale.bin", "wb") if dtype == "int8" else None  # noqa: SIM115
        try:
            for start in range(0, rows, max(1, chunk_rows)):
                block = np.ascontiguousarray(sl[start:min(rows, start + chunk_rows)], dtype=np.float32)
                bad = ~np.isfinite(block).all(axis=1)
                if bad.any():
                    raise StoreError(f"embedding table '{name}': row {start + int(np.argmax(bad))} contains "
                                     "NaN or Inf; fix the checkpoint")
                data, scale = _encode(block, dtype)
                raw = data.astype(data.dtype.newbyteorder("<"), copy=False).tobytes()
                data_f.write(raw)
                h.update(raw)
                if scale_f is not None:
                    sraw = scale.astype("<f4", copy=False).tobytes()
                    scale_f.write(sraw)
                    hs.update(sraw)
                if progress is not None:
                    progress(min(rows, start + chunk_rows), rows)
        finally:
            if scale_f is not None:
                scale_f.close()
    entry["sha256"] = h.hexdigest()
    if dtype == "int8":
        entry["scale_file"], entry["scale_sha256"] = f"{name}.int8.scale.bin", hs.hexdigest()
    return entry


def _encode(block: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray | None]:
    if dtype == "float32":
        return block, None
    if dtype == "float16":
        return block.astype(np.float16), None
    # Symmetric row-wise int8: scale = absmax / 127, so the largest element of each row is exact in
    # magnitude; an all-zero row (the pad row) keeps scale 0 and decodes to exact zeros.
    scale = (np.abs(block).max(axis=1) / 127.0).astype(np.float32)
    safe = np.where(scale > 0, scale, 1.0).astype(np.float32)
    q = np.clip(np.rint(block / safe[:, None]), -127, 127).astype(np.int8)
    return q, scale


def _checkpoint_sha256(directory: Path) -> str:
    """model/checkpoint.py checkpoint_digest's digest (config.json then weights), without importing torch."""
    return sha256_files([directory / _CONFIG_FILE, directory / _WEIGHTS_FILE])


# ----- reading ---------------------------------------------------------------------------------

@dataclass
class Table:
    """One memory-mapped table. `lookup` is the only way rows leave it (OOV policy applied)."""

    name: str
    rows: int
    dim: int
    dtype: str
    oov: str
    pad_row: int
    path: Path
    data: np.ndarray | FileRows  # memmap [rows, dim], or read with pread (open_store(mapped=False))
    scale: np.ndarray | FileRows | None  # [rows] (int8)
    oov_count: int = 0  # ids mapped to the pad row under "pad"

    def lookup(self, ids: Any) -> np.ndarray:
        """int ids of any shape -> float32 rows [..., dim] (dequantised)."""
        ids = np.asarray(ids)
        if ids.dtype.kind not in "iu":
            raise StoreError(f"embedding table '{self.name}': ids must be integers, got {ids.dtype}")
        flat = ids.reshape(-1).astype(np.int64, copy=False)
        bad = (flat < 0) | (flat >= self.rows)
        if bad.any():
            if self.oov == "error":
                pos = int(np.argmax(bad))
                raise StoreError(f"embedding table '{self.name}': id {int(flat[pos])} (flat position {pos}) is "
                                 f"outside [0, {self.rows}); send ids below {self.rows} or build the store with "
                                 "--embedding-oov pad")
            self.oov_count += int(bad.sum())
            flat = np.where(bad, self.pad_row, flat)
        out = np.asarray(self.data[flat], dtype=np.float32)
        if self.scale is not None:
            out *= self.scale[flat][:, None]
        return out.reshape((*ids.shape, self.dim))

    def nbytes(self) -> int:
        return int(self.data.nbytes) + (int(self.scale.nbytes) if self.scale is not None else 0)


@dataclass
class EmbeddingStore:
    path: Path
    index: dict[str, Any]
    tables: dict[str, Table] = field(default_factory=dict)

    @property
    def checkpoint_sha256(self) -> str:
        return str(self.index.get("checkpoint_sha256", ""))

    def table(self, name: str = "item", *, rows: int | None = None, dim: int | None = None) -> Table:
        """The table `name`, checked against the model's expectations (rows, dim) when given."""
        if name not in self.tables:
            raise StoreError(f"{self.path}: the embedding store has no table '{name}'; rebuild it")
        t = self.tables[name]
        if dim is not None and t.dim != dim:
            raise StoreError(f"{self.path}: embedding table '{name}' has dim {t.dim}, the model expects {dim}; "
                             "the store belongs to another checkpoint: rebuild it")
        if rows is not None and t.rows != rows:
            raise StoreError(f"{self.path}: embedding table '{name}' has {t.rows} rows, the model expects {rows}; "
                             "the store belongs to another checkpoint: rebuild it")
        return t

    @classmethod
    def open(cls, directory: str | Path, *, verify: bool = False) -> EmbeddingStore:
        return open_store(directory, verify=verify)


def open_store(directory: str | Path, *, verify: bool = False, mapped: bool = True) -> EmbeddingStore:
    """Open and check a store: index format, file sizes, dtypes (always), sha256 (`verify=True`).
    `mapped=False`: lookups read rows with pread instead of a memory map (the build's own lookups:
    row_reader.py says why)."""
    directory = Path(directory)
    index_path = directory / INDEX
    if not index_path.is_file():
        raise StoreError(f"{directory}: not an embedding store (no {INDEX}); build one with --embeddings split")
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError) as exc:
        raise StoreError(f"{index_path}: unreadable ({_first(exc)}); rebuild the store") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT or index.get("version") != VERSION:
        raise StoreError(f"{index_path}: not a {FORMAT} version {VERSION} index; rebuild the store")
    tables = index.get("tables")
    if not isinstance(tables, dict) or not tables:
        raise StoreError(f"{index_path}: lists no tables; rebuild the store")
    store = EmbeddingStore(directory, index)
    for name, entry in tables.items():
        store.tables[name] = _open_table(directory, name, entry, verify, mapped)
    return store


def _open_table(directory: Path, name: str, entry: Any, verify: bool, mapped: bool = True) -> Table:
    where = f"{directory}: embedding table '{name}'"
    try:
        rows, dim, dtype = int(entry["rows"]), int(entry["dim"]), str(entry["dtype"])
        file, oov, pad_row = str(entry["file"]), str(entry.get("oov", "pad")), int(entry.get("pad_row", 0))
    except (KeyError, TypeError, ValueError) as exc:
        raise StoreError(f"{where}: index entry is malformed ({_first(exc)}); rebuild the store") from None
    if dtype not in STORE_DTYPES.values():
        raise StoreError(f"{where}: dtype '{dtype}' is not one of {', '.join(STORE_DTYPES.values())}; "
                         "rebuild the store")
    if rows <= 0 or dim <= 0:
        raise StoreError(f"{where}: is empty ({rows} x {dim}); rebuild the store from a checkpoint with items")
    if oov not in OOV_POLICIES or not 0 <= pad_row < rows:
        raise StoreError(f"{where}: oov '{oov}' / pad_row {pad_row} invalid; rebuild the store")
    data = _checked_memmap(directory / file, np.dtype(dtype).newbyteorder("<"), (rows, dim), where,
                           entry.get("sha256") if verify else None, mapped)
    scale = None
    if dtype == "int8":
        scale_file = entry.get("scale_file")
        if not scale_file:
            raise StoreError(f"{where}: int8 table without a scale_file; rebuild the store")
        scale = _checked_memmap(directory / str(scale_file), np.dtype("<f4"), (rows,), where,
                                entry.get("scale_sha256") if verify else None, mapped)
    return Table(name, rows, dim, dtype, oov, pad_row, directory / file, data, scale)


def _checked_memmap(path: Path, dtype: np.dtype, shape: tuple[int, ...], where: str,
                    sha256: str | None, mapped: bool = True) -> np.ndarray | FileRows:
    expected = int(np.prod(shape)) * dtype.itemsize
    try:
        size = os.path.getsize(path)
    except OSError:
        raise StoreError(f"{where}: file {path.name} is missing; rebuild the store") from None
    if size != expected:
        raise StoreError(f"{where}: file {path.name} has {size} bytes, index says {expected} "
                         f"({' x '.join(map(str, shape))} {dtype.name}); the file is truncated or corrupt: "
                         "rebuild the store")
    if sha256 is not None:
        actual = sha256_files([path])
        if actual != sha256:
            raise StoreError(f"{where}: file {path.name} sha256 {actual[:12]}... does not match the index "
                             f"({str(sha256)[:12]}...); the file is corrupt: rebuild the store")
    return np.memmap(path, dtype=dtype, mode="r", shape=shape) if mapped else FileRows(path, dtype, shape)


def _first(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
