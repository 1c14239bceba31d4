"""The serving contract as data: one description of every input and output, and its one checker.

Everything that needs tensor names, dtypes or axes reads them from here: the ONNX export's
dynamic axes, TensorRT optimisation profiles, Triton `dims`, the demo data generator and the
contract checker (`check_arrays`). The checker is the only place the rules live; the request
validator at the edge (CLI, Triton client helper, the python-backend model), the calibration
data reader and the parity case builder each word its `ContractViolation` for their own users.
Numpy only: the python-backend model imports this module, and must not pull in torch.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

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


# ----- the contract checker ------------------------------------------------------------------

# The batch axis has no upper bound unless the caller gives one (a Triton model's max_batch_size):
# the model itself scores any B. The largest int64 stands for "no limit", as in a shape.
NO_LIMIT = int(np.iinfo(np.int64).max)


class Violation(str, enum.Enum):
    """What is wrong. The members are in the order the checker looks (see `check_arrays`)."""

    MISSING = "missing"  # a contract tensor is absent
    UNKNOWN = "unknown"  # a name the contract (and the caller's extras) does not know
    NOT_ARRAY = "not_array"  # the value is not a numpy array; found = its type name
    DTYPE = "dtype"  # found = the dtype name, expected = the contract's
    RANK = "rank"  # shape = what was given, expected = the contract's axes
    STATIC_AXIS = "static_axis"  # an axis fixed by the config has another size
    DISAGREE = "disagree"  # two tensors give one dynamic axis different sizes
    RANGE = "range"  # a dynamic axis outside [lo, hi]
    VOCAB = "vocab"  # an id outside [0, vocab)
    NOT_FINITE = "not_finite"  # NaN or inf in a float tensor


@dataclass(frozen=True)
class ContractViolation:
    """The first problem the checker found, as data: each caller turns it into its own message."""

    kind: Violation
    tensor: str | None  # None only from `check_dims`, which sees sizes and no tensors
    axis: str | None = None  # STATIC_AXIS, DISAGREE, RANGE
    size: int | None = None  # the axis size found (STATIC_AXIS, DISAGREE, RANGE)
    # DTYPE: dtype name; RANK: axes; STATIC_AXIS: size; DISAGREE: other tensor's size;
    # RANGE: (lo, hi), hi may be NO_LIMIT; VOCAB: vocabulary size
    expected: Any = None
    other_tensor: str | None = None  # DISAGREE: the tensor that fixed the axis first
    found: str | None = None  # NOT_ARRAY: type name; DTYPE: dtype name
    shape: tuple[int, ...] | None = None  # RANK: the shape given
    index: tuple[int, ...] | None = None  # VOCAB, NOT_FINITE: first offending element, row first
    value: int | float | None = None  # VOCAB, NOT_FINITE: the offending value
    vocab_field: str | None = None  # VOCAB: the config field bounding the ids

    @property
    def row(self) -> int | None:
        """The request (batch row) holding the offending element."""
        return None if self.index is None else self.index[0]

    @property
    def position(self) -> list[int] | None:
        """Where in that request's tensor: the index without the row."""
        return None if self.index is None else list(self.index[1:])

    def describe(self, wording: Wording, **extra: object) -> str:
        """This violation in a caller's words.

        `wording` maps a kind to a `str.format` template; a (kind, tensor) or (kind, axis) key
        overrides it for that tensor or axis. A template sees every field above (index and shape
        as lists), the derived `row` and `position`, `rank`, `axes` and `expected_rank` (RANK),
        `lo` and `hi` (RANGE), and the caller's `extra`.
        """
        template = (wording.get((self.kind, self.tensor)) or wording.get((self.kind, self.axis))
                    or wording[self.kind])
        values: dict[str, object] = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(row=self.row, position=self.position)
        if self.index is not None:
            values.update(index=list(self.index))  # [1, 4], as numpy users write an index
        if self.kind is Violation.RANK:
            values.update(shape=list(self.shape), rank=len(self.shape), axes=", ".join(self.expected),
                          expected_rank=len(self.expected))
        if self.kind is Violation.RANGE:
            values.update(lo=self.expected[0], hi=self.expected[1])
        return template.format(**values, **extra)


# A caller's words for each kind of violation: see `ContractViolation.describe`.
Wording = Mapping[Violation | tuple[Violation, str | None], str]


def check_arrays(
    config: OneRankConfig,
    arrays: Mapping[str, object],
    *,
    extra: Sequence[TensorSpec] = (),
    max_batch: int | None = None,
) -> ContractViolation | None:
    """The first way `arrays` break the serving contract, or None when they follow it.

    `extra` are optional tensors beyond INPUTS (e.g. calibration labels): unknown when absent
    from `extra`, checked by the same rules when present. The order is fixed, so the same
    arrays always give the same answer, and a cheap rule runs before an expensive one:
      1. names: MISSING (contract order), then UNKNOWN (sorted);
      2. per tensor, INPUTS then the extras given: NOT_ARRAY, DTYPE, RANK, then axis by axis
         STATIC_AXIS and DISAGREE (against the first tensor holding that axis);
      3. RANGE of each dynamic axis in DYNAMIC_AXES order (`check_dims`), naming the tensor
         that fixed the size; the batch axis is bounded by `max_batch` only when given;
      4. per tensor, same order: VOCAB for id tensors, NOT_FINITE for float tensors, at the
         first offending element in C order.
    """
    problem = check_names(arrays, extra=extra)
    if problem is not None:
        return problem
    specs = [*INPUTS, *(s for s in extra if s.name in arrays)]
    static = static_axis_sizes(config)
    fixed: dict[str, tuple[int, str]] = {}  # dynamic axis -> (size, tensor that fixed it)
    for s in specs:
        problem = _check_layout(s, arrays[s.name], static, fixed)
        if problem is not None:
            return problem
    problem = check_dims(config, {axis: size for axis, (size, _) in fixed.items()}, max_batch=max_batch)
    if problem is not None:
        return replace(problem, tensor=fixed[problem.axis][1])
    for s in specs:
        problem = _check_values(config, s, arrays[s.name])
        if problem is not None:
            return problem
    return None


def check_names(names: Collection[str], *, extra: Sequence[TensorSpec] = ()) -> ContractViolation | None:
    """Rule 1 of `check_arrays` alone, for readers that see names before they have arrays."""
    for s in INPUTS:
        if s.name not in names:
            return ContractViolation(Violation.MISSING, s.name)
    unknown = sorted(set(names) - set(INPUT_NAMES) - {s.name for s in extra})
    if unknown:
        return ContractViolation(Violation.UNKNOWN, unknown[0])
    return None


def check_dims(config: OneRankConfig, dims: Mapping[str, int], *, max_batch: int | None = None
               ) -> ContractViolation | None:
    """Rule 3 of `check_arrays` alone: dynamic axis sizes against the config's ranges, before
    anything is allocated. Axes missing from `dims` are not checked."""
    for axis in DYNAMIC_AXES:
        if axis not in dims:
            continue
        lo, _, hi = axis_range(config, axis)
        if axis == BATCH:
            hi = NO_LIMIT if max_batch is None else max_batch
        size = int(dims[axis])
        if not lo <= size <= hi:
            return ContractViolation(Violation.RANGE, None, axis=axis, size=size, expected=(lo, hi))
    return None


def _check_layout(s: TensorSpec, arr: object, static: Mapping[str, int], fixed: dict[str, tuple[int, str]]
                  ) -> ContractViolation | None:
    if not isinstance(arr, np.ndarray):
        return ContractViolation(Violation.NOT_ARRAY, s.name, found=type(arr).__name__)
    if arr.dtype != s.np_dtype:
        return ContractViolation(Violation.DTYPE, s.name, found=str(arr.dtype), expected=s.dtype)
    if arr.ndim != len(s.axes):
        return ContractViolation(Violation.RANK, s.name, shape=tuple(arr.shape), expected=s.axes)
    for axis, size in zip(s.axes, arr.shape, strict=True):
        if axis in static and size != static[axis]:
            return ContractViolation(Violation.STATIC_AXIS, s.name, axis=axis, size=size, expected=static[axis])
        if axis in DYNAMIC_AXES:
            first, by = fixed.setdefault(axis, (size, s.name))
            if first != size:
                return ContractViolation(Violation.DISAGREE, s.name, axis=axis, size=size, expected=first,
                                         other_tensor=by)
    return None


def _check_values(config: OneRankConfig, s: TensorSpec, arr: np.ndarray) -> ContractViolation | None:
    if s.vocab_field is not None:
        vocab = getattr(config, s.vocab_field)
        bad = (arr < 0) | (arr >= vocab)
        kind, expected = Violation.VOCAB, vocab
    elif np.issubdtype(arr.dtype, np.floating):
        bad = ~np.isfinite(arr)
        kind, expected = Violation.NOT_FINITE, None
    else:
        return None
    if not bad.any():
        return None
    index = tuple(int(i) for i in np.unravel_index(int(np.argmax(bad)), bad.shape))  # argmax: first True
    return ContractViolation(kind, s.name, expected=expected, index=index, value=arr[index].item(),
                             vocab_field=s.vocab_field)


def dynamic_sizes(arrays: Mapping[str, np.ndarray]) -> dict[str, int]:
    """Sizes of the dynamic axes of a request that passed the checker (they agree across tensors)."""
    sizes: dict[str, int] = {}
    for s in INPUTS:
        for axis, size in zip(s.axes, arrays[s.name].shape, strict=True):
            if axis in DYNAMIC_AXES:
                sizes.setdefault(axis, int(size))
    return {axis: sizes[axis] for axis in DYNAMIC_AXES}


# ----- requests: the edge's validator and a generator ---------------------------------------------

_REQUEST_WORDING: Wording = {
    Violation.MISSING: "missing input '{tensor}' (inputs are {inputs})",
    Violation.UNKNOWN: "unknown input '{tensor}' (inputs are {inputs})",
    Violation.NOT_ARRAY: "input '{tensor}' must be a numpy array, got {found}",
    Violation.DTYPE: "input '{tensor}' has dtype {found}, expected {expected} (convert with .astype(np.{expected}))",
    Violation.RANK: "input '{tensor}' has rank {rank} (shape {shape}), expected rank {expected_rank} [{axes}]",
    Violation.STATIC_AXIS: "input '{tensor}' axis {axis} is {size}, the model expects {expected}",
    Violation.DISAGREE: ("input '{tensor}' has {axis}={size} but another input has {axis}={expected}; "
                         "all inputs of a request must agree"),
    Violation.RANGE: "{axis}={size} is outside the model's range [{lo}, {hi}] (config max for {axis})",
    (Violation.RANGE, BATCH): "{axis}={size} is outside the model's range [{lo}, {hi}]",
    Violation.VOCAB: ("{tensor}{index} = {value} is outside [0, {expected}) ({vocab_field}); "
                      "map unknown ids to a valid bucket upstream"),
    Violation.NOT_FINITE: "{tensor}{index} is {value}; features must be finite",
}


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
    problem = check_arrays(config, feed, max_batch=max_batch)
    if problem is not None:
        raise RequestError(f"{where}: {problem.describe(_REQUEST_WORDING, inputs=', '.join(INPUT_NAMES))}")
    return dynamic_sizes(feed)


def random_request(config: OneRankConfig, rng: np.random.Generator, batch: int, hist_len: int,
                   num_candidates: int, *, full: bool = False) -> dict[str, np.ndarray]:
    """Valid random request of the given shape (ranges are the caller's: see `check_dims`).

    Ids are drawn from [1, vocab) and features from N(0, 1). Unless `full`, each row's history is
    left-padded and its candidates right-padded to random real lengths, as in production; every
    row keeps at least one real candidate unless the caller pads it away.
    """
    feed: dict[str, np.ndarray] = {}
    dims = {BATCH: batch, HIST_LEN: hist_len, NUM_CANDIDATES: num_candidates}
    for s in INPUTS:
        shape = s.shape_for(config, dims)
        if s.vocab_field is None:
            feed[s.name] = rng.normal(size=shape).astype(s.np_dtype)
        else:
            feed[s.name] = rng.integers(1, getattr(config, s.vocab_field), size=shape, dtype=np.int64)
    if not full:
        hist_real = rng.integers(0, hist_len + 1, size=batch)
        cand_real = rng.integers(1, num_candidates + 1, size=batch)
        for i in range(batch):
            feed["hist_item_ids"][i, : hist_len - hist_real[i]] = 0
            feed["hist_action_ids"][i, : hist_len - hist_real[i]] = 0
            feed["cand_item_ids"][i, cand_real[i]:] = 0
            feed["cand_features"][i, cand_real[i]:] = 0.0
    return feed
