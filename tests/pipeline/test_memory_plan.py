"""The manifest's memory plan: table bytes per storage dtype, dense-model bytes, per-instance holdings."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from onerank_export.config import OneRankConfig
from onerank_export.pipeline.memory_plan import initializer_bytes, memory_plan


def _model(path, external: bool):
    weights = [numpy_helper.from_array(np.zeros((300, 16), np.float32), "table"),
               numpy_helper.from_array(np.zeros(10, np.float16), "bias")]
    graph = onnx.helper.make_graph([], "g", [], [], initializer=weights)
    model = onnx.helper.make_model(graph)
    if external:  # the table in a data file: counted from its shape, the file never read
        onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                  location=path.name + ".data", size_threshold=1024)
        (path.parent / (path.name + ".data")).write_bytes(b"")  # emptied: proves it is not read
    else:
        onnx.save(model, path)
    return path


def test_initializer_bytes_counts_inline_and_external_tensors(tmp_path):
    assert initializer_bytes(_model(tmp_path / "a.onnx", external=False)) == 300 * 16 * 4 + 10 * 2
    assert initializer_bytes(_model(tmp_path / "b.onnx", external=True)) == 300 * 16 * 4 + 10 * 2


def test_split_plan_the_lookup_shares_the_store_and_the_dense_model_holds_its_weights(tmp_path):
    cfg = OneRankConfig(item_vocab_size=1000, d_model=16)
    dense = _model(tmp_path / "dense.onnx", external=False)
    plan = memory_plan(cfg, "split", dense, "int8")
    assert plan["tables"] == {"item": {"rows": 1000, "dim": 16,
                                       "bytes": {"fp32": 64_000, "fp16": 32_000, "int8": 16_000 + 4_000}}}
    assert plan["dense_model_bytes"] == 19_220 and plan["store_bytes"] == 20_000 and plan["store_dtype"] == "int8"
    lookup, dense_instance = plan["per_triton_instance"]["onerank_lookup"], plan["per_triton_instance"]["onerank_dense"]
    assert (lookup["private_bytes"], lookup["shared_bytes"]) == (0, 20_000)
    assert (dense_instance["private_bytes"], dense_instance["shared_bytes"]) == (19_220, 0)


def test_split_plan_lists_each_dense_precision_model_with_its_own_weights(tmp_path):
    cfg = OneRankConfig(item_vocab_size=1000, d_model=16)
    dense = _model(tmp_path / "dense.onnx", external=False)
    other = _model(tmp_path / "other.onnx", external=True)  # stands in for the fp16 graph (other bytes: same here)
    plan = memory_plan(cfg, "split", dense, "fp32", {"fp32": dense, "fp16": other})
    models = plan["per_triton_instance"]
    assert set(models) == {"onerank_lookup", "onerank_dense", "onerank_dense_onnx_fp16", "onerank_dense_onnx_fp32"}
    assert models["onerank_dense_onnx_fp16"]["private_bytes"] == initializer_bytes(other) == 19_220
    assert models["onerank_dense_onnx_fp32"]["private_bytes"] == models["onerank_dense"]["private_bytes"]


def test_inline_plan_the_one_model_holds_the_table_per_instance(tmp_path):
    cfg = OneRankConfig(item_vocab_size=1000, d_model=16)
    plan = memory_plan(cfg, "inline", _model(tmp_path / "m.onnx", external=True), None)
    assert set(plan["per_triton_instance"]) == {"onerank"}
    assert plan["per_triton_instance"]["onerank"]["private_bytes"] == 19_220 and "store_bytes" not in plan
