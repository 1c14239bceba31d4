"""The serving contract as data: one description of every input and output.

Everything that needs tensor names, dtypes or axes reads them from here: the ONNX export's
dynamic axes, TensorRT optimisation profiles, Triton `dims`, request validation at the edge
(CLI, Triton client helper, the python-backend model) and the demo data generator.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from onerank_export.config import OneRankConfig
from onerank_export.errors import RequestError

# Axis symbols. Dynamic axes vary per request; static ones are fixed by the config.
BATCH = "batch"
HIST_LEN = "hist_len"
NUM_CANDIDATES = "num_candidates"
NUM_CONTEXT_FIELDS = "num_context_fields"
NUM_CAND_FEATURES = "num_cand_features"
NUM_TASKS = "num_tasks"
DYNAMIC_AXES = (BATCH, HIST_LEN, NUM_CANDIDATES)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name
    axes: tuple[str, ...]
    doc: str
    vocab_field: str | None = None  # config field bounding the ids, for id tensors

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)

    def static_dims(self, config: OneRankConfig) -> tuple[int | None, ...]:
        """Dimensions with None for each dynamic axis."""
        sizes = static_axis_sizes(config)
        return tuple(None if a in DYNAMIC_AXES else sizes[a] for a in self.axes)

    def shape_for(self, config: OneRankConfig, dynamic: Mapping[str, int]) -> tuple[int, ...]:
        sizes = {**static_axis_sizes(config), **dynamic}
        return tuple(sizes[a] for a in self.axes)


INPUTS: tuple[TensorSpec, ...] = (
    TensorSpec("hist_item_ids", "int64", (BATCH, HIST_LEN),
               "user behaviour sequence, oldest first, 0 = pad", "item_vocab_size"),
    TensorSpec("hist_action_ids", "int64", (BATCH, HIST_LEN),
               "behaviour type per history position (view, click, cart, order), 0 = pad", "action_vocab_size"),
    TensorSpec("context_ids", "int64", (BATCH, NUM_CONTEXT_FIELDS),
               "situational descriptor buckets: query, hour, geo, device", "context_vocab_size"),
    TensorSpec("cand_item_ids", "int64", (BATCH, NUM_CANDIDATES), "candidates, 0 = pad", "item_vocab_size"),
    TensorSpec("cand_features", "float32", (BATCH, NUM_CANDIDATES, NUM_CAND_FEATURES),
               "dense candidate features"),
)

OUTPUTS: tuple[TensorSpec, ...] = (
    TensorSpec("scores", "float32", (BATCH, NUM_CANDIDATES, NUM_TASKS),
               "per-task probabilities in config task order; 0 for padded candidates"),
)

INPUT_NAMES = tuple(s.name for s in INPUTS)
OUTPUT_NAMES = tuple(s.name for s in OUTPUTS)


def static_axis_sizes(config: OneRankConfig) -> dict[str, int]:
    return {
        NUM_CONTEXT_FIELDS: config.num_context_fields,
        NUM_CAND_FEATURES: config.num_cand_features,
        NUM_TASKS: config.num_tasks,
    }


def axis_range(config: OneRankConfig, axis: str) -> tuple[int, int, int]:
    """(min, opt, max) of a dynamic axis: TensorRT profiles, Triton limits, request checks."""
    s = config.serving
    if axis == BATCH:
        return 1, s.opt_batch_size, s.max_batch_size
    if axis == HIST_LEN:
        return 1, s.opt_hist_len, config.max_hist_len
    if axis == NUM_CANDIDATES:
        return 1, s.opt_candidates, config.max_candidates
    raise KeyError(f"{axis!r} is not a dynamic axis")


def profile_shapes(config: OneRankConfig, spec: TensorSpec) -> tuple[tuple[int, ...], ...]:
    """(min_shape, opt_shape, max_shape) of one input, for a TensorRT optimisation profile."""
    ranges = {a: axis_range(config, a) for a in DYNAMIC_AXES}
    return tuple(spec.shape_for(config, {a: r[i] for a, r in ranges.items()}) for i in range(3))


def validate_request(
    config: OneRankConfig,
    feed: Mapping[str, np.ndarray],
    *,
    max_batch: int | None = None,
    where: str = "request",
) -> dict[str, int]:
    """Check a request against the serving contract; return the resolved dynamic axis sizes.

    Raises RequestError with one line naming the tensor, the problem and the fix.
    """
    missing = [s.name for s in INPUTS if s.name not in feed]
    if missing:
        raise RequestError(f"{where}: missing input '{missing[0]}' (inputs are {', '.join(INPUT_NAMES)})")
    extra = sorted(set(feed) - set(INPUT_NAMES))
    if extra:
        raise RequestError(f"{where}: unknown input '{extra[0]}' (inputs are {', '.join(INPUT_NAMES)})")

    resolved: dict[str, int] = {}
    static = static_axis_sizes(config)
    for spec in INPUTS:
        arr = feed[spec.name]
        if not isinstance(arr, np.ndarray):
            raise RequestError(f"{where}: input '{spec.name}' must be a numpy array, got {type(arr).__name__}")
        if arr.dtype != spec.np_dtype:
            raise RequestError(f"{where}: input '{spec.name}' has dtype {arr.dtype}, expected {spec.dtype} "
                               f"(convert with .astype(np.{spec.dtype}))")
        if arr.ndim != len(spec.axes):
            raise RequestError(f"{where}: input '{spec.name}' has rank {arr.ndim} (shape {list(arr.shape)}), "
                               f"expected rank {len(spec.axes)} [{', '.join(spec.axes)}]")
        for axis, size in zip(spec.axes, arr.shape, strict=True):
            if axis in static and size != static[axis]:
                raise RequestError(f"{where}: input '{spec.name}' axis {axis} is {size}, "
                                   f"the model expects {static[axis]}")
            if axis in DYNAMIC_AXES:
                if axis in resolved and resolved[axis] != size:
                    raise RequestError(f"{where}: input '{spec.name}' has {axis}={size} but another input "
                                       f"has {axis}={resolved[axis]}; all inputs of a request must agree")
                resolved[axis] = size

    for axis in DYNAMIC_AXES:
        lo, _, hi = axis_range(config, axis)
        if axis == BATCH:
            hi = max_batch if max_batch is not None else np.iinfo(np.int64).max
        size = resolved[axis]
        if not lo <= size <= hi:
            raise RequestError(f"{where}: {axis}={size} is outside the model's range [{lo}, {hi}]"
                               + (f" (config max for {axis})" if axis != BATCH else ""))

    for spec in INPUTS:
        arr = feed[spec.name]
        if spec.vocab_field is not None:
            vocab = getattr(config, spec.vocab_field)
            bad = (arr < 0) | (arr >= vocab)
            if bad.any():
                idx = tuple(int(i) for i in np.argwhere(bad)[0])
                raise RequestError(f"{where}: {spec.name}{list(idx)} = {int(arr[idx])} is outside [0, {vocab}) "
                                   f"({spec.vocab_field}); map unknown ids to a valid bucket upstream")
        elif not np.isfinite(arr).all():
            idx = tuple(int(i) for i in np.argwhere(~np.isfinite(arr))[0])
            raise RequestError(f"{where}: {spec.name}{list(idx)} is {arr[idx]}; features must be finite")
    return resolved
