"""Checkpoints load only when config and weights agree; every mismatch is one line naming it."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import make_tiny_model
from safetensors.torch import load_file, save_file

from onerank_export.errors import CheckpointError
from onerank_export.model.checkpoint import load_checkpoint, save_checkpoint


@pytest.fixture
def ckpt(tmp_path):
    return save_checkpoint(make_tiny_model(), tmp_path / "ckpt")


def test_round_trip_restores_identical_weights(ckpt):
    model = load_checkpoint(ckpt)
    ref = make_tiny_model()
    for name, tensor in ref.state_dict().items():
        assert torch.equal(tensor, model.state_dict()[name]), name
    assert not model.training


def _rewrite(ckpt, mutate):
    state = load_file(str(ckpt / "model.safetensors"))
    mutate(state)
    save_file(state, str(ckpt / "model.safetensors"))


def _one_line_error(ckpt) -> str:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(ckpt)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_missing_tensor_is_named(ckpt):
    _rewrite(ckpt, lambda s: s.pop("layers.1.qkv.weight"))
    msg = _one_line_error(ckpt)
    assert "missing tensor 'layers.1.qkv.weight'" in msg and "[48, 16]" in msg


def test_misshaped_tensor_is_named_with_both_shapes(ckpt):
    _rewrite(ckpt, lambda s: s.__setitem__("task_tokens", torch.zeros(4, 16)))
    msg = _one_line_error(ckpt)
    assert "'task_tokens'" in msg and "[4, 16]" in msg and "[3, 16]" in msg


def test_stray_tensor_means_another_model(ckpt):
    _rewrite(ckpt, lambda s: s.__setitem__("decoder.weight", torch.zeros(2)))
    assert "unexpected tensor 'decoder.weight'" in _one_line_error(ckpt)


def test_nan_weights_are_rejected(ckpt):
    def poison(s):
        s["item_emb.weight"][3, 2] = float("nan")

    _rewrite(ckpt, poison)
    assert "'item_emb.weight' contains NaN" in _one_line_error(ckpt)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"n_heads": 3}, "field 'n_heads' must divide d_model=16"),
        ({"mask_mode": "diagonal"}, "field 'mask_mode' must be one of"),
        ({"tasks": ["click", "click"]}, "field 'tasks' must be unique"),
        ({"d_model": "64"}, "field 'd_model' must be an integer"),
        ({"surprise": 1}, "unknown field 'surprise'"),
        ({"mask_mode": "hybrid"}, "field 'hybrid_mask' must be a 3x3 matrix"),
    ],
)
def test_invalid_config_is_named(ckpt, change, expected):
    raw = json.loads((ckpt / "config.json").read_text())
    raw.update(change)
    (ckpt / "config.json").write_text(json.dumps(raw))
    msg = _one_line_error(ckpt)
    assert expected in msg and "config.json" in msg


def test_corrupt_safetensors_and_missing_files(ckpt, tmp_path):
    (ckpt / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    assert "not a readable safetensors file" in _one_line_error(ckpt)
    (ckpt / "model.safetensors").unlink()
    assert "model.safetensors: not found" in _one_line_error(ckpt)
    (ckpt / "config.json").write_text("{not json")
    assert "invalid JSON" in _one_line_error(ckpt)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")
