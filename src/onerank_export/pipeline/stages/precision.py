"""Stage `fp16` / `int8`: a reduced-precision ONNX from the fp32 export, judged against fp32 eager.

Writes onnx/onerank.<precision>.onnx only when every accuracy gate and structure check passed,
and adds its entry to reports/calibration.json + calibration.png either way. With
`build --calibration-data FILE` it calibrates (and holds out a disjoint split for the accuracy
report) on the user's requests, validated once in preflight before any slow work; otherwise on
the demo generator's, and for a checkpoint that is not the demo the detail says so.

Split mode (`--embeddings split`): the same conversion of onnx/onerank.dense.fp32.onnx into
onnx/onerank.dense.<precision>.onnx, every request given the item rows the build's embedding store
returns (its --embedding-dtype), so the gates judge what the ensemble serves: lookup, then the
reduced dense graph, against fp32 eager.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from onerank_export.config import OneRankConfig
from onerank_export.pipeline.options import BuildOptions
from onerank_export.pipeline.result import StageResult, Status
from onerank_export.pipeline.stages.base import Stage
from onerank_export.pipeline.stages.export import ONNX_DIR, dense_onnx_file_name, onnx_artifacts, onnx_file_name
from onerank_export.pipeline.stages.parity import REPORTS_DIR
from onerank_export.pipeline.state import MODEL, ONNX, SPLIT_VARIANTS, BuildState
from onerank_export.precision import Precision

if TYPE_CHECKING:
    from onerank_export.calibration.data import CalibrationData
    from onerank_export.calibration.settings import CalibrationSettings


@dataclass
class CalibrationInputs:
    """The calibration and evaluation requests of one build, loaded and validated once and shared by
    the precision stages (the split depends on sizes and seed, not on the precision)."""

    _loaded: dict[tuple, CalibrationData] = field(default_factory=dict)

    def get(self, config: OneRankConfig, settings: CalibrationSettings, data: Path | None) -> CalibrationData:
        from onerank_export.calibration.data import prepare_data

        stamp = None if data is None else (str(Path(data).resolve()), Path(data).stat().st_mtime_ns)
        key = (config.to_json(), stamp, settings.num_requests, settings.eval_requests, settings.seed)
        if key not in self._loaded:
            self._loaded[key] = prepare_data(config, settings, data)
        return self._loaded[key]


class PrecisionStage(Stage):
    requires = (MODEL, ONNX)
    provides = (ONNX, SPLIT_VARIANTS)

    def __init__(self, precision: Precision | str, inputs: CalibrationInputs | None = None) -> None:
        self.precision = Precision(precision)
        self.name = self.precision.value
        self.inputs = inputs or CalibrationInputs()

    @property
    def label(self) -> str:
        return f"precision {self.precision}"

    def settings(self, options: BuildOptions) -> CalibrationSettings:
        from onerank_export.calibration.settings import CalibrationSettings

        return CalibrationSettings(self.precision, method=options.calibration_method, seed=options.seed)

    def preflight(self, options: BuildOptions, config: OneRankConfig) -> None:
        # A user's request file is read and checked now: every data error before the slow stages.
        # The demo generator's requests are made when the stage runs (a config it cannot serve fails
        # this stage, not the build).
        if options.calibration_data is not None:
            self.inputs.get(config, self.settings(options), options.calibration_data)

    def run(self, state: BuildState) -> StageResult:
        from onerank_export.calibration.pipeline import calibrate

        if state.split is not None:
            return self._run_split(state)
        options = state.options
        settings = self.settings(options)
        sets = self.inputs.get(state.config, settings, options.calibration_data)
        outcome = calibrate(state.onnx[Precision.FP32], state.model, settings,
                            out=state.work / ONNX_DIR / onnx_file_name(self.precision),
                            report_dir=state.work / REPORTS_DIR, sets=sets)
        if outcome.model_path is not None:
            state.onnx[self.precision] = outcome.model_path
        return self._result(state, outcome, settings, f"onnx_{self.precision}")

    def _run_split(self, state: BuildState) -> StageResult:
        """Split mode: the dense graph converted, calibrated and judged on the rows the served lookup
        returns (the build's store, in its --embedding-dtype), so the gates judge what is served:
        dense_p(store rows) against fp32 eager."""
        from onerank_export.calibration.pipeline import calibrate
        from onerank_export.embeddings.split import lookup_rows
        from onerank_export.embeddings.store import open_store

        options, cfg, split = state.options, state.config, state.split
        settings = self.settings(options)
        table = open_store(split.store, mapped=False).table("item", rows=cfg.item_vocab_size, dim=cfg.d_model)
        sets = self.inputs.get(cfg, settings, options.calibration_data).with_inputs(
            lambda request: lookup_rows(table, request))
        outcome = calibrate(split.dense, state.model, settings,
                            out=state.work / ONNX_DIR / dense_onnx_file_name(self.precision),
                            report_dir=state.work / REPORTS_DIR, sets=sets)
        if outcome.model_path is not None:
            state.split_variants[self.precision] = outcome.model_path
        store = f" on rows of the {split.dtype} store" if split.dtype != "fp32" else ""
        return self._result(state, outcome, settings, f"onnx_dense_{self.precision}", f"dense graph{store}: ")

    def _result(self, state: BuildState, outcome, settings: CalibrationSettings, role: str, head: str = ""
                ) -> StageResult:
        options = state.options
        artifacts = {"calibration_report": outcome.report_path, "calibration_plot": outcome.plot_path}
        if outcome.model_path is not None:
            artifacts |= onnx_artifacts(role, outcome.model_path)
        entry = outcome.entry
        acc = entry.accuracy
        metrics = {
            "passed": outcome.passed,
            "method": settings.method if self.precision is Precision.INT8 else None,
            "auc_change": dict(acc.auc_change),
            "gauc_change": dict(acc.gauc_change),
            f"top{acc.topk}_overlap_mean": acc.topk_overlap.mean,
            "spearman_mean": acc.spearman.mean,
            "max_abs_error": acc.max_abs_error,
            "gates_failed": [g.name for g in entry.failed_gates],
            "data": entry.data.source,
            "seconds": {k: round(v, 3) for k, v in entry.seconds.items()},
        }
        detail = head + outcome.summary
        if options.calibration_data is None and not _is_demo_checkpoint(state):
            detail += "; calibrated on demo-generator requests: use `onerank-export calibrate --data` with real ones"
        return StageResult(self.name, Status.OK if outcome.passed else Status.FAILED, detail, artifacts, metrics)


def _is_demo_checkpoint(state: BuildState) -> bool:
    if state.options.checkpoint is None:
        return True
    from onerank_export.model.checkpoint import checkpoint_digest
    from onerank_export.model.demo_checkpoint import demo_checkpoint_dir, is_complete

    demo = demo_checkpoint_dir()
    return is_complete(demo) and checkpoint_digest(demo) == state.checkpoint_sha256
