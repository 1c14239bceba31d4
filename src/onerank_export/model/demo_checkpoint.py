"""The bundled demo checkpoint: trained on first use, cached, regenerated deterministically.

The cache key hashes the default config, the training recipe and the library versions that
change the numbers, so a change to any of them trains a fresh checkpoint instead of reusing a
stale one. Set ONERANK_EXPORT_CACHE to move the cache (default ~/.cache/onerank-export).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from onerank_export import __version__
from onerank_export.config import OneRankConfig
from onerank_export.io import atomic_directory
from onerank_export.model.checkpoint import CONFIG_FILE, WEIGHTS_FILE, save_checkpoint
from onerank_export.model.train import ProgressFn, TrainRecipe, train_demo

METRICS_FILE = "metrics.json"
DEMO_RECIPE = TrainRecipe(steps=1500)
# Bump when the model code or the data generator changes what training produces.
DEMO_REVISION = 1


def cache_root() -> Path:
    return Path(os.environ.get("ONERANK_EXPORT_CACHE", Path.home() / ".cache" / "onerank-export"))


def demo_key(recipe: TrainRecipe = DEMO_RECIPE) -> str:
    blob = json.dumps({"config": OneRankConfig().to_dict(), "recipe": recipe.to_dict(), "revision": DEMO_REVISION,
                       "torch": torch.__version__.split("+")[0]}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def demo_checkpoint_dir() -> Path:
    return cache_root() / f"demo-{demo_key()}"


def is_complete(directory: Path) -> bool:
    return all((directory / f).is_file() for f in (CONFIG_FILE, WEIGHTS_FILE, METRICS_FILE))


def write_demo_checkpoint(out: Path, progress: ProgressFn | None = None,
                          recipe: TrainRecipe = DEMO_RECIPE) -> dict:
    """Train the default config and write checkpoint + metrics.json into `out` atomically."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cfg = OneRankConfig()
    model, metrics = train_demo(cfg, recipe, progress)
    record = {"held_out": metrics, "recipe": recipe.to_dict(), "tool_version": __version__,
              "torch_version": torch.__version__}
    with atomic_directory(out) as tmp:
        save_checkpoint(model, tmp, metadata={"source": "onerank-export demo", "recipe": json.dumps(recipe.to_dict())})
        (tmp / METRICS_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return record


def ensure_demo_checkpoint(progress: ProgressFn | None = None) -> Path:
    """Path of the cached demo checkpoint, training it first if it is missing or incomplete."""
    directory = demo_checkpoint_dir()
    if not is_complete(directory):
        write_demo_checkpoint(directory, progress)
    return directory
