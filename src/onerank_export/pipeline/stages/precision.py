"""The `build` stage for one reduced precision: writes onnx/onerank.<precision>.onnx (only when
every gate passed) and adds its entry to reports/calibration.json + calibration.png.

With `build --calibration-data FILE` it calibrates (and holds out a disjoint split for the
accuracy report) on the user's requests; otherwise on the demo generator's, and for a checkpoint
that is not the demo the detail says so.
"""

from __future__ import annotations

from pathlib import Path

from onerank_export.calibration.pipeline import calibrate
from onerank_export.calibration.settings import CalibrationSettings
from onerank_export.errors import OneRankError
from onerank_export.model.onerank import OneRankModel
from onerank_export.pipeline.result import StageResult, Status


def run_precision_stage(precision: str, fp32_onnx: Path, model: OneRankModel, out_dir: Path, *, method: str,
                        seed: int, data: Path | None = None) -> StageResult:
    out = out_dir / "onnx" / f"onerank.{precision}.onnx"
    try:
        settings = CalibrationSettings(precision, method=method, seed=seed)
        outcome = calibrate(fp32_onnx, model, settings, out=out, report_dir=out_dir / "reports", data=data)
    except OneRankError as exc:  # e.g. a config the demo generator cannot serve: a failed stage, not a crash
        return StageResult(precision, Status.FAILED, str(exc))
    artifacts = {"calibration_report": outcome.report_path, "calibration_plot": outcome.plot_path}
    if outcome.model_path is not None:
        artifacts[f"onnx_{precision}"] = outcome.model_path
    entry = outcome.entry
    acc = entry["accuracy"]
    metrics = {
        "passed": outcome.passed,
        "method": method if precision == "int8" else None,
        "auc_change": {t: m["auc_change"] for t, m in acc["tasks"].items()},
        "gauc_change": {t: m["gauc_change"] for t, m in acc["tasks"].items()},
        f"top{acc['topk']}_overlap_mean": acc["topk_overlap"]["mean"],
        "spearman_mean": acc["spearman"]["mean"],
        "max_abs_error": acc["score_abs_error"]["max"],
        "gates_failed": [g["name"] for g in entry["gates"] if not g["passed"]],
        "data": entry["data"]["source"],
        "seconds": entry["seconds"],
    }
    detail = outcome.summary
    if data is None and not _is_demo_checkpoint(fp32_onnx):
        detail += "; calibrated on demo-generator requests: use `onerank-export calibrate --data` with real ones"
    return StageResult(precision, Status.OK if outcome.passed else Status.FAILED, detail, artifacts, metrics)


def _is_demo_checkpoint(fp32_onnx: Path) -> bool:
    import onnx

    from onerank_export.export.metadata import model_metadata
    from onerank_export.model.checkpoint import checkpoint_digest
    from onerank_export.model.demo_checkpoint import demo_checkpoint_dir, is_complete

    sha = model_metadata(onnx.load(str(fp32_onnx), load_external_data=False)).get("onerank.checkpoint_sha256")
    demo = demo_checkpoint_dir()
    return bool(sha) and is_complete(demo) and checkpoint_digest(demo) == sha
