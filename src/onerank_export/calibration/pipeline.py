"""One calibration run: data -> reduced-precision ONNX -> structure checks -> accuracy on held-out
requests -> gates -> report; the model is written only if every gate passed.

Order matters for the user: every data error is raised before anything is computed or written;
the report is always written once the run got that far, pass or fail.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

from onerank_export.calibration.accuracy import apply_gates, compare, describe_gate, run_onnx
from onerank_export.calibration.checks import check_fp16, check_int8
from onerank_export.calibration.data import CalibrationData, prepare_data
from onerank_export.calibration.report import write_report
from onerank_export.calibration.result import (
    CalibrationEntry,
    CalibrationOutcome,
    Fp16Details,
    Int8Details,
    ModelRecord,
    RangeCheck,
    ReportHeader,
)
from onerank_export.calibration.settings import CalibrationSettings
from onerank_export.export.metadata import read_metadata
from onerank_export.export.onnx_files import save_onnx
from onerank_export.io import sha256_file
from onerank_export.model.onerank import OneRankModel
from onerank_export.precision import Precision

Progress = Callable[[str], None]


def calibrate(fp32_onnx: Path, model: OneRankModel, settings: CalibrationSettings, *, out: Path, report_dir: Path,
              data: Path | None = None, eval_data: Path | None = None, sets: CalibrationData | None = None,
              fp32_label: str | None = None, progress: Progress | None = None) -> CalibrationOutcome:
    """`sets` skips loading (the CLI validates the data before its slow export step); `fp32_label`
    names the fp32 model in the report when `fp32_onnx` is a temporary file."""
    from onerank_export.model.train import predict

    say = progress or (lambda _msg: None)
    cfg, precision, started = model.cfg, settings.precision, time.perf_counter()
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    loaded_before = sets.load_seconds if sets is not None else 0.0  # prepared by the caller, counted here
    sets = sets or prepare_data(cfg, settings, data, eval_data)
    fp32 = onnx.load(str(fp32_onnx))
    seconds["data"] = time.perf_counter() - t0 + loaded_before
    say(f"{len(sets.calibration)} calibration and {len(sets.evaluation)} held-out requests from "
        f"{sets.info.short_source}")

    t0 = time.perf_counter()
    reference = predict(model.eval(), sets.evaluation.contract)
    fp32_ort = run_onnx(fp32, sets.evaluation)
    seconds["reference"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    batches = sets.calibration.batches(settings.batch_size)
    meta = {"requests": str(len(sets.calibration))}  # recorded as onerank.calibration.requests
    if precision is Precision.INT8:
        from onerank_export.calibration.int8 import quantize_int8

        say(f"calibrating int8 ({settings.method})")
        result = quantize_int8(fp32_onnx, batches, method=settings.method, keep_float=settings.keep_float,
                               force_low=settings.force_low_precision, calibration=meta)
        checks = check_int8(result.proto, fp32, result.plan)
    else:
        from onerank_export.calibration.fp16 import convert_fp16

        say("converting to fp16 (range check on calibration requests)")
        result = convert_fp16(fp32, batches, data_max=settings.fp16_data_max, keep_float=settings.keep_float,
                              force_low=settings.force_low_precision, calibration=meta)
        checks = check_fp16(result.proto, fp32, result.plan)
        details = Fp16Details(result.casts, _range_check(result.ranges, settings.fp16_data_max))
    seconds["convert"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    scores = run_onnx(result.proto, sets.evaluation)
    accuracy = compare(reference, scores, sets.evaluation, cfg.tasks, settings.gates.topk, fp32_ort)
    gates = apply_gates(precision, accuracy, settings.gates, checks)
    seconds["evaluate"] = time.perf_counter() - t0

    if precision is Precision.INT8:
        from onerank_export.calibration.localize import localize_int8_error

        t0 = time.perf_counter()
        say(f"localising int8 error over {len(result.quantized_nodes)} quantized nodes")
        subset = sets.evaluation.subset(np.arange(min(settings.localize_requests, len(sets.evaluation))))
        localization = localize_int8_error(result.proto, fp32, result.quantized_nodes, subset, settings.gates.topk)
        details = Int8Details(tuple(result.quantized_nodes), dict(result.seconds), localization)
        seconds["localize"] = time.perf_counter() - t0

    passed = all(g.passed for g in gates)
    if passed:
        # `out` is complete or untouched, never half a model; with external data past the threshold
        save_onnx(result.proto, out)
    record = ModelRecord(Path(out), passed, sha256_file(out) if passed else None)
    seconds["total"] = time.perf_counter() - started + loaded_before
    entry = CalibrationEntry(
        precision=precision, model=record, settings=settings, data=sets.info,
        nodes=tuple(c for c in result.plan if not c.low_precision or c.reason), structure=tuple(checks),
        accuracy=accuracy, gates=tuple(gates), details=details, seconds=seconds)
    header = ReportHeader(checkpoint_sha256=read_metadata(fp32).checkpoint_sha256,
                          fp32_onnx=fp32_label or str(fp32_onnx), fp32_onnx_sha256=sha256_file(fp32_onnx),
                          tasks=tuple(cfg.tasks))
    report_path, plot_path = write_report(report_dir, header, entry)
    return CalibrationOutcome(entry, report_path, plot_path, summarize(entry))


def summarize(entry: CalibrationEntry) -> str:
    """One line: what was made, how close it is, and the first failed gate if any."""
    acc, details = entry.accuracy, entry.details
    if isinstance(details, Int8Details):
        head = f"{entry.settings.method}, {len(details.quantized_nodes)} nodes int8, "
    else:
        head = f"{sum(not c.low_precision for c in entry.nodes)} nodes kept fp32, "
    text = (f"{head}max |AUC change| {acc.worst_auc_change:.4f}, top-{acc.topk} overlap "
            f"{acc.topk_overlap.mean:.3f}, max abs err {acc.max_abs_error:.2e}")
    failed = entry.failed_gates
    if failed:
        first = failed[0]
        return f"gate failed: {describe_gate(first)}{' ' + first.detail if first.detail else ''}; {text}; " \
               "model not written"
    if isinstance(details, Int8Details) and details.localization.nodes:
        text += f"; largest error from {details.localization.nodes[0].node}"
    return text


def _range_check(ranges: dict[str, dict[str, float]], data_max: float) -> RangeCheck:
    top = sorted(ranges.items(), key=lambda kv: -kv[1]["absmax"])[:10]
    flushed = sorted(((k, v["flushed"] / max(1, v["nonzero"])) for k, v in ranges.items() if v["flushed"]),
                     key=lambda kv: -kv[1])[:10]
    from onerank_export.calibration.fp16 import FP16_MAX

    return RangeCheck(data_max=data_max, fp16_max=FP16_MAX,
                      largest_activations=tuple((k, v["absmax"]) for k, v in top),
                      flushed_to_zero=tuple(flushed))
