"""Stage `parity`: every model of the build against eager PyTorch on seeded cases and invariances.

The same runners as `onerank-export verify` (parity/targets.py): each ONNX model as the product's CPU
sessions run it (after the CPU rewrite) and as exported (canonical), and every ONNX Runtime backend
model of the repository just written, opened as Triton's backend opens it (file, session options
from its config), and with --user-cache the cached path (miss, then hit) of the halves of every
precision written, and in split mode the store's lookup feeding the dense ONNX and every dense TensorRT
plan (`split-tensorrt-<p>`). It runs last so it checks what is served. A mismatch fails the stage (exit 1)
after reports/parity.json and junit.xml are written.
"""

from __future__ import annotations

from onerank_export.pipeline.result import StageResult, Status
from onerank_export.pipeline.stages.base import Stage
from onerank_export.pipeline.state import MODEL, ONNX, BuildState

REPORTS_DIR = "reports"


class ParityStage(Stage):
    name = "parity"
    requires = (MODEL, ONNX)  # and the repository, when a triton stage ran before

    def run(self, state: BuildState) -> StageResult:
        from onerank_export.parity.cases import default_cases, invariance_case
        from onerank_export.parity.report import write_reports
        from onerank_export.parity.targets import ParityTargets, build_runners, run_parity_suite

        cfg, seed = state.config, state.options.seed
        repository = state.repository.path if state.repository is not None else None
        split = state.split
        targets = ParityTargets(onnx=dict(state.onnx), plans=list(state.engines.values()),
                                plugin=state.plugin_library, repository=repository,
                                user_cache=state.user_cache_halves() or None,
                                split=(split.dense, split.store) if split is not None else None,
                                split_variants=list(state.split_variants.values()),
                                split_plans=dict(state.split_engines),
                                user_cache_plans=dict(state.user_cache_engines))
        runners = build_runners(state.model, targets)
        report = run_parity_suite(state.model, runners, default_cases(cfg, seed), state.options.tolerances,
                                  invariance_case=invariance_case(cfg, seed))
        parity_json, parity_junit = write_reports(report, state.work / REPORTS_DIR)
        artifacts = {"parity_json": parity_json, "parity_junit": parity_junit}
        worst: dict[str, float] = {}
        for c in report.cases:
            for o in c.outputs:
                key = f"{c.runner}[{c.precision}]"
                worst[key] = max(worst.get(key, 0.0), o.max_abs)
        counts = report.counts()
        metrics = {"counts": counts, "max_abs": worst}
        summary = ", ".join(f"{k} max_abs {v:.2e}" for k, v in worst.items())
        if not report.passed:
            bad = report.failures[0]
            what = f"{bad.runner} {getattr(bad, 'case', getattr(bad, 'check', ''))}"
            return StageResult(self.name, Status.FAILED, f"{counts['failed']} check(s) failed (first: {what}); "
                               f"{summary}", artifacts, metrics)
        return StageResult(self.name, Status.OK, f"{counts['passed']} checks passed; {summary}", artifacts, metrics)
