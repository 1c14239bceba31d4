"""The user states: what the user encoder hands the candidate scorer, and what the cache stores.

OneRank's user context (history and anchor tokens) is causal among itself and never attends to a
candidate, so every layer's user keys and values depend on the request's history alone. The
serving graph splits there (export/serving_graph.py): a *user encoder* maps the history to these
tensors, a *candidate scorer* maps them plus context and candidates to scores. The names, axes and
shapes below are that interface: the two exported graphs, their Triton configs and TensorRT
profiles, and the cache's entries all read them from here. Numpy only (the python-backend model
imports it).

    user_key_mask   [B, 1, U, 1]     0 for a real key, MASKED_SCORE for a padded history position
    user_key_<i>    [B, H, U, d/H]   layer i's user keys (before the 1/sqrt(d/H) scale)
    user_value_<i>  [B, H, U, d/H]   layer i's user values
with U = L + num_anchor_tokens (history positions, then the anchors).
"""

from __future__ import annotations

from dataclasses import dataclass

from onerank_export import spec
from onerank_export.config import OneRankConfig

KEY_MASK = "user_key_mask"
USER_LEN = "user_len"  # U = hist_len + num_anchor_tokens: dynamic, follows hist_len
NUM_HEADS = "num_heads"
HEAD_DIM = "head_dim"
ONE = "one"

# The history tensors the user encoder reads: the cache key is computed from exactly these.
ENCODER_INPUTS = ("hist_item_ids", "hist_action_ids")
# The request tensors the candidate scorer reads besides the states.
SCORER_REQUEST_INPUTS = ("context_ids", "cand_item_ids", "cand_features")


def key_name(layer: int) -> str:
    return f"user_key_{layer}"


def value_name(layer: int) -> str:
    return f"user_value_{layer}"


@dataclass(frozen=True)
class StateSpec:
    name: str
    axes: tuple[str, ...]

    def shape(self, config: OneRankConfig, batch: int, hist_len: int) -> tuple[int, ...]:
        sizes = {spec.BATCH: batch, USER_LEN: hist_len + config.num_anchor_tokens, ONE: 1,
                 NUM_HEADS: config.n_heads, HEAD_DIM: config.d_model // config.n_heads}
        return tuple(sizes[a] for a in self.axes)

    def profile_shapes(self, config: OneRankConfig) -> tuple[tuple[int, ...], ...]:
        """(min_shape, opt_shape, max_shape) for a TensorRT optimisation profile: `axis_range` per axis."""
        ranges = {a: axis_range(config, a) for a in (spec.BATCH, spec.HIST_LEN)}
        return tuple(self.shape(config, ranges[spec.BATCH][i], ranges[spec.HIST_LEN][i]) for i in range(3))

    def static_dims(self, config: OneRankConfig) -> tuple[int | None, ...]:
        """-1-free dims with None for the dynamic axes (batch, user_len)."""
        sizes = {ONE: 1, NUM_HEADS: config.n_heads, HEAD_DIM: config.d_model // config.n_heads}
        return tuple(sizes.get(a) for a in self.axes)


def axis_range(config: OneRankConfig, axis: str) -> tuple[int, int, int]:
    """(min, opt, max) of a dynamic axis of the states: the batch and history axes of the serving
    contract (spec.axis_range), and U = hist_len + num_anchor_tokens. The scorer's TensorRT profile,
    its Triton dims and any check of a state tensor read the ranges from here."""
    if axis == USER_LEN:
        return tuple(n + config.num_anchor_tokens for n in spec.axis_range(config, spec.HIST_LEN))
    return spec.axis_range(config, axis)


def state_specs(config: OneRankConfig) -> tuple[StateSpec, ...]:
    """In the order the encoder returns them and the scorer takes them."""
    kv = (spec.BATCH, NUM_HEADS, USER_LEN, HEAD_DIM)
    out = [StateSpec(KEY_MASK, (spec.BATCH, ONE, USER_LEN, ONE))]
    for i in range(config.n_layers):
        out += [StateSpec(key_name(i), kv), StateSpec(value_name(i), kv)]
    return tuple(out)


def state_names(config: OneRankConfig) -> tuple[str, ...]:
    return tuple(s.name for s in state_specs(config))


def scorer_input_names(config: OneRankConfig) -> tuple[str, ...]:
    return (*state_names(config), *SCORER_REQUEST_INPUTS)


def state_nbytes_per_row(config: OneRankConfig, hist_len: int, itemsize: int = 4) -> int:
    """Bytes one request's states take at `itemsize` bytes per element: the cache's sizing rule."""
    total = 0
    for s in state_specs(config):
        n = 1
        for dim in s.shape(config, 1, hist_len):
            n *= dim
        total += n * itemsize
    return total
