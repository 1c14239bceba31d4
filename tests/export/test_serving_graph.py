"""The serving graph computes the dense reference's function, with the reference's own weights."""

from __future__ import annotations

import pytest
import torch
from helpers import make_tiny_model, request

from onerank_export.export.serving_graph import ServingGraph

SHAPES = [(1, 1, 1), (2, 11, 7), (3, 37, 29), (4, 64, 64), (1, 5, 63)]


def _scores(module, feed):
    with torch.no_grad():
        out = module(**{k: torch.from_numpy(v) for k, v in feed.items()})
    return out if isinstance(out, torch.Tensor) else out.scores


@pytest.mark.parametrize(("b", "length", "n"), SHAPES)
@pytest.mark.parametrize("mode", ["cascade", "null", "parallel"])
def test_serving_graph_matches_dense_model(b, length, n, mode):
    model = make_tiny_model(seed=b + n, mask_mode=mode)
    feed = request(model.cfg, b, length, n, seed=length)
    err = (_scores(model, feed) - _scores(ServingGraph(model), feed)).abs().max()
    assert err <= 1e-5


def test_serving_graph_matches_dense_model_on_the_trained_demo_checkpoint(demo_model):
    cfg = demo_model.cfg
    for b, length, n in [(2, cfg.max_hist_len, cfg.max_candidates), (3, 17, 33)]:
        feed = request(cfg, b, length, n, seed=n)
        assert (_scores(demo_model, feed) - _scores(ServingGraph(demo_model), feed)).abs().max() <= 1e-5


def test_serving_graph_shares_parameters_instead_of_copying(tiny_model):
    graph = ServingGraph(tiny_model)
    ours = {id(p) for p in graph.parameters()}
    assert ours == {id(p) for p in tiny_model.parameters()}
    with torch.no_grad():
        tiny_model.task_tokens.add_(1.0)  # an edit to the model is visible through the graph
    feed = request(tiny_model.cfg, 2, 9, 5)
    assert (_scores(tiny_model, feed) - _scores(graph, feed)).abs().max() <= 1e-5


def test_empty_history_and_all_padding_rows(tiny_model):
    feed = request(tiny_model.cfg, 3, 10, 8, seed=2)
    feed["hist_item_ids"][0] = 0
    feed["hist_action_ids"][0] = 0
    feed["cand_item_ids"][1] = 0
    dense, serving = _scores(tiny_model, feed), _scores(ServingGraph(tiny_model), feed)
    assert torch.isfinite(serving).all()
    assert (dense - serving).abs().max() <= 1e-5
    assert torch.count_nonzero(serving[1]) == 0


def test_masked_history_keys_contribute_nothing_even_with_large_attention_logits(tiny_model):
    """The candidates' key mask is finite (MASKED_SCORE, a GEMM operand); a padded key must still
    get exactly no weight when real attention logits are far from 0."""
    with torch.no_grad():
        for layer in tiny_model.layers:
            d = layer.qkv.in_features
            layer.qkv.weight[: 2 * d] *= 12.0  # q and k: logits ~150x larger
    feed = request(tiny_model.cfg, 3, 12, 6, seed=5)
    feed["hist_item_ids"][:, 5:] = 0  # every request has padded history keys
    feed["hist_action_ids"][:, 5:] = 0
    dense, serving = _scores(tiny_model, feed), _scores(ServingGraph(tiny_model), feed)
    assert torch.isfinite(serving).all()
    assert (dense - serving).abs().max() <= 1e-5
