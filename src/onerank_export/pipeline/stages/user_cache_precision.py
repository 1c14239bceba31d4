"""Stage `user cache fp16` / `user cache int8`: the user encoder and candidate scorer in a reduced
precision, made and judged like the single graph (calibration/user_cache.py).

One instance per precision of the build, after the precision stages: it reads the calibration data
the precision stages loaded (the shared CalibrationInputs), converts both fp32 halves of the `user
cache` stage, judges scorer_p(encoder_p(x)) against fp32 eager by the single graph's gates, and
records its distance to the single graph of the same precision. Writes
onnx/onerank.user_encoder.<p>.onnx and onnx/onerank.candidate_scorer.<p>.onnx only when every
gate passed, and its entry in reports/user_cache_calibration.json either way; the parity stage
then runs the cached path of each precision written.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from onerank_export.pipeline.options import BuildOptions
from onerank_export.pipeline.result import StageResult, Status
from onerank_export.pipeline.stages.base import Stage
from onerank_export.pipeline.stages.export import ONNX_DIR
from onerank_export.pipeline.stages.parity import REPORTS_DIR
from onerank_export.pipeline.stages.precision import CalibrationInputs
from onerank_export.pipeline.state import MODEL, ONNX, USER_CACHE, USER_CACHE_VARIANTS, BuildState
from onerank_export.precision import Precision

if TYPE_CHECKING:
    from onerank_export.calibration.settings import AccuracyGates, CalibrationSettings


class UserCachePrecisionStage(Stage):
    requires = (MODEL, ONNX, USER_CACHE)
    provides = (USER_CACHE_VARIANTS,)

    def __init__(self, precision: Precision | str, inputs: CalibrationInputs | None = None,
                 gates: AccuracyGates | None = None) -> None:
        self.precision = Precision(precision)
        self.name = f"user cache {self.precision}"
        self.inputs = inputs or CalibrationInputs()
        self.gates = gates  # None: the precision stage's defaults

    def settings(self, options: BuildOptions) -> CalibrationSettings:
        from onerank_export.calibration.settings import CalibrationSettings

        # The precision stage's settings: the same requests (one load, shared) and the same gates.
        settings = CalibrationSettings(self.precision, method=options.calibration_method, seed=options.seed)
        if self.gates is not None:
            from dataclasses import replace

            settings = replace(settings, gates=self.gates)
        return settings

    def run(self, state: BuildState) -> StageResult:
        from onerank_export.calibration.user_cache import calibrate_halves, half_file_name

        options, cached = state.options, state.user_cache
        settings = self.settings(options)
        sets = self.inputs.get(state.config, settings, options.calibration_data)
        outcome = calibrate_halves(cached.encoder, cached.scorer, state.model, settings, sets,
                                   out_dir=state.work / ONNX_DIR, report_dir=state.work / REPORTS_DIR,
                                   single=state.onnx.get(self.precision))
        p = self.precision.value
        artifacts = {"user_cache_calibration_report": outcome.report_path}
        if outcome.paths is not None:
            encoder, scorer = outcome.paths
            artifacts |= {f"onnx_user_encoder_{p}": encoder, f"onnx_candidate_scorer_{p}": scorer}
            state.user_cache_variants[self.precision] = (encoder, scorer)
        entry = outcome.entry
        acc = entry.accuracy
        metrics = {
            "passed": outcome.passed,
            "files": [half_file_name(role, self.precision) for role in ("user_encoder", "candidate_scorer")],
            "method": settings.method if self.precision is Precision.INT8 else None,
            "state_dtype": entry.state_dtype,
            "state_bytes_per_row": dict(entry.state_bytes_per_row),
            "auc_change": dict(acc.auc_change),
            "gauc_change": dict(acc.gauc_change),
            f"top{acc.topk}_overlap_mean": acc.topk_overlap.mean,
            "max_abs_error": acc.max_abs_error,
            "vs_single_graph": dict(entry.single_graph),
            "gates_failed": [g.name for g in entry.failed_gates],
            "seconds": {k: round(v, 3) for k, v in entry.seconds.items()},
        }
        return StageResult(self.name, Status.OK if outcome.passed else Status.FAILED, outcome.summary, artifacts,
                           metrics)
