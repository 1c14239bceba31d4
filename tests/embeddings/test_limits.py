"""embeddings/limits.py: the inline limits decided from config.json alone, and `build`'s one-line refusals
of a checkpoint that has only its config (no weights: the preflight never reads them)."""

from __future__ import annotations

import pytest
from helpers import TINY, make_tiny_model

from onerank_export.cli.main import main
from onerank_export.config import OneRankConfig
from onerank_export.embeddings.limits import (
    SPLIT_THRESHOLD_BYTES,
    TENSORRT_MAX_ELEMENTS,
    dense_bytes_estimate,
    inline_model_bytes,
    inline_problems,
    needs_split,
)
from onerank_export.engine.tensorrt.availability import tensorrt_unavailable_reason


@pytest.mark.parametrize("changes", [{}, {"n_layers": 3, "num_anchor_tokens": 0, "num_context_fields": 3},
                                     {"tasks": ("a", "b"), "d_ff": 48, "action_vocab_size": 7}])
def test_dense_estimate_is_the_models_parameter_bytes_without_the_item_table(changes):
    model = make_tiny_model(**changes)
    dense = sum(p.numel() for n, p in model.named_parameters() if n != "item_emb.weight") * 4
    assert dense_bytes_estimate(model.cfg) == dense
    assert inline_model_bytes(model.cfg) == dense + model.cfg.item_vocab_size * model.cfg.d_model * 4


def test_auto_splits_past_the_threshold_or_the_tensorrt_limit_and_not_below():
    assert needs_split(TINY) is None
    assert needs_split(OneRankConfig(item_vocab_size=1_000_000)) is None  # 244 MiB: under 256 MiB
    reason = needs_split(OneRankConfig(item_vocab_size=1_100_000))
    assert reason == ("item table (1,100,000 rows x 64 = 70,400,000 elements, 268.6 MiB) is past the split "
                      "threshold of 256.0 MiB")
    assert needs_split(TINY, split_threshold=1000) is not None  # 300 x 16 x 4 = 19,200 bytes
    rows = TENSORRT_MAX_ELEMENTS // 64 + 1  # the first row count past 2^31 - 1 elements at d=64
    assert "TensorRT" in needs_split(OneRankConfig(item_vocab_size=rows), split_threshold=1 << 62)
    assert needs_split(OneRankConfig(item_vocab_size=rows - 1), split_threshold=1 << 62) is None
    assert SPLIT_THRESHOLD_BYTES == 256 << 20


def test_inline_problems_name_the_table_the_limit_and_the_fix():
    (line,) = inline_problems(OneRankConfig(item_vocab_size=40_000_000))
    assert line == ("item table (40,000,000 rows x 64 = 2,560,000,000 elements, 9.54 GiB) exceeds TensorRT's "
                    "limit of 2,147,483,647 elements per tensor (2^31 - 1) in inline mode; build with "
                    "--embeddings split")
    assert inline_problems(OneRankConfig(item_vocab_size=9_000_000)) == []  # external data carries 2.15 GiB
    (fp16,) = inline_problems(OneRankConfig(item_vocab_size=9_000_000), ("fp16",))
    assert fp16.startswith("fp16 of an inline model of 2.15 GiB is not supported") and "--precision none" in fp16
    assert inline_problems(OneRankConfig(item_vocab_size=3_000_000), ("fp16", "int8")) == []


@pytest.fixture
def config_only(tmp_path):
    """A checkpoint directory with config.json and no weights: anything that reads weights would fail."""
    def make(rows: int):
        ckpt = tmp_path / f"ckpt-{rows}"
        ckpt.mkdir()
        (ckpt / "config.json").write_text(OneRankConfig(item_vocab_size=rows).to_json())
        return ckpt
    return make


def _build(capsys, ckpt, out, *argv):
    code = main(["build", "--checkpoint", str(ckpt), "--out", str(out), "--engine", "skip", *argv])
    return code, capsys.readouterr()


def test_a_40m_row_table_is_refused_inline_before_any_work(capsys, config_only, tmp_path):
    out = tmp_path / "out"
    code, io = _build(capsys, config_only(40_000_000), out, "--embeddings", "inline", "--precision", "none")
    assert code == 1 and not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-40000000"]
    assert io.err.strip().splitlines() == [
        "error: item table (40,000,000 rows x 64 = 2,560,000,000 elements, 9.54 GiB) exceeds TensorRT's limit of "
        "2,147,483,647 elements per tensor (2^31 - 1) in inline mode; build with --embeddings split"]


@pytest.mark.parametrize(("argv", "expected"), [
    # auto chooses split for a 2.15 GiB table, and split mode's own refusals then apply in preflight
    (("--precision", "none", "--user-cache"), "--user-cache is not available with --embeddings split yet"),
    # split mode builds dense engines: --engine require is refused only where TensorRT is missing, as inline
    pytest.param(("--embeddings", "split", "--engine", "require"), "--engine require: cannot build TensorRT engines "
                 "here", marks=pytest.mark.skipif(tensorrt_unavailable_reason() is None, reason="TensorRT is here")),
    (("--embeddings", "inline", "--precision", "fp16"), "fp16 of an inline model of 2.15 GiB is not supported"),
    (("--split-threshold", "lots"), "'lots' is not a size"),
])
def test_other_refusals_are_one_line_before_any_work(capsys, config_only, tmp_path, argv, expected):
    out = tmp_path / "out"
    code, io = _build(capsys, config_only(9_000_000), out, *argv)
    assert code != 0 and not out.exists()
    assert expected in io.err and len(io.err.strip().splitlines()) <= 2  # click's usage line for a bad option
