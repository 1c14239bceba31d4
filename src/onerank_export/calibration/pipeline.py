"""One calibration run: data -> reduced-precision ONNX -> structure checks -> accuracy on held-out
requests -> gates -> report; the model is written only if every gate passed.

Order matters for the user: every data error is raised before anything is computed or written;
the report is always written once the run got that far, pass or fail.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from onerank_export.calibration.accuracy import apply_gates, compare, run_onnx
from onerank_export.calibration.checks import check_fp16, check_int8
from onerank_export.calibration.data import CalibrationData, prepare_data
from onerank_export.calibration.graph import save_atomic
from onerank_export.calibration.report import write_report
from onerank_export.calibration.settings import CalibrationSettings
from onerank_export.export.metadata import model_metadata
from onerank_export.model.onerank import OneRankModel
from onerank_export.pipeline.manifest import sha256_file

Progress = Callable[[str], None]


@dataclass
class CalibrationOutcome:
    precision: str
    passed: bool
    model_path: Path | None  # None when a gate failed: a rejected model is never written
    report_path: Path
    plot_path: Path
    entry: dict
    summary: str  # one line for the console / manifest


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
    sets = sets or prepare_data(cfg, settings, data, eval_data)
    fp32 = onnx.load(str(fp32_onnx))
    seconds["data"] = time.perf_counter() - t0
    say(f"{len(sets.calibration)} calibration and {len(sets.evaluation)} held-out requests from "
        f"{sets.info['source'].split(' (')[0]}")

    t0 = time.perf_counter()
    reference = predict(model.eval(), sets.evaluation.features)
    fp32_ort = run_onnx(fp32, sets.evaluation)
    seconds["reference"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    batches = sets.calibration.batches(settings.batch_size)
    meta = {"onerank.calibration.requests": str(len(sets.calibration))}
    if precision == "int8":
        from onerank_export.calibration.int8 import quantize_int8

        say(f"calibrating int8 ({settings.method})")
        result = quantize_int8(fp32_onnx, batches, method=settings.method, keep_float=settings.keep_float,
                               force_low=settings.force_low_precision, extra_metadata=meta)
        checks = check_int8(result.proto, fp32, result.plan)
        extra = {"quantized_nodes": result.quantized_nodes, "timings_detail": result.seconds}
    else:
        from onerank_export.calibration.fp16 import convert_fp16

        say("converting to fp16 (range check on calibration requests)")
        result = convert_fp16(fp32, batches, data_max=settings.fp16_data_max, keep_float=settings.keep_float,
                              force_low=settings.force_low_precision, extra_metadata=meta)
        checks = check_fp16(result.proto, fp32, result.plan)
        extra = {"casts": result.casts, "range_check": _range_summary(result.ranges, settings.fp16_data_max)}
    seconds["convert"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    scores = run_onnx(result.proto, sets.evaluation)
    accuracy = compare(reference, scores, sets.evaluation, cfg.tasks, settings.gates.topk)
    accuracy["fp32_onnxruntime_max_abs_error"] = float(np.abs(fp32_ort - reference)[sets.evaluation.valid].max())
    gates = apply_gates(precision, accuracy, settings.gates, checks)
    seconds["evaluate"] = time.perf_counter() - t0

    if precision == "int8":
        from onerank_export.calibration.localize import localize_int8_error

        t0 = time.perf_counter()
        say(f"localising int8 error over {len(result.quantized_nodes)} quantized nodes")
        subset = sets.evaluation.subset(np.arange(min(settings.localize_requests, len(sets.evaluation))))
        extra["localization"] = localize_int8_error(result.proto, fp32, result.quantized_nodes, subset,
                                                    settings.gates.topk)
        seconds["localize"] = time.perf_counter() - t0

    passed = all(g.passed for g in gates)
    model_info: dict = {"path": str(out), "written": passed}
    if passed:
        save_atomic(result.proto, out)
        model_info["sha256"] = sha256_file(out)
    else:
        model_info["reason"] = "a gate failed: the model is not written"
    seconds["total"] = time.perf_counter() - started
    entry = {
        "passed": passed,
        "model": model_info,
        "settings": settings.to_dict() | {"method": settings.method if precision == "int8" else None},
        "gates_config": settings.gates.to_dict(),
        "data": sets.info,
        "nodes": [c.to_dict() for c in result.plan if not c.low_precision or c.reason],
        "structure": [c.to_dict() for c in checks],
        "accuracy": accuracy,
        "gates": [g.to_dict() for g in gates],
        **extra,
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
    }
    header = {"checkpoint_sha256": model_metadata(fp32).get("onerank.checkpoint_sha256"),
              "fp32_onnx": fp32_label or str(fp32_onnx),
              "fp32_onnx_sha256": sha256_file(fp32_onnx),
              "reference": "fp32 eager (dense PyTorch model)", "tasks": list(cfg.tasks)}
    report_path, plot_path = write_report(report_dir, header, precision, entry)
    return CalibrationOutcome(precision, passed, out if passed else None, report_path, plot_path, entry,
                              summarize(precision, settings, entry, gates))


def summarize(precision: str, settings: CalibrationSettings, entry: dict, gates) -> str:
    acc = entry["accuracy"]
    worst_auc = max((abs(t["auc_change"]) for t in acc["tasks"].values() if t["auc_change"] is not None),
                    default=float("nan"))
    head = f"{settings.method}, " if precision == "int8" else ""
    if precision == "int8":
        head += f"{len(entry['quantized_nodes'])} nodes int8, "
    else:
        head += f"{sum(not n['low_precision'] for n in entry['nodes'])} nodes kept fp32, "
    text = (f"{head}max |AUC change| {worst_auc:.4f}, top-{acc['topk']} overlap {acc['topk_overlap']['mean']:.3f}, "
            f"max abs err {acc['score_abs_error']['max']:.2e}")
    failed = [g for g in gates if not g.passed]
    if failed:
        return f"gate failed: {failed[0].describe()}{' ' + failed[0].detail if failed[0].detail else ''}; {text}; " \
               "model not written"
    if precision == "int8" and entry["localization"]["nodes"]:
        text += f"; largest error from {entry['localization']['nodes'][0]['node']}"
    return text


def _range_summary(ranges: dict[str, dict[str, float]], data_max: float) -> dict:
    top = sorted(ranges.items(), key=lambda kv: -kv[1]["absmax"])[:10]
    flushed = sorted(((k, v["flushed"] / max(1, v["nonzero"])) for k, v in ranges.items() if v["flushed"]),
                     key=lambda kv: -kv[1])[:10]
    return {"data_max": data_max, "fp16_max": 65504.0,
            "largest_activations": [{"tensor": k, "absmax": v["absmax"]} for k, v in top],
            "flushed_to_zero_in_fp16": [{"tensor": k, "fraction_of_nonzero": f} for k, f in flushed]}
