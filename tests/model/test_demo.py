"""Demo data has learnable structure, and the demo checkpoint learned it."""

from __future__ import annotations

import numpy as np
import torch

from onerank_export import spec
from onerank_export.config import OneRankConfig
from onerank_export.model.demo_checkpoint import DEMO_RECIPE
from onerank_export.model.demo_data import QUERY_OFFSET, DemoWorld
from onerank_export.model.train import TrainRecipe, evaluate, held_out_requests, train_demo


def test_requests_follow_the_serving_contract_and_the_label_cascade():
    cfg = OneRankConfig()
    batch = DemoWorld.create(cfg, seed=0).sample(np.random.default_rng(1), 64, 40, 30)
    assert spec.validate_request(cfg, batch.features) == {"batch": 64, "hist_len": 40, "num_candidates": 30}
    click, cart, order = (batch.labels[..., k].astype(bool) for k in range(3))
    assert (cart <= click).all() and (order <= cart).all()
    valid = batch.features["cand_item_ids"] != 0
    assert not batch.labels[~valid].any()
    assert 0.05 < click[valid].mean() < 0.8 and order[valid].sum() > 0
    # History is left-padded: once real, stays real.
    real = batch.features["hist_item_ids"] != 0
    assert (np.diff(real.astype(int), axis=1) >= 0).all()


def test_same_seed_same_requests_and_context_shifts_preferences():
    cfg = OneRankConfig()
    world = DemoWorld.create(cfg, seed=0)
    a = world.sample(np.random.default_rng(5), 8, 16, 12)
    b = world.sample(np.random.default_rng(5), 8, 16, 12)
    assert all(np.array_equal(a.features[k], b.features[k]) for k in a.features)
    big = world.sample(np.random.default_rng(6), 400, 16, 30)
    query_topic = big.features["context_ids"][:, 0] - QUERY_OFFSET
    cands = big.features["cand_item_ids"]
    matches = (world.item_topic[cands] == query_topic[:, None]) & (cands != 0)
    others = (world.item_topic[cands] != query_topic[:, None]) & (cands != 0)
    click = big.labels[..., 0]
    assert click[matches].mean() > click[others].mean() + 0.1


def test_training_is_deterministic():
    cfg = OneRankConfig()
    recipe = TrainRecipe(steps=4, batch_size=4, hist_len=8, num_candidates=6, eval_requests=16, warmup_steps=2)
    m1, _ = train_demo(cfg, recipe)
    m2, _ = train_demo(cfg, recipe)
    for (name, a), b in zip(m1.state_dict().items(), m2.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_demo_checkpoint_ranks_held_out_requests_with_auc_above_0_70(demo_model):
    world = DemoWorld.create(demo_model.cfg, seed=DEMO_RECIPE.seed)
    metrics = evaluate(demo_model, held_out_requests(world, DEMO_RECIPE))
    for task, m in metrics.items():
        assert m["auc"] > 0.70, (task, m)
        assert m["gauc"] > 0.65, (task, m)


def test_a_world_past_the_item_cap_draws_from_its_first_items_only(monkeypatch):
    """A 20M-item config must not build a 20M-item world to calibrate on (it would need ~7 GB): items past
    DEMO_WORLD_MAX_ITEMS are never drawn; a config within the cap gets exactly the world it had."""
    import onerank_export.model.demo_data as demo_data

    cfg = OneRankConfig().replace(item_vocab_size=300)
    full = DemoWorld.create(cfg, seed=0)
    monkeypatch.setattr(demo_data, "DEMO_WORLD_MAX_ITEMS", 200)
    capped = DemoWorld.create(cfg, seed=0)
    assert len(full.item_topic) == cfg.item_vocab_size and len(capped.item_topic) == 200
    batch = capped.sample(np.random.default_rng(1), 64, 40, 30)
    for name in ("hist_item_ids", "cand_item_ids"):
        ids = batch.features[name]
        assert ids.max() < 200 and (ids > 0).any()
    monkeypatch.setattr(demo_data, "DEMO_WORLD_MAX_ITEMS", cfg.item_vocab_size)
    same = DemoWorld.create(cfg, seed=0)
    assert np.array_equal(same.item_latent, full.item_latent) and np.array_equal(same.item_topic, full.item_topic)
