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
from onerank_export.spec import ContractViolation, Violation, Wording

LABELS = "labels"
# Labels go through the contract checker like the inputs (dtype, shape, agreement, finiteness);
# only the 0/1 rule is this module's own.
LABELS_SPEC = spec.TensorSpec(LABELS, "float32", (spec.BATCH, spec.NUM_CANDIDATES, spec.NUM_TASKS),
                              "0/1 per candidate and task, in the config's task order")
KNOWN = (*spec.INPUT_NAMES, LABELS)

# The contract's violations in the words of a request file: tensors, and rows of requests.
_FILE_WORDING: Wording = {
    Violation.MISSING: "missing tensor '{tensor}' (a request file holds {inputs} and optionally '{labels}')",
    Violation.UNKNOWN: "unknown tensor '{tensor}' (known: {known})",
    Violation.NOT_ARRAY: "tensor '{tensor}' is a {found}, not a numpy array",
    Violation.DTYPE: "tensor '{tensor}' has dtype {found}, expected {expected} (store it with .astype(np.{expected}))",
    (Violation.DTYPE, LABELS): "tensor '{tensor}' has dtype {found}, expected {expected} (0/1 per task)",
    Violation.RANK: "tensor '{tensor}' has shape {shape}, expected rank {expected_rank} [{axes}]",
    Violation.STATIC_AXIS: "tensor '{tensor}' has {axis}={size}, the model expects {expected}",
    Violation.DISAGREE: ("tensor '{tensor}' has {axis}={size} but '{other_tensor}' has {expected}; "
                         "all tensors of a file must agree"),
    Violation.RANGE: "tensor '{tensor}' has {axis}={size}, outside the model's range [{lo}, {hi}]",
    # Files have no batch limit: the only way out of the batch range is no rows at all.
    (Violation.RANGE, spec.BATCH): "holds no requests (tensor '{tensor}' has {size} rows)",
    Violation.VOCAB: ("tensor '{tensor}' row {row}: id {value} at position {position} is outside [0, {expected}) "
                      "({vocab_field}); map unknown ids to a valid bucket upstream"),
    Violation.NOT_FINITE: "tensor '{tensor}' row {row}: {value} at position {position}; values must be finite",
}


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
    """(features, labels or None) once the arrays follow the serving contract (`spec.check_arrays`,
    labels as an optional extra tensor) and every label is 0 or 1; else a DataError naming the row."""
    problem = spec.check_arrays(cfg, arrays, extra=(LABELS_SPEC,))
    if problem is not None:
        raise DataError(f"{where}: {_describe(problem)}")
    labels = arrays.get(LABELS)
    if labels is not None:
        bad = (labels != 0) & (labels != 1)
        if bad.any():
            idx = [int(i) for i in np.argwhere(bad)[0]]
            raise DataError(f"{where}: tensor '{LABELS}' row {idx[0]}: value {labels[tuple(idx)]} at position "
                            f"{idx[1:]} is not 0 or 1")
    return {s.name: arrays[s.name] for s in spec.INPUTS}, labels


def _describe(problem: ContractViolation) -> str:
    return problem.describe(_FILE_WORDING, inputs=", ".join(spec.INPUT_NAMES), labels=LABELS, known=", ".join(KNOWN))


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
    problem = spec.check_names(table.column_names, extra=(LABELS_SPEC,))
    if problem is not None:
        raise DataError(f"{path}: {_describe(problem)}")
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
