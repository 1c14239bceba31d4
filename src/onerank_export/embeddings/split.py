"""The split-mode contract: which row tensors the dense graph takes, and the lookup that makes them.

The dense graph takes the serving contract's five tensors (the ids stay: masks come from ids != 0)
plus one float32 row tensor per item-id tensor, [*ids.shape, d_model]. Torch-free: the Triton
lookup model, the parity runners and the calibration feed all build their feeds here.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from onerank_export import spec
from onerank_export.embeddings.store import Table

# row input -> the id input it is looked up from
ROW_INPUTS = {"hist_item_rows": "hist_item_ids", "cand_item_rows": "cand_item_ids"}
DENSE_INPUT_NAMES = (*spec.INPUT_NAMES, *ROW_INPUTS)
LOOKUP_INPUT_NAMES = tuple(ROW_INPUTS.values())
LOOKUP_OUTPUT_NAMES = tuple(ROW_INPUTS)
STORE_DIR = "embeddings"  # inside a build: DIR/embeddings/


def row_axes(row_name: str) -> tuple[str, ...]:
    ids = next(s for s in spec.INPUTS if s.name == ROW_INPUTS[row_name])
    return (*ids.axes, "d_model")


def lookup_rows(table: Table, request: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """{row input: float32 rows} for a request holding the id tensors."""
    return {row: table.lookup(request[ids]) for row, ids in ROW_INPUTS.items()}


def dense_feed(table: Table, request: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The dense graph's full feed: the request's contract tensors plus their looked-up rows."""
    return {**{n: request[n] for n in spec.INPUT_NAMES}, **lookup_rows(table, request)}
