"""The one optimisation profile of each engine, and the TensorRT rules it must keep (pure, no TensorRT).

Four graphs are built into engines (their `role`, as the ONNX export names it):

    serving           the request tensors of the serving contract (spec.profile_shapes)
    user_encoder      hist_item_ids, hist_action_ids (the same contract tensors)
    candidate_scorer  the user states (user_states.StateSpec.profile_shapes: U = hist_len +
                      num_anchor_tokens) + context_ids, cand_item_ids, cand_features
    dense             split mode: the contract tensors + hist_item_rows / cand_item_rows
                      (embeddings/split.py), each row tensor its id tensor's shape + d_model

Every range comes from `spec.axis_range` / `user_states.axis_range`, the ranges the exported
ONNX, the Triton configs and the request checks read, so an engine accepts exactly what they accept.

`check_profile` holds a profile to the rules TensorRT applies when the profile is added or the
engine is built (NvInferRuntime.h IOptimizationProfile::setDimensions: min <= opt <= max per axis,
every dynamic input of the network needs one; a static axis must be given its size), plus the
project's rule that axes one name shares across inputs (batch, user_len, num_candidates) get one
range, since the graph combines those tensors along that axis.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from onerank_export import spec
from onerank_export.config import OneRankConfig
from onerank_export.embeddings.split import DENSE_INPUT_NAMES, ROW_INPUTS
from onerank_export.errors import StageError

ProfileShapes = dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]
Dims = Sequence[int | str]  # one input's dims: a size, or the name of a dynamic axis ("" or -1: unnamed)

SERVING, USER_ENCODER, CANDIDATE_SCORER, DENSE = "serving", "user_encoder", "candidate_scorer", "dense"
ROLES = (SERVING, USER_ENCODER, CANDIDATE_SCORER, DENSE)


def input_names(config: OneRankConfig, role: str = SERVING) -> tuple[str, ...]:
    """The inputs of a role's graph: what its export config (export/onnx_config.py) declares, read from
    the same sources (that module imports torch, which the plan metadata readers must not)."""
    from onerank_export.user_states import ENCODER_INPUTS, scorer_input_names

    if role == SERVING:
        return spec.INPUT_NAMES
    if role == USER_ENCODER:
        return ENCODER_INPUTS
    if role == CANDIDATE_SCORER:
        return scorer_input_names(config)
    if role == DENSE:
        return DENSE_INPUT_NAMES
    raise StageError(f"unknown engine role {role!r} (known: {', '.join(ROLES)})")


def declared_inputs(config: OneRankConfig, role: str = SERVING) -> dict[str, tuple[int | str, ...]]:
    """{input: dims} with the dynamic axes by name, as the export writes them into the ONNX."""
    from onerank_export.user_states import state_specs

    states = {s.name: s for s in state_specs(config)}
    contract = {s.name: s for s in spec.INPUTS}
    rows = ROW_INPUTS
    out = {}
    for name in input_names(config, role):
        s = states.get(name) or contract[rows.get(name, name)]
        dims = tuple(a if d is None else d for a, d in zip(s.axes, s.static_dims(config), strict=True))
        out[name] = (*dims, config.d_model) if name in rows else dims  # a row: its ids' axes + d_model
    return out


def optimization_profile(config: OneRankConfig, role: str = SERVING) -> ProfileShapes:
    """{input name: (min, opt, max)} for every input of the role's graph."""
    from onerank_export.user_states import state_specs

    states = {s.name: s for s in state_specs(config)}
    contract = {s.name: s for s in spec.INPUTS}
    rows = ROW_INPUTS
    out: ProfileShapes = {}
    for name in input_names(config, role):
        if name in states:
            out[name] = states[name].profile_shapes(config)
        elif name in rows:  # the id tensor's (min, opt, max), one more static axis: one source for both
            out[name] = tuple((*shape, config.d_model) for shape in spec.profile_shapes(config, contract[rows[name]]))
        else:
            out[name] = spec.profile_shapes(config, contract[name])
    return out


def onnx_input_dims(onnx_path: Path) -> dict[str, tuple[int | str, ...]]:
    """The graph inputs of an ONNX file (initializers excluded), dims as sizes or axis names."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    initializers = {t.name for t in model.graph.initializer}
    return {i.name: tuple(d.dim_param if d.HasField("dim_param") else (d.dim_value if d.HasField("dim_value") else "")
                          for d in i.type.tensor_type.shape.dim)
            for i in model.graph.input if i.name not in initializers}


def onnx_io_dtypes(onnx_path: Path) -> dict[str, str]:
    """{input or output name: numpy dtype name} of an ONNX graph: what the engine's I/O tensors take,
    recorded in the plan metadata so the Triton config of a plan declares the ONNX's types."""
    import onnx
    from onnx.helper import tensor_dtype_to_np_dtype

    model = onnx.load(str(onnx_path), load_external_data=False)
    initializers = {t.name for t in model.graph.initializer}
    return {v.name: tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name
            for v in (*model.graph.input, *model.graph.output) if v.name not in initializers}


def check_profile(profile: ProfileShapes, inputs: Mapping[str, Dims]) -> list[str]:
    """What in `profile` TensorRT (or the graph) would refuse for a network with `inputs`; [] if nothing."""
    problems = []
    for name in sorted(set(inputs) - set(profile)):
        problems.append(f"input '{name}' has no optimisation profile (TensorRT needs one for every dynamic input)")
    for name in sorted(set(profile) - set(inputs)):
        problems.append(f"the profile names '{name}', which is not an input of the network")
    shared: dict[str, tuple[str, tuple[int, int, int]]] = {}  # axis name -> (first input, range)
    for name, dims in inputs.items():
        if name not in profile:
            continue
        shapes = profile[name]
        if len(shapes) != 3 or any(len(s) != len(dims) for s in shapes):
            problems.append(f"'{name}': profile shapes {[list(s) for s in shapes]} do not have the input's "
                            f"rank {len(dims)}")
            continue
        for axis, dim in enumerate(dims):
            lo, opt, hi = (s[axis] for s in shapes)
            if isinstance(dim, int) and dim >= 0:
                if not lo == opt == hi == dim:
                    problems.append(f"'{name}' axis {axis} is static ({dim}) but the profile gives {lo}/{opt}/{hi}")
                continue
            if not 1 <= lo <= opt <= max(hi, 0):
                problems.append(f"'{name}' axis {axis}: min {lo} <= opt {opt} <= max {hi} (all >= 1) does not hold")
            if isinstance(dim, str) and dim:
                first = shared.setdefault(dim, (name, (lo, opt, hi)))
                if first[1] != (lo, opt, hi):
                    problems.append(f"'{name}' axis {axis} ('{dim}') has range {lo}/{opt}/{hi} but '{first[0]}' "
                                    f"has {'/'.join(map(str, first[1]))}: inputs sharing an axis need one range")
    return problems


def require_valid_profile(onnx_path: Path, profile: ProfileShapes) -> None:
    """A one-line StageError when the profile does not fit the ONNX's inputs (before TensorRT is involved)."""
    problems = check_profile(profile, onnx_input_dims(onnx_path))
    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        raise StageError(f"{onnx_path.name}: {problems[0]}{more}; re-export the ONNX with this version")
