"""The manifest's `memory_plan` (issue 13, Build 5): what the tables and the dense model weigh, per
storage dtype, and what each Triton model instance holds of them.

Numbers are computed from the config and the written files (no weights loaded): the store's bytes
are rows x dim x itemsize (+ a float32 scale per row for int8), the dense model's are the ONNX
initializers' (read with load_external_data=False, so a 2 GB table is never read for this).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from onerank_export.config import OneRankConfig

# store dtype -> (bytes per element, bytes per row on top: int8's float32 scale)
STORE_BYTES = {"fp32": (4, 0), "fp16": (2, 0), "int8": (1, 4)}


def table_bytes(rows: int, dim: int, dtype: str) -> int:
    element, per_row = STORE_BYTES[dtype]
    return rows * (dim * element + per_row)


def initializer_bytes(onnx_path: Path) -> int:
    """Sum of an ONNX model's initializer bytes (external data counted from the tensors' shapes)."""
    import numpy as np
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    total = 0
    for tensor in model.graph.initializer:
        itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
        total += int(np.prod(tensor.dims, dtype=np.int64)) * itemsize
    return total


def memory_plan(config: OneRankConfig, mode: str, dense_onnx: Path | None, store_dtype: str | None,
                dense_precisions: Mapping[str, Path] | None = None) -> dict[str, Any]:
    """`mode` split: the lookup model maps the store (page cache shared by every instance and model:
    ~0 private bytes), the dense model holds its weights per instance. `mode` inline: the one model
    holds every table inside its weights, per instance. `dense_onnx`: the ONNX whose weights Triton
    loads (None when the build wrote none); `dense_precisions`: split mode's dense ONNX per precision,
    each served by its own ONNX Runtime backend model (`onerank_dense_onnx_<p>`, split_repository.py)."""
    from onerank_export.embeddings.limits import big_tables

    tables = {t.name: {"rows": t.rows, "dim": t.dim,
                       "bytes": {dtype: table_bytes(t.rows, t.dim, dtype) for dtype in STORE_BYTES}}
              for t in big_tables(config)}
    dense = initializer_bytes(dense_onnx) if dense_onnx is not None else None
    plan: dict[str, Any] = {"mode": mode, "tables": tables, "dense_model_bytes": dense}
    if mode == "split":
        store = sum(t["bytes"][store_dtype] for t in tables.values())
        plan["store_dtype"], plan["store_bytes"] = store_dtype, store
        plan["per_triton_instance"] = {
            "onerank_lookup": {"private_bytes": 0, "shared_bytes": store,
                               "holds": "memory-maps the store: one page cache shared by every instance"},
            "onerank_dense": {"private_bytes": dense, "shared_bytes": 0,
                              "holds": "its own copy of the dense weights (no item table)"}}
        for precision, path in sorted((dense_precisions or {}).items()):
            plan["per_triton_instance"][f"onerank_dense_onnx_{precision}"] = {
                "private_bytes": initializer_bytes(path), "shared_bytes": 0,
                "holds": f"its own copy of the {precision} dense weights (no item table)"}
    else:
        plan["per_triton_instance"] = {
            "onerank": {"private_bytes": dense, "shared_bytes": 0,
                        "holds": "its own copy of every weight, the item table included"}}
    return plan
