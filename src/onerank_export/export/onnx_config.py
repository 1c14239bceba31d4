"""How OneRank is exported: one declarative description (in the spirit of optimum's `OnnxConfig`).

The opset, the dynamic axes (from the serving contract in `spec.py`), the example request the
exporter traces with, and the parity tolerance each precision of the exported model is held to
all live here; the exporter, the parity suite and the checks of the reduced-precision models
read them from this object instead of keeping their own copies.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from onerank_export import spec
from onerank_export.config import OneRankConfig
from onerank_export.precision import DEFAULT_TOLERANCES, Precision, Tolerance

if TYPE_CHECKING:
    import torch

    from onerank_export.model.onerank import OneRankModel

OPSET = 20  # the ai.onnx opset the export writes
# TensorRT 10.0+ parses ai.onnx opsets 9..20; per-channel DequantizeLinear needs >= 13.
TENSORRT_MIN_QDQ_OPSET, TENSORRT_MAX_OPSET = 13, 20
# Example sizes: distinct, > 1, so the exporter cannot confuse or specialise dynamic axes.
EXAMPLE_DIMS = {spec.BATCH: 2, spec.HIST_LEN: 11, spec.NUM_CANDIDATES: 7}


@dataclass(frozen=True)
class OneRankOnnxConfig:
    opset: int = OPSET
    example_dims: Mapping[str, int] = field(default_factory=lambda: dict(EXAMPLE_DIMS))
    tolerances: Mapping[Precision, Tolerance] = field(default_factory=lambda: dict(DEFAULT_TOLERANCES))
    role: str = "serving"  # which graph: the single serving graph, or one half of it (below)
    matching_score_nodes: int = 1  # how many onerank::MatchingScore nodes the export must contain

    @property
    def input_names(self) -> tuple[str, ...]:
        return spec.INPUT_NAMES

    def input_names_for(self, config: OneRankConfig) -> tuple[str, ...]:
        return self.input_names

    def output_names_for(self, config: OneRankConfig) -> tuple[str, ...]:
        return self.output_names

    def module(self, serving):
        """The torch module to export, given the ServingGraph."""
        return serving

    @property
    def output_names(self) -> tuple[str, ...]:
        return spec.OUTPUT_NAMES

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """{tensor: {axis index: axis name}} for every input and output, from the serving contract."""
        return {s.name: {i: a for i, a in enumerate(s.axes) if a in spec.DYNAMIC_AXES}
                for s in (*spec.INPUTS, *spec.OUTPUTS)}

    def dynamic_shapes(self, model: OneRankModel) -> dict[str, dict[int, torch.export.Dim]]:
        import torch

        cfg = model.cfg
        dims = {a: torch.export.Dim(a, min=1, max=max(spec.axis_range(cfg, a)[2], 2)) for a in spec.DYNAMIC_AXES}
        return {name: {i: dims[a] for i, a in axes.items()} for name, axes in self.dynamic_axes().items()
                if name in self.input_names_for(cfg)}

    def example_inputs(self, model: OneRankModel) -> tuple[torch.Tensor, ...]:
        """A small valid request: some history and candidates real, the rest padding."""
        import torch

        cfg = model.cfg
        g = torch.Generator().manual_seed(0)
        out = []
        for s in spec.INPUTS:
            shape = s.shape_for(cfg, self.example_dims)
            if s.vocab_field is None:
                out.append(torch.randn(shape, generator=g))
            else:
                t = torch.randint(1, getattr(cfg, s.vocab_field), shape, generator=g)
                if s.name.startswith("hist"):
                    t[0, :3] = 0
                if s.name == "cand_item_ids":
                    t[1, -2:] = 0
                out.append(t)
        return tuple(out)


ONERANK_ONNX_CONFIG = OneRankOnnxConfig()


# ----- the two halves of the serving graph, for the user-state cache (user_states.py) -------------


@dataclass(frozen=True)
class UserEncoderOnnxConfig(OneRankOnnxConfig):
    """History -> user states. Inputs: hist_item_ids, hist_action_ids; outputs: the states."""

    role: str = "user_encoder"
    matching_score_nodes: int = 0

    @property
    def input_names(self) -> tuple[str, ...]:
        from onerank_export.user_states import ENCODER_INPUTS

        return ENCODER_INPUTS

    def output_names_for(self, config) -> tuple[str, ...]:
        from onerank_export.user_states import state_names

        return state_names(config)

    def module(self, serving):
        from onerank_export.export.serving_graph import UserEncoderGraph

        return UserEncoderGraph(serving)

    def example_inputs(self, model: OneRankModel) -> tuple[torch.Tensor, ...]:
        request = dict(zip(spec.INPUT_NAMES, OneRankOnnxConfig.example_inputs(self, model), strict=True))
        return tuple(request[n] for n in self.input_names)


@dataclass(frozen=True)
class CandidateScorerOnnxConfig(OneRankOnnxConfig):
    """User states + context + candidates -> scores (the serving graph after the user side)."""

    role: str = "candidate_scorer"

    def input_names_for(self, config) -> tuple[str, ...]:
        from onerank_export.user_states import scorer_input_names

        return scorer_input_names(config)

    def module(self, serving):
        from onerank_export.export.serving_graph import CandidateScorerGraph

        return CandidateScorerGraph(serving)

    def dynamic_shapes(self, model: OneRankModel) -> tuple[tuple[dict[int, torch.export.Dim], ...]]:
        import torch

        from onerank_export.user_states import USER_LEN, state_specs

        cfg = model.cfg
        dims = {a: torch.export.Dim(a, min=1, max=max(spec.axis_range(cfg, a)[2], 2)) for a in spec.DYNAMIC_AXES}
        dims[USER_LEN] = torch.export.Dim(USER_LEN, min=1, max=cfg.max_hist_len + cfg.num_anchor_tokens)
        request = {name: {i: dims[a] for i, a in axes.items()} for name, axes in self.dynamic_axes().items()}
        states = [{i: dims[a] for i, a in enumerate(s.axes) if a in dims} for s in state_specs(cfg)]
        # One entry: the scorer's forward takes its inputs as *args (their number follows n_layers).
        return ((*states, *(request[n] for n in self.input_names_for(cfg)[len(states):])),)

    def example_inputs(self, model: OneRankModel) -> tuple[torch.Tensor, ...]:
        import torch

        from onerank_export.export.serving_graph import ServingGraph

        request = dict(zip(spec.INPUT_NAMES, OneRankOnnxConfig.example_inputs(self, model), strict=True))
        with torch.no_grad():
            states = ServingGraph(model.eval()).user_states(request["hist_item_ids"], request["hist_action_ids"])
        return (*states, request["context_ids"], request["cand_item_ids"], request["cand_features"])


USER_ENCODER_ONNX_CONFIG = UserEncoderOnnxConfig()
CANDIDATE_SCORER_ONNX_CONFIG = CandidateScorerOnnxConfig()


# ----- split mode: the dense graph takes the looked-up item rows (embeddings/split.py) ------------


@dataclass(frozen=True)
class SplitDenseOnnxConfig(OneRankOnnxConfig):
    """The five contract tensors + hist_item_rows [B, L, d] + cand_item_rows [B, N, d] -> scores;
    the item table stays out of the graph (it lives in the embedding store)."""

    role: str = "dense"

    @property
    def input_names(self) -> tuple[str, ...]:
        from onerank_export.embeddings.split import DENSE_INPUT_NAMES

        return DENSE_INPUT_NAMES

    def module(self, serving):
        from onerank_export.export.serving_graph import SplitDenseGraph

        return SplitDenseGraph(serving)

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        from onerank_export.embeddings.split import ROW_INPUTS, row_axes

        axes = OneRankOnnxConfig.dynamic_axes(self)
        for row in ROW_INPUTS:
            axes[row] = {i: a for i, a in enumerate(row_axes(row)) if a in spec.DYNAMIC_AXES}
        return axes

    def example_inputs(self, model: OneRankModel) -> tuple[torch.Tensor, ...]:
        import torch

        from onerank_export.embeddings.split import ROW_INPUTS

        request = dict(zip(spec.INPUT_NAMES, OneRankOnnxConfig.example_inputs(self, model), strict=True))
        with torch.no_grad():
            rows = tuple(model.item_emb(request[ids]) for ids in ROW_INPUTS.values())
        return (*request.values(), *rows)


SPLIT_DENSE_ONNX_CONFIG = SplitDenseOnnxConfig()
