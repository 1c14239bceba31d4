"""The split dense graph: no item table in the export, and lookup + dense == inline == eager within 1e-6."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import TINY, make_tiny_model, request

from onerank_export.embeddings.store import write_store
from onerank_export.engine.tensorrt.availability import tensorrt_unavailable_reason
from onerank_export.errors import StageError
from onerank_export.export.onnx_config import SPLIT_DENSE_ONNX_CONFIG
from onerank_export.export.onnx_export import export_onnx
from onerank_export.model.checkpoint import save_checkpoint
from onerank_export.parity.runners import EagerDenseRunner, OnnxRuntimeRunner
from onerank_export.parity.split_runner import SplitRunner
from onerank_export.pipeline.options import BuildOptions
from onerank_export.pipeline.runner import preflight


@pytest.fixture(scope="module")
def split_build(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("split")
    model = make_tiny_model(seed=4)
    ckpt = save_checkpoint(model, tmp / "ckpt")
    export_onnx(model, tmp / "dense.onnx", export_config=SPLIT_DENSE_ONNX_CONFIG)
    export_onnx(model, tmp / "inline.onnx")
    write_store(ckpt, tmp / "emb", "fp32")
    return model, tmp


@pytest.mark.slow  # two ONNX exports (module fixture)
def test_the_dense_onnx_holds_no_item_table_and_takes_rows(split_build):
    _, tmp = split_build
    proto = onnx.load(str(tmp / "dense.onnx"))
    assert not [i.name for i in proto.graph.initializer if TINY.item_vocab_size in i.dims]
    assert [i.name for i in proto.graph.input][-2:] == ["hist_item_rows", "cand_item_rows"]
    assert (tmp / "dense.onnx").stat().st_size < (tmp / "inline.onnx").stat().st_size - 300 * 16 * 4 * 0.9


@pytest.mark.slow  # two ONNX exports (module fixture)
def test_lookup_plus_dense_matches_inline_and_eager_within_1e6(split_build):
    model, tmp = split_build
    split, inline, eager = SplitRunner(tmp / "dense.onnx", tmp / "emb"), OnnxRuntimeRunner(tmp / "inline.onnx"), \
        EagerDenseRunner(model)
    for r in (split, inline, eager):
        r.activate()
    for seed, (b, hist, n) in enumerate([(2, 9, 5), (1, 1, 1), (3, 40, 17)]):
        feed = request(TINY, b, hist, n, seed=seed)
        s, i, e = (r.infer_impl(feed)["scores"] for r in (split, inline, eager))
        assert np.abs(s - i).max() <= 1e-6 and np.abs(s - e).max() <= 1e-6


@pytest.mark.slow  # two ONNX exports (module fixture)
def test_the_dense_check_refuses_a_graph_that_still_holds_the_table(split_build):
    from onerank_export.export.onnx_export import _check_no_item_table

    _, tmp = split_build
    _check_no_item_table(onnx.load(str(tmp / "dense.onnx")), TINY.item_vocab_size)
    with pytest.raises(StageError) as e:  # the inline graph holds it: the check a split export runs says so
        _check_no_item_table(onnx.load(str(tmp / "inline.onnx")), TINY.item_vocab_size)
    assert "[300, 16] (item_vocab_size rows): the item table leaked into the split export" in str(e.value)


@pytest.mark.parametrize(("changes", "expected"), [
    # engines of the dense graph are built: --engine require is refused only where TensorRT is missing
    pytest.param({"precisions": (), "engine": "require"}, "--engine require: cannot build TensorRT engines here",
                 marks=pytest.mark.skipif(tensorrt_unavailable_reason() is None, reason="TensorRT is here")),
    ({"precisions": (), "user_cache": True}, "--user-cache is not available with --embeddings split yet"),
])
def test_split_preflight_refuses_what_it_cannot_do(tmp_path, changes, expected):
    ckpt = save_checkpoint(make_tiny_model(), tmp_path / "ckpt")
    with pytest.raises(StageError) as e:
        preflight(BuildOptions(out=tmp_path / "out", checkpoint=ckpt, embeddings="split", triton=False, **changes))
    assert expected in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()
