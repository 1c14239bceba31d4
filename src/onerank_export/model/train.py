"""Demo training: the default config on seeded synthetic requests, on the CPU, in a few minutes.

Deterministic: the data, the initialisation and the optimiser are seeded and training runs on
a fixed number of threads, so the same recipe gives the same weights on the same software.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import numpy as np
import torch

from onerank_export.config import OneRankConfig
from onerank_export.metrics import task_metrics
from onerank_export.model.demo_data import DemoWorld, RequestBatch
from onerank_export.model.loss import task_losses
from onerank_export.model.onerank import OneRankModel


@dataclass(frozen=True)
class TrainRecipe:
    seed: int = 0
    steps: int = 1200
    batch_size: int = 32
    hist_len: int = 48
    num_candidates: int = 24
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup_steps: int = 60
    eval_requests: int = 2000
    threads: int = 1  # fixed so the reduction order, and thus the weights, do not depend on the host

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


ProgressFn = Callable[[int, int, float], None]  # (step, total, loss)


def to_torch(features: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in features.items()}


def train_demo(cfg: OneRankConfig, recipe: TrainRecipe = TrainRecipe(), progress: ProgressFn | None = None
               ) -> tuple[OneRankModel, dict[str, dict[str, float]]]:
    """Train on fresh synthetic requests each step; return the model and held-out metrics."""
    with _fixed_threads(recipe.threads):
        torch.manual_seed(recipe.seed)
        world = DemoWorld.create(cfg, seed=recipe.seed)
        model = OneRankModel(cfg)
        decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "emb" not in n]
        no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "emb" not in n)]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=recipe.lr)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, recipe))
        model.train()
        for step, batch in enumerate(_batches(world, recipe), start=1):
            feats = to_torch(batch.features)
            out = model(**feats)
            loss = task_losses(out.logits, torch.from_numpy(batch.labels), feats["cand_item_ids"] != 0, cfg).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            if progress is not None:
                progress(step, recipe.steps, float(loss.detach()))
        model.eval()
        metrics = evaluate(model, held_out_requests(world, recipe))
    return model, metrics


def held_out_requests(world: DemoWorld, recipe: TrainRecipe) -> RequestBatch:
    """Requests never seen in training (a separate seed stream)."""
    rng = np.random.default_rng([recipe.seed, 1])
    return world.sample(rng, recipe.eval_requests, recipe.hist_len, recipe.num_candidates)


@torch.no_grad()
def predict(model: OneRankModel, features: dict[str, np.ndarray], batch_size: int = 256) -> np.ndarray:
    n = features["cand_item_ids"].shape[0]
    parts = []
    for i in range(0, n, batch_size):
        chunk = {k: v[i:i + batch_size] for k, v in features.items()}
        parts.append(model(**to_torch(chunk)).scores.numpy())
    return np.concatenate(parts)


def evaluate(model: OneRankModel, data: RequestBatch) -> dict[str, dict[str, float]]:
    scores = predict(model, data.features)
    return task_metrics(data.labels, scores, data.features["cand_item_ids"] != 0, model.cfg.tasks)


def _batches(world: DemoWorld, recipe: TrainRecipe) -> Iterator[RequestBatch]:
    rng = np.random.default_rng([recipe.seed, 0])
    for _ in range(recipe.steps):
        yield world.sample(rng, recipe.batch_size, recipe.hist_len, recipe.num_candidates)


def _lr_factor(step: int, recipe: TrainRecipe) -> float:
    if step < recipe.warmup_steps:
        return (step + 1) / recipe.warmup_steps
    progress = (step - recipe.warmup_steps) / max(1, recipe.steps - recipe.warmup_steps)
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@contextlib.contextmanager
def _fixed_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
