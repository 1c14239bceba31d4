"""INT8: an explicitly quantized (Q/DQ) ONNX that TensorRT's strongly typed builder takes as it is.

ONNX Runtime's quantization tools do the work on the CPU:
  1. `quant_pre_process(skip_optimization=True)`: its optimiser would inline the MatchingScore
     FunctionProto and drop the custom node; its symbolic shape inference cannot follow
     ReduceMax with an `axes` input (opset 18+), so ONNX shape inference is used instead.
  2. A calibrator collects activation ranges on the calibration requests (min-max, entropy with
     TensorRT's 2048-bin / 128-level histogram, or percentile).
  3. `quantize_static` in QDQ format: symmetric int8 activations (zero point 0), symmetric
     per-channel int8 weights on the output-channel axis, no int32 bias (TensorRT has no INT32
     DequantizeLinear), Q/DQ on matmul inputs only.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from onerank_export.calibration.graph import finalize_precision_model
from onerank_export.calibration.histogram import entropy_threshold
from onerank_export.calibration.selection import INT8_OP_TYPES, NodeChoice, int8_plan
from onerank_export.errors import ConfigError
from onerank_export.export.serving_graph import MASK_FLOOR, MASKED_SCORE
from onerank_export.precision import Precision

# Calibrator options per method. ORT's entropy default (128 bins, 128 levels) has a single
# candidate threshold - the full range - so it equals min-max; TensorRT uses 2048 / 128.
CALIBRATOR_OPTIONS = {
    "minmax": {"symmetric": True},
    "entropy": {"symmetric": True, "num_bins": 2048, "num_quantized_bins": 128},
    "percentile": {"symmetric": True, "num_bins": 2048, "percentile": 99.99},
}
QDQ_OPTIONS = {
    "ActivationSymmetric": True,
    "WeightSymmetric": True,
    "QuantizeBias": False,
    "OpTypesToExcludeOutputQuantization": list(INT8_OP_TYPES),
    "DedicatedQDQPair": False,
}


@dataclass
class Int8Model:
    proto: onnx.ModelProto
    plan: list[NodeChoice]
    seconds: dict[str, float]

    @property
    def quantized_nodes(self) -> list[str]:
        return [c.name for c in self.plan if c.low_precision]


def quantize_int8(fp32_path: Path, calibration_batches: Sequence[dict[str, np.ndarray]], *, method: str,
                  keep_float: Sequence[str] = (), force_low: Sequence[str] = (),
                  calibration: dict[str, str] | None = None) -> Int8Model:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quant_pre_process, quantize_static
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    fp32 = onnx.load(str(fp32_path))
    seconds = {}
    with tempfile.TemporaryDirectory(prefix="onerank-int8-") as tmp, _quiet():
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32_path), str(pre), skip_optimization=True, skip_symbolic_shape=True)
        pre_model = onnx.load(str(pre))
        plan = int8_plan(pre_model, keep_float, force_low)
        chosen = {c.name for c in plan if c.low_precision}
        if not chosen:
            raise ConfigError("nothing left to quantize: every matmul is kept in float (--keep-float)")
        op_types = sorted({c.op_type for c in plan if c.low_precision})
        exclude = [n.name for n in pre_model.graph.node if n.op_type in op_types and n.name not in chosen]

        t0 = time.perf_counter()
        calibrator = create_calibrator(pre, op_types, augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                       calibrate_method=methods[method], extra_options=CALIBRATOR_OPTIONS[method],
                                       providers=["CPUExecutionProvider"])
        calibrator.collect_data(_Reader(calibration_batches))
        _prepare_histograms(calibrator, _activation_inputs(pre_model, chosen), method)
        ranges = calibrator.compute_data()
        _refuse_mask_carriers(pre_model, chosen, calibrator, ranges)
        save_tensors_data(ranges, Path(tmp) / "ranges.json")
        seconds["calibrate"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        out = Path(tmp) / "int8.onnx"
        quantize_static(str(pre), str(out), None, quant_format=QuantFormat.QDQ, op_types_to_quantize=op_types,
                        per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=exclude, calibrate_method=methods[method], extra_options=QDQ_OPTIONS,
                        calibration_cache_path=str(Path(tmp) / "ranges.json"))
        proto = onnx.load(str(out))
        _restore_float_inputs(proto, fp32, chosen)
        seconds["quantize"] = time.perf_counter() - t0
    meta = {"method": method, "quantized_nodes": str(len(chosen)), **(calibration or {})}
    # Whether ORT really quantized every planned node is a structure check (checks.py), reported.
    return Int8Model(finalize_precision_model(proto, fp32, Precision.INT8, meta), plan, seconds)


def _restore_float_inputs(model: onnx.ModelProto, fp32: onnx.ModelProto, quantized: set[str]) -> None:
    """ORT rewires every consumer of a quantized tensor to its DequantizeLinear, so a node kept in
    float that shares a weight or an activation with a quantized one (the user and candidate
    paths share each layer's weights) would read int8-rounded values. Give it back the original."""
    made_by = {o: n for n in model.graph.node for o in n.output}
    originals = {n.name: n for n in fp32.graph.node}
    fp32_consts = {i.name: i for i in fp32.graph.initializer}
    present = {i.name for i in model.graph.initializer}
    for node in model.graph.node:
        if node.name in quantized or node.name not in originals:  # quantized, or a Q/DQ node ORT added
            continue
        for k, x in enumerate(node.input):
            if x in made_by and made_by[x].op_type == "DequantizeLinear":
                original = originals[node.name].input[k]
                if original in fp32_consts and original not in present:
                    model.graph.initializer.append(fp32_consts[original])
                    present.add(original)
                node.input[k] = original


def _activation_inputs(model: onnx.ModelProto, nodes: set[str]) -> set[str]:
    consts = {i.name for i in model.graph.initializer}
    return {x for n in model.graph.node if n.name in nodes for x in n.input if x and x not in consts}


def _refuse_mask_carriers(model: onnx.ModelProto, chosen: set[str], calibrator, ranges) -> None:
    """The candidates' score GEMM reads the key mask (MASKED_SCORE) as a key column: one int8 scale
    stretched over it rounds every real key to 0 and the accuracy gates fail
    (docs/precision.md#accuracy-on-the-demo-checkpoint). Only --force-low-precision can ask for it;
    say so instead of failing the gates later."""
    histograms = getattr(getattr(calibrator, "collector", None), "histogram_dict", None) or {}
    consts = {i.name for i in model.graph.initializer}
    for node in model.graph.node:
        if node.name not in chosen:
            continue
        for x in node.input:
            if not x or x in consts:
                continue
            # The raw minimum: entropy / percentile thresholds would clip the mask and leak it.
            if x in histograms:
                lowest = float(histograms[x][2])
            else:
                lowest = float(ranges[x].range_value[0]) if x in ranges else 0.0
            if lowest <= MASK_FLOOR:
                raise ConfigError(f"{node.name} cannot be quantized: its input '{x}' carries the attention key mask "
                                  f"({MASKED_SCORE:g}), which would take the whole int8 range; leave it out of "
                                  "--force-low-precision")


def _prepare_histograms(calibrator, needed: set[str], method: str) -> None:
    """Histogram methods: keep only the tensors that get Q/DQ (the search costs per tensor) and
    use the array version of ORT's entropy search (same thresholds, faster: histogram.py)."""
    collector = getattr(calibrator, "collector", None)
    if collector is None or not hasattr(collector, "histogram_dict"):
        return
    collector.histogram_dict = {k: v for k, v in collector.histogram_dict.items() if k in needed}
    if method == "entropy":
        collector.get_entropy_threshold = entropy_threshold


class _Reader:
    """ORT's CalibrationDataReader protocol over a list of feeds."""

    def __init__(self, batches: Sequence[dict[str, np.ndarray]]) -> None:
        self._it: Iterator[dict[str, np.ndarray]] = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


@contextlib.contextmanager
def _quiet():
    """ORT's quantization prints progress and logs on the root logger; the CLI output is ours."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)
