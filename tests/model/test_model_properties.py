"""Properties of the OneRank reference model that the paper's design promises and serving relies on."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import make_tiny_model, request

from onerank_export.model.loss import task_losses


def run(model, feed):
    return model(**{k: torch.from_numpy(v) for k, v in feed.items()})


def test_changing_one_candidate_never_changes_another_candidates_encoder_states(tiny_model):
    feed = request(tiny_model.cfg, 2, 20, 9, seed=1, full=True)
    with torch.no_grad():
        before = run(tiny_model, feed).r
        j = 4
        feed["cand_item_ids"][:, j] = (feed["cand_item_ids"][:, j] % 200) + 7
        feed["cand_features"][:, j] += 3.0
        after = run(tiny_model, feed).r
    others = [i for i in range(9) if i != j]
    assert torch.equal(before[:, others], after[:, others]) or (before[:, others] - after[:, others]).abs().max() < 1e-6
    assert (before[:, j] - after[:, j]).abs().max() > 1e-3  # the changed candidate itself did change


def _task_dependence(model, seed=0):
    """dep[k][j]: does z_k change when only h_j is perturbed?"""
    k = model.cfg.num_tasks
    torch.manual_seed(seed)
    h = torch.randn(3, k, model.cfg.d_model)
    with torch.no_grad():
        base = model.interaction(h)
        dep = np.zeros((k, k), dtype=bool)
        for j in range(k):
            h2 = h.clone()
            h2[:, j] += torch.randn_like(h2[:, j])
            diff = (model.interaction(h2) - base).abs().amax(dim=(0, 2))
            dep[:, j] = (diff > 1e-6).numpy()
    return dep


def test_parallel_mask_makes_each_task_independent_of_the_others():
    dep = _task_dependence(make_tiny_model(mask_mode="parallel"))
    assert (dep == np.eye(3, dtype=bool)).all()


def test_cascade_mask_lets_click_ignore_cart_and_order_but_order_read_click():
    dep = _task_dependence(make_tiny_model(mask_mode="cascade"))
    assert not dep[0, 1] and not dep[0, 2]  # z_click independent of cart, order
    assert not dep[1, 2]  # z_cart independent of order
    assert dep[1, 0] and dep[2, 0] and dep[2, 1]  # later tasks do read earlier ones
    assert dep.diagonal().all()


def test_null_and_hybrid_masks_follow_the_configured_visibility():
    assert _task_dependence(make_tiny_model(mask_mode="null")).all()
    hybrid = ((1, 0, 1), (0, 1, 0), (0, 1, 1))
    dep = _task_dependence(make_tiny_model(mask_mode="hybrid", hybrid_mask=hybrid))
    assert (dep == np.array(hybrid, dtype=bool)).all()


@pytest.mark.parametrize("mode", ["null", "cascade"])
def test_detachment_zeroes_the_gradient_of_task_k_loss_wrt_other_tasks_h(mode):
    feed = request(make_tiny_model().cfg, 4, 12, 10, seed=3)
    labels = torch.from_numpy((np.random.default_rng(0).random((4, 10, 3)) < 0.4).astype(np.float32))
    for detach in (True, False):
        model = make_tiny_model(mask_mode=mode, detach_cross_task=detach).train()
        out = run(model, feed)
        valid = torch.from_numpy(feed["cand_item_ids"] != 0)
        losses = task_losses(out.logits, labels, valid, model.cfg)
        # In "null" every task reads every other; in "cascade" only later tasks read earlier ones.
        readers = [(k, j) for k in range(3) for j in range(3) if j != k and model.cfg.task_visibility()[k][j]]
        for k, j in readers:
            (grad,) = torch.autograd.grad(losses[k], out.h, retain_graph=True)
            if detach:
                assert torch.count_nonzero(grad[:, j]) == 0, f"task {k} loss reached h_{j}"
            else:
                assert grad[:, j].abs().max() > 0, f"without detachment task {k} should reach h_{j}"
        # The diagonal path always carries gradient (the shared encoder learns from every task).
        (grad,) = torch.autograd.grad(losses[2], out.h, retain_graph=True)
        assert grad[:, 2].abs().max() > 0


def test_permuting_candidates_permutes_the_scores(tiny_model):
    feed = request(tiny_model.cfg, 3, 15, 11, seed=4)
    perm = np.random.default_rng(0).permutation(11)
    permuted = {k: (v[:, perm] if k.startswith("cand_") else v) for k, v in feed.items()}
    with torch.no_grad():
        a = run(tiny_model, feed).scores[:, perm]
        b = run(tiny_model, permuted).scores
    assert (a - b).abs().max() < 1e-6


def test_padding_candidates_or_history_leaves_real_scores_unchanged(tiny_model):
    feed = request(tiny_model.cfg, 3, 15, 11, seed=5)
    with torch.no_grad():
        base = run(tiny_model, feed).scores
        more_cands = dict(feed, cand_item_ids=np.pad(feed["cand_item_ids"], ((0, 0), (0, 6))),
                          cand_features=np.pad(feed["cand_features"], ((0, 0), (0, 6), (0, 0))))
        out = run(tiny_model, more_cands).scores
        assert (out[:, :11] - base).abs().max() < 1e-6
        assert torch.count_nonzero(out[:, 11:]) == 0  # padded candidates score exactly 0
        # Pad the history on the left (the usual layout) and, separately, on the right.
        for widths in (((0, 0), (9, 0)), ((0, 0), (0, 9))):
            more_hist = dict(feed, hist_item_ids=np.pad(feed["hist_item_ids"], widths),
                             hist_action_ids=np.pad(feed["hist_action_ids"], widths))
            assert (run(tiny_model, more_hist).scores - base).abs().max() < 1e-6


def test_empty_history_gives_finite_scores_with_and_without_anchor_tokens():
    for anchors in (2, 0):
        model = make_tiny_model(num_anchor_tokens=anchors)
        feed = request(model.cfg, 2, 8, 5, seed=6)
        feed["hist_item_ids"][:] = 0
        feed["hist_action_ids"][:] = 0
        with torch.no_grad():
            scores = run(model, feed).scores
        assert torch.isfinite(scores).all()
        real = torch.from_numpy(feed["cand_item_ids"] != 0)
        assert ((scores > 0) & (scores < 1))[real].all()


def test_a_request_whose_candidates_are_all_padding_scores_zero_without_nan(tiny_model):
    feed = request(tiny_model.cfg, 2, 8, 5, seed=7)
    feed["cand_item_ids"][0] = 0
    with torch.no_grad():
        out = run(tiny_model, feed)
    assert torch.isfinite(out.scores).all() and torch.isfinite(out.z).all()
    assert torch.count_nonzero(out.scores[0]) == 0
