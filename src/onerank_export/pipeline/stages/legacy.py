"""The stages of `build`, each a function of the BuildState returning a StageResult.

They adapt the library functions of each package (export/, calibration/, parity/, engine/,
triton/) to the build: where files go, which verdict to record, what to hand on.
"""

from __future__ import annotations

from collections.abc import Callable

from onerank_export.parity.cases import default_cases
from onerank_export.parity.report import write_junit
from onerank_export.parity.runners import EagerDenseRunner, EagerServingRunner, OnnxRuntimeRunner
from onerank_export.parity.suite import run_parity
from onerank_export.parity.verify import invariance_case
from onerank_export.pipeline.result import StageResult, Status
from onerank_export.pipeline.runner import BuildState, load_model


def checkpoint_stage(state: BuildState) -> StageResult:
    state.model, state.checkpoint_sha256 = load_model(state)
    params = sum(p.numel() for p in state.model.parameters())
    cfg = state.config
    return StageResult("checkpoint", Status.OK,
                       f"{params / 1e6:.2f}M parameters, d={cfg.d_model}, {cfg.n_layers} layers, "
                       f"tasks {','.join(cfg.tasks)}, mask {cfg.mask_mode}",
                       metrics={"parameters": params, "sha256": state.checkpoint_sha256,
                                "source": state.options.checkpoint_source})


def export_stage(state: BuildState) -> StageResult:
    from onerank_export.export.onnx_export import export_onnx

    path = state.work / "onnx" / "onerank.fp32.onnx"
    result = export_onnx(state.model, path, checkpoint_sha256=state.checkpoint_sha256)
    state.onnx["fp32"] = path
    return StageResult("export fp32", Status.OK,
                       f"opset {result.opset}, {result.num_nodes} nodes, {result.custom_nodes} onerank::MatchingScore, "
                       "onnx.checker full pass",
                       artifacts={"onnx_fp32": path},
                       metrics={"opset": result.opset, "nodes": result.num_nodes, "custom_nodes": result.custom_nodes})


def precision_stage(precision: str) -> Callable[[BuildState], StageResult]:
    def run(state: BuildState) -> StageResult:
        from onerank_export.pipeline.stages.precision import run_precision_stage

        result = run_precision_stage(precision, state.onnx["fp32"], state.model, state.work,
                                     method=state.options.calibration_method, seed=state.options.seed,
                                     data=state.options.calibration_data)
        onnx_path = result.artifacts.get(f"onnx_{precision}")
        if onnx_path is not None and onnx_path.is_file():
            state.onnx[precision] = onnx_path
        return result

    return run


def parity_stage(state: BuildState) -> StageResult:
    cfg = state.config
    targets = [(EagerServingRunner(state.model), "fp32")]
    # Each model as the Triton CPU model runs it (after the CPU rewrite) and as Triton's ONNX Runtime
    # backend loads it (canonical).
    targets += [(OnnxRuntimeRunner(path, name=f"onnxruntime-{p}"), p) for p, path in state.onnx.items()]
    targets += [(OnnxRuntimeRunner(path, name=f"onnxruntime-{p}-canonical", cpu_rewrite=False), p)
                for p, path in state.onnx.items()]
    report = run_parity(EagerDenseRunner(state.model), targets, default_cases(cfg, state.options.seed),
                        state.options.tolerances, invariance_case=invariance_case(cfg, state.options.seed))
    reports = state.work / "reports"
    artifacts = {"parity_json": report.write_json(reports / "parity.json"),
                 "parity_junit": write_junit(report, reports / "junit.xml")}
    worst = {}
    for c in report.cases:
        for o in c.outputs:
            key = f"{c.runner}[{c.precision}]"
            worst[key] = max(worst.get(key, 0.0), o.max_abs)
    counts = report.counts()
    summary = ", ".join(f"{k} max_abs {v:.2e}" for k, v in worst.items())
    if not report.passed:
        bad = report.failures[0]
        what = f"{bad.runner} {getattr(bad, 'case', getattr(bad, 'check', ''))}"
        return StageResult("parity", Status.FAILED, f"{counts['failed']} check(s) failed (first: {what}); {summary}",
                           artifacts, {"counts": counts, "max_abs": worst})
    return StageResult("parity", Status.OK, f"{counts['passed']} checks passed; {summary}", artifacts,
                       {"counts": counts, "max_abs": worst})


def engine_stage(state: BuildState) -> StageResult:
    from onerank_export.pipeline.stages.engine import run_engine_stage

    result = run_engine_stage(dict(state.onnx), state.work, state.config, state.options.engine,
                              plugin_library=state.options.plugin_library)
    for role, path in result.artifacts.items():
        if role.startswith("engine_"):
            state.engines[role.removeprefix("engine_")] = path
        if role == "plugin_library":
            state.plugin_library = path
    return result


def triton_stage(state: BuildState) -> StageResult:
    from onerank_export.serving.repository import write_model_repository

    return write_model_repository(state.work, state.config, dict(state.onnx), dict(state.engines),
                                  state.plugin_library)
