"""Request files for calibration and evaluation: `.npz` or Parquet under the serving-contract names.

    .npz      one array per tensor, batch first: hist_item_ids [B, L] int64, ..., cand_features
              [B, N, F] float32, optionally labels [B, N, K] float32 (0/1, task order of the config).
    Parquet   one row per request, list columns: hist_item_ids / hist_action_ids / context_ids /
              cand_item_ids list<int64>, cand_features list<list<float>> (N x F), optional labels
              list<list<float>> (N x K). Rows may differ in L and N: history is left-padded and
              candidates right-padded with 0 (padding never changes a score).

Everything is validated before any work starts; a problem is one DataError line naming the
file, the tensor and the request row.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from onerank_export import spec
from onerank_export.config import OneRankConfig
from onerank_export.errors import DataError

LABELS = "labels"
KNOWN = (*spec.INPUT_NAMES, LABELS)


def read_request_file(path: Path, cfg: OneRankConfig) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """(features, labels or None) from a validated request file."""
    if not path.is_file():
        raise DataError(f"{path}: request file not found")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        arrays = _read_npz(path)
    elif suffix in (".parquet", ".pq"):
        arrays = _read_parquet(path, cfg)
    else:
        raise DataError(f"{path}: unsupported format '{suffix or path.name}'; use .npz or .parquet with the "
                        f"serving-contract tensor names ({', '.join(spec.INPUT_NAMES)})")
    return validate_arrays(arrays, cfg, str(path))


def validate_arrays(arrays: dict[str, np.ndarray], cfg: OneRankConfig, where: str
                    ) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    _check_names(arrays, where)
    static = spec.static_axis_sizes(cfg)
    dims: dict[str, tuple[int, str]] = {}  # axis -> (size, tensor that fixed it)
    for s in spec.INPUTS:
        arr = arrays[s.name]
        if arr.dtype != s.np_dtype:
            raise DataError(f"{where}: tensor '{s.name}' has dtype {arr.dtype}, expected {s.dtype} "
                            f"(store it with .astype(np.{s.dtype}))")
        _check_shape(where, s.name, arr, s.axes, static, dims)
    if dims[spec.BATCH][0] == 0:
        raise DataError(f"{where}: holds no requests (tensor '{spec.INPUT_NAMES[0]}' has 0 rows)")
    for axis in (spec.HIST_LEN, spec.NUM_CANDIDATES):
        lo, _, hi = spec.axis_range(cfg, axis)
        size, name = dims[axis]
        if not lo <= size <= hi:
            raise DataError(f"{where}: tensor '{name}' has {axis}={size}, outside the model's range [{lo}, {hi}]")
    labels = arrays.get(LABELS)
    if labels is not None:
        if labels.dtype != np.float32:
            raise DataError(f"{where}: tensor '{LABELS}' has dtype {labels.dtype}, expected float32 (0/1 per task)")
        _check_shape(where, LABELS, labels, (spec.BATCH, spec.NUM_CANDIDATES, spec.NUM_TASKS), static, dims)
    for s in spec.INPUTS:
        if s.vocab_field is not None:
            _check_ids(where, s.name, arrays[s.name], getattr(cfg, s.vocab_field), s.vocab_field)
        else:
            _check_finite(where, s.name, arrays[s.name])
    if labels is not None:
        _check_finite(where, LABELS, labels)
        bad = (labels != 0) & (labels != 1)
        if bad.any():
            idx = [int(i) for i in np.argwhere(bad)[0]]
            raise DataError(f"{where}: tensor '{LABELS}' row {idx[0]}: value {labels[tuple(idx)]} at position "
                            f"{idx[1:]} is not 0 or 1")
    return {s.name: arrays[s.name] for s in spec.INPUTS}, labels


def _check_names(arrays: dict[str, np.ndarray], where: str) -> None:
    missing = [n for n in spec.INPUT_NAMES if n not in arrays]
    if missing:
        raise DataError(f"{where}: missing tensor '{missing[0]}' (a request file holds {', '.join(spec.INPUT_NAMES)} "
                        f"and optionally '{LABELS}')")
    unknown = sorted(set(arrays) - set(KNOWN))
    if unknown:
        raise DataError(f"{where}: unknown tensor '{unknown[0]}' (known: {', '.join(KNOWN)})")


def _check_shape(where: str, name: str, arr: np.ndarray, axes: tuple[str, ...], static: dict[str, int],
                 dims: dict[str, tuple[int, str]]) -> None:
    if arr.ndim != len(axes):
        raise DataError(f"{where}: tensor '{name}' has shape {list(arr.shape)}, expected rank {len(axes)} "
                        f"[{', '.join(axes)}]")
    for axis, size in zip(axes, arr.shape, strict=True):
        if axis in static and size != static[axis]:
            raise DataError(f"{where}: tensor '{name}' has {axis}={size}, the model expects {static[axis]}")
        if axis in dims and dims[axis][0] != size:
            raise DataError(f"{where}: tensor '{name}' has {axis}={size} but '{dims[axis][1]}' has "
                            f"{dims[axis][0]}; all tensors of a file must agree")
        dims.setdefault(axis, (size, name))


def _check_ids(where: str, name: str, arr: np.ndarray, vocab: int, field: str) -> None:
    bad = (arr < 0) | (arr >= vocab)
    if bad.any():
        idx = [int(i) for i in np.argwhere(bad)[0]]
        raise DataError(f"{where}: tensor '{name}' row {idx[0]}: id {int(arr[tuple(idx)])} at position {idx[1:]} "
                        f"is outside [0, {vocab}) ({field}); map unknown ids to a valid bucket upstream")


def _check_finite(where: str, name: str, arr: np.ndarray) -> None:
    bad = ~np.isfinite(arr)
    if bad.any():
        idx = [int(i) for i in np.argwhere(bad)[0]]
        raise DataError(f"{where}: tensor '{name}' row {idx[0]}: {arr[tuple(idx)]} at position {idx[1:]}; "
                        "values must be finite")


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except ValueError as exc:  # object arrays need pickle, which is never allowed
        raise DataError(f"{path}: cannot read without pickle ({str(exc).splitlines()[0]}); store numeric arrays") \
            from None
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a readable .npz file ({str(exc).splitlines()[0]})") from None


# ----- Parquet ---------------------------------------------------------------------------------

_ID_COLUMNS = ("hist_item_ids", "hist_action_ids", "context_ids", "cand_item_ids")


def _read_parquet(path: Path, cfg: OneRankConfig) -> dict[str, np.ndarray]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0]})") from None
    _check_names(dict.fromkeys(table.column_names), str(path))
    b = table.num_rows
    if b == 0:
        raise DataError(f"{path}: holds no requests (0 rows)")
    cols = {name: table.column(name).combine_chunks() for name in table.column_names}
    lengths = {}
    for name, col in cols.items():
        nested = name in ("cand_features", LABELS)
        if not _is_list_of(col.type, "float" if nested else "int64", nested):
            want = "list<list<float>> (float32)" if nested else "list<int64>"
            raise DataError(f"{path}: column '{name}' has type {col.type}, expected {want}")
        if col.null_count:
            raise DataError(f"{path}: column '{name}' row {int(np.flatnonzero(col.is_null())[0])} is null")
        lengths[name] = np.diff(np.asarray(col.offsets))
        flat = col.flatten()
        if flat.null_count:
            row = _row_of(int(np.flatnonzero(flat.is_null())[0]), lengths[name])
            raise DataError(f"{path}: column '{name}' row {row} has a null entry")
    hist_len = max(1, int(lengths["hist_item_ids"].max()))
    num_cand = max(1, int(lengths["cand_item_ids"].max()))
    for name, ref in (("hist_action_ids", "hist_item_ids"), ("cand_features", "cand_item_ids"),
                      (LABELS, "cand_item_ids")):
        if name in lengths and (lengths[name] != lengths[ref]).any():
            row = int(np.flatnonzero(lengths[name] != lengths[ref])[0])
            raise DataError(f"{path}: column '{name}' row {row} has {lengths[name][row]} entries but '{ref}' has "
                            f"{lengths[ref][row]}")
    out = {
        "hist_item_ids": _pad(cols["hist_item_ids"], lengths["hist_item_ids"], hist_len, left=True),
        "hist_action_ids": _pad(cols["hist_action_ids"], lengths["hist_action_ids"], hist_len, left=True),
        "context_ids": _pad(cols["context_ids"], lengths["context_ids"], int(lengths["context_ids"].max())),
        "cand_item_ids": _pad(cols["cand_item_ids"], lengths["cand_item_ids"], num_cand),
    }
    if (lengths["context_ids"] != cfg.num_context_fields).any():
        row = int(np.flatnonzero(lengths["context_ids"] != cfg.num_context_fields)[0])
        raise DataError(f"{path}: column 'context_ids' row {row} has {lengths['context_ids'][row]} entries, "
                        f"the model expects {cfg.num_context_fields}")
    for name, width in (("cand_features", cfg.num_cand_features), (LABELS, cfg.num_tasks)):
        if name in cols:
            out[name] = _pad_nested(path, name, cols[name], lengths[name], num_cand, width)
    return out


def _is_list_of(arrow_type, leaf: str, nested: bool) -> bool:
    import pyarrow as pa

    if not (pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type)):
        return False
    inner = arrow_type.value_type
    if nested:
        return _is_list_of(inner, leaf, nested=False)
    return pa.types.is_int64(inner) if leaf == "int64" else pa.types.is_float32(inner)


def _pad(col, lengths: np.ndarray, width: int, *, left: bool = False) -> np.ndarray:
    values = np.asarray(col.flatten())
    out = np.zeros((len(lengths), width), dtype=values.dtype if values.size else np.int64)
    rows = np.repeat(np.arange(len(lengths)), lengths)
    within = np.arange(values.size) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    out[rows, (width - lengths)[rows] + within if left else within] = values
    return out


def _pad_nested(path: Path, name: str, col, lengths: np.ndarray, num_cand: int, width: int) -> np.ndarray:
    inner = col.flatten()
    inner_len = np.diff(np.asarray(inner.offsets))
    if (inner_len != width).any():
        pos = int(np.flatnonzero(inner_len != width)[0])
        row = _row_of(pos, lengths)
        raise DataError(f"{path}: column '{name}' row {row} has a candidate with {inner_len[pos]} values, "
                        f"the model expects {width}")
    leaves = inner.flatten()
    if leaves.null_count:
        pos = int(np.flatnonzero(leaves.is_null())[0]) // width
        raise DataError(f"{path}: column '{name}' row {_row_of(pos, lengths)} has a null value")
    values = np.asarray(leaves, dtype=np.float32).reshape(-1, width)
    out = np.zeros((len(lengths), num_cand, width), dtype=np.float32)
    rows = np.repeat(np.arange(len(lengths)), lengths)
    within = np.arange(len(values)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    out[rows, within] = values
    return out


def _row_of(position: int, lengths: np.ndarray) -> int:
    """Request row holding flattened element `position` of a list column with per-row `lengths`."""
    return int(np.searchsorted(np.cumsum(lengths), position, side="right"))
