"""Checkpoints: a directory with `config.json` + `model.safetensors`. No pickle anywhere.

Loading validates the config first, then that every weight the config implies is present with
the right shape and dtype and that there are no strays; any mismatch is a one-line
CheckpointError naming the tensor.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from onerank_export.config import OneRankConfig
from onerank_export.errors import CheckpointError, ConfigError
from onerank_export.io import sha256_files
from onerank_export.model.onerank import OneRankModel

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def save_checkpoint(model: OneRankModel, directory: str | Path, metadata: dict[str, str] | None = None) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG_FILE).write_text(model.cfg.to_json())
    state = {k: v.detach().contiguous().clone() for k, v in sorted(model.state_dict().items())}
    save_file(state, str(directory / WEIGHTS_FILE), metadata={"format": "pt", **(metadata or {})})
    return directory


def load_config(directory: str | Path) -> OneRankConfig:
    directory = _checkpoint_dir(directory)
    try:
        return OneRankConfig.load(directory / CONFIG_FILE)
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None


def load_checkpoint(directory: str | Path) -> OneRankModel:
    """Load, validate and return the model in eval mode."""
    directory = _checkpoint_dir(directory)
    cfg = load_config(directory)
    weights_path = directory / WEIGHTS_FILE
    if not weights_path.is_file():
        raise CheckpointError(f"{weights_path}: not found; a checkpoint needs {WEIGHTS_FILE} beside {CONFIG_FILE}")
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{weights_path}: not a readable safetensors file ({first}); "
                              "re-export the checkpoint") from None
    # Built on the meta device and given the checkpoint's tensors (assign): the item table is held once,
    # as read, never initialised and then overwritten (two copies of gigabytes at 10^7 rows).
    with torch.device("meta"):
        model = OneRankModel(cfg)
    expected = model.state_dict()
    for name, ref in expected.items():
        if name not in state:
            raise CheckpointError(f"{weights_path}: missing tensor '{name}' (expected shape {list(ref.shape)}); "
                                  "the weights do not match config.json")
        got = state[name]
        if tuple(got.shape) != tuple(ref.shape):
            raise CheckpointError(f"{weights_path}: tensor '{name}' has shape {list(got.shape)}, config.json "
                                  f"implies {list(ref.shape)}; the weights do not match config.json")
        if got.dtype != ref.dtype:
            raise CheckpointError(f"{weights_path}: tensor '{name}' has dtype {got.dtype}, expected {ref.dtype}")
        if got.is_floating_point() and not _all_finite(got):
            raise CheckpointError(f"{weights_path}: tensor '{name}' contains NaN or Inf")
    extra = sorted(set(state) - set(expected))
    if extra:
        raise CheckpointError(f"{weights_path}: unexpected tensor '{extra[0]}' not used by config.json; "
                              "is this a checkpoint of another model?")
    model.load_state_dict(state, strict=True, assign=True)
    del state
    # Non-persistent buffers (derived from the config, not saved) from a model without the big table.
    small = OneRankModel(cfg.replace(item_vocab_size=2))
    for name, buffer in small.named_buffers():
        module, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(module), leaf, buffer)
    return model.eval()


def _all_finite(tensor: torch.Tensor, chunk: int = 1 << 24) -> bool:
    """torch.isfinite in chunks: its bool mask of a whole table would be another quarter of it."""
    flat = tensor.reshape(-1)
    return all(bool(torch.isfinite(part).all()) for part in flat.split(chunk))


def checkpoint_digest(directory: str | Path) -> str:
    """sha256 over config.json and model.safetensors: identifies a checkpoint in the manifest."""
    directory = _checkpoint_dir(directory)
    return sha256_files([directory / CONFIG_FILE, directory / WEIGHTS_FILE])


def _checkpoint_dir(directory: str | Path) -> Path:
    directory = Path(directory)
    if not directory.exists():
        raise CheckpointError(f"{directory}: checkpoint directory does not exist")
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: is a file; pass the checkpoint directory holding "
                              f"{CONFIG_FILE} and {WEIGHTS_FILE}")
    return directory
