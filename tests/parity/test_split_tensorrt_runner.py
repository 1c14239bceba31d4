"""Split mode on TensorRT (`split-tensorrt-<p>`: the store's lookup feeding the dense plan), fenced on the
CPU: the one runner factory lists it per dense plan with the store's tolerance when that is looser, refuses
plans without a store, reports the rows `skipped: <reason>` where TensorRT cannot run, and with the engine
stood in for by ONNX Runtime on the dense ONNX it was built from, matches eager. The engine itself runs
only in tests/engine/tensorrt/test_engine_gpu.py (gpu marker)."""

from __future__ import annotations

from typing import ClassVar

import pytest

from onerank_export.embeddings.store import write_store
from onerank_export.engine.tensorrt.availability import tensorrt_unavailable_reason
from onerank_export.errors import ConfigError
from onerank_export.model.checkpoint import save_checkpoint
from onerank_export.parity import tensorrt_runner
from onerank_export.parity.cases import default_cases
from onerank_export.parity.runners import EagerDenseRunner
from onerank_export.parity.suite import run_parity
from onerank_export.parity.targets import ParityTargets, build_runners
from onerank_export.parity.tensorrt_runner import SplitTensorRTRunner
from onerank_export.precision import DEFAULT_TOLERANCES, Precision

REASON = tensorrt_unavailable_reason()


@pytest.fixture(scope="module")
def split(tiny_dense_onnx, tmp_path_factory):
    model, dense = tiny_dense_onnx
    root = tmp_path_factory.mktemp("split-trt")
    ckpt = save_checkpoint(model, root / "ckpt")
    stores = {dtype: root / f"store-{dtype}" for dtype in ("fp32", "int8")}
    for dtype, store in stores.items():
        write_store(ckpt, store, dtype)
    plan = root / "engines" / "onerank.dense.fp32.plan"
    plan.parent.mkdir()
    plan.write_bytes(b"dense engine")
    return model, dense, stores, plan


def test_the_factory_lists_one_split_tensorrt_row_per_plan_at_the_looser_precision(split):
    model, dense, stores, plan = split
    targets = ParityTargets(split=(dense, stores["fp32"]), split_plans={Precision.FP32: plan, Precision.FP16: plan})
    rows = {r.name: (type(r), p) for r, p in build_runners(model, targets)}
    assert rows["split-tensorrt-fp32"] == (SplitTensorRTRunner, Precision.FP32)
    assert rows["split-tensorrt-fp16"] == (SplitTensorRTRunner, Precision.FP16)
    int8_store = ParityTargets(split=(dense, stores["int8"]), split_plans={Precision.FP32: plan})
    assert {r.name: p for r, p in build_runners(model, int8_store)}["split-tensorrt-fp32-store-int8"] is Precision.INT8
    assert not ParityTargets(split_plans={Precision.FP32: plan}).empty
    with pytest.raises(ConfigError, match="dense TensorRT plans take looked-up item rows; give their embedding store"):
        build_runners(model, ParityTargets(split_plans={Precision.FP32: plan}))


@pytest.mark.skipif(REASON is None, reason="TensorRT and CUDA are available here")
def test_without_tensorrt_the_rows_are_skipped_with_the_reason(split):
    model, _, stores, plan = split
    runner = SplitTensorRTRunner(plan, stores["fp32"], name="split-tensorrt-fp32")
    report = run_parity(EagerDenseRunner(model), [(runner, "fp32")], default_cases(model.cfg, 0)[:2])
    assert report.counts()["passed"] == 0 and report.counts()["skipped"] >= 2
    assert {c.reason for c in report.cases} == {REASON}


class OrtDenseEngine:
    """The dense engine stood in for by ONNX Runtime on the dense ONNX: EngineSession's interface."""

    onnx = None
    fed: ClassVar[list] = []

    def __init__(self, plan, plugin_library=None):
        self.plan, self.plugin_library = plan, plugin_library

    def open(self):
        from onerank_export.export.ort_session import cpu_session

        self.session = cpu_session(str(self.onnx), 1)
        self.inputs = {i.name: i.type for i in self.session.get_inputs()}
        self.outputs = {o.name: o.type for o in self.session.get_outputs()}

    def infer(self, feed):
        OrtDenseEngine.fed.append(sorted(feed))
        return dict(zip(self.outputs, self.session.run(None, dict(feed)), strict=True))

    def close(self):
        self.session = None


def test_lookup_then_the_dense_engine_matches_eager(split, monkeypatch):
    model, dense, stores, plan = split
    OrtDenseEngine.onnx, OrtDenseEngine.fed = dense, []
    monkeypatch.setattr(tensorrt_runner, "EngineSession", OrtDenseEngine)
    runner = SplitTensorRTRunner(plan, stores["fp32"], plugin_library=plan.parent / "lib.so",
                                 name="split-tensorrt-fp32")
    cases = default_cases(model.cfg, 0)
    report = run_parity(EagerDenseRunner(model), [(runner, "fp32")], cases, DEFAULT_TOLERANCES)
    assert report.passed and report.counts()["passed"] == len(cases), report.failures[:1]
    assert "hist_item_rows" in OrtDenseEngine.fed[0] and "cand_item_rows" in OrtDenseEngine.fed[0]


def test_a_plan_that_is_not_the_dense_graph_is_refused_in_one_line(split, tiny_fp32_onnx, monkeypatch):
    from onerank_export.errors import StageError

    _, _, stores, plan = split
    OrtDenseEngine.onnx = tiny_fp32_onnx[1]  # the single graph's engine: no row inputs
    monkeypatch.setattr(tensorrt_runner, "EngineSession", OrtDenseEngine)
    with pytest.raises(StageError) as err:
        SplitTensorRTRunner(plan, stores["fp32"]).activate()
    assert "engine has no tensor 'hist_item_rows' of the split dense graph" in str(err.value)
    assert "\n" not in str(err.value)
