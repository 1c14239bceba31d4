"""Stage `triton`: the Triton model repository for the build's target, every config validated by
Triton's schema and by the rules of its backend that the schema does not express."""

from __future__ import annotations

from typing import TYPE_CHECKING

from onerank_export.pipeline.result import StageResult, Status
from onerank_export.pipeline.stages.base import Stage
from onerank_export.pipeline.state import ENGINES, ONNX, ONNX_CPU, PLUGIN_LIBRARY, REPOSITORY, BuildState
from onerank_export.precision import Precision
from onerank_export.serving.profiles import ServingPlan, Target

if TYPE_CHECKING:
    from onerank_export.serving.repository import ModelRepository


class TritonStage(Stage):
    name = "triton"
    requires = (ONNX, ONNX_CPU, ENGINES, PLUGIN_LIBRARY)
    provides = (REPOSITORY,)

    def __init__(self, plan: ServingPlan) -> None:
        self.plan = plan

    def run(self, state: BuildState) -> StageResult:
        from onerank_export.serving.backend_rules import check_repository

        if state.split is None and Precision.FP32 not in state.onnx:
            return StageResult.skipped(self.name, "no fp32 ONNX to serve")
        repo, detail = self._write_split(state) if state.split is not None else self._write_inline(state)
        state.repository = repo
        metrics = {"models": repo.models, "python_model": repo.python_model, **self.plan.describe()}
        problems = check_repository(repo.path, self.plan.target.value)
        if problems:
            return StageResult(self.name, Status.FAILED, f"{len(problems)} backend rule(s) broken, first: "
                               f"{problems[0]}", repo.artifacts, metrics)
        return StageResult(self.name, Status.OK, detail, repo.artifacts, metrics)

    def _write_inline(self, state: BuildState) -> tuple[ModelRepository, str]:
        from onerank_export.serving.repository import write_model_repository

        plan = self.plan
        repo = write_model_repository(state.work, state.config, plan, dict(state.onnx), dict(state.engines),
                                      state.plugin_library, cpu_onnx=dict(state.onnx_cpu),
                                      user_cache=state.user_cache,
                                      user_cache_engines=half_engines(state) if plan.target is Target.GPU else None)
        threads = f" x {plan.threads} thread(s)" if plan.threads else ""
        return repo, (f"model_repository/ target {plan.target} ({plan.target_reason.split(': ')[-1]}), "
                      f"profile {plan.profile}: {len(repo.models)} models ({', '.join(repo.models)}), "
                      f"{plan.instances} instance(s){threads} each"
                      + (", onerank through the user-state cache" if state.user_cache else "")
                      + "; every config.pbtxt parsed with Triton's ModelConfig and checked against its backend's "
                      "rules" + _unserved(len(state.engines), plan))

    def _write_split(self, state: BuildState) -> tuple[ModelRepository, str]:
        from onerank_export.serving.split_repository import write_split_repository

        plan = self.plan
        repo = write_split_repository(state.work, state.config, plan, state.split, state.split_dense(),
                                      state.split_engines, state.plugin_library)
        ensembles = sorted(m for m in repo.models if m == "onerank" or m.startswith(("onerank_onnx_", "onerank_trt_")))
        return repo, (f"model_repository/ target {plan.target}, split mode: ensembles {', '.join(ensembles)} "
                      f"(onerank_lookup -> a dense model), {len(repo.models)} models validated; the lookup reads "
                      "the build's one store (../../embeddings)" + _unserved(len(state.split_engines), plan, "dense "))


def half_engines(state: BuildState) -> dict:
    """The build's user-cache plan pairs with what their `.json` says, for the repository writer."""
    from onerank_export.engine.tensorrt.plan_metadata import metadata_path, plan_role, read_plan_metadata
    from onerank_export.serving.repository import HalfEngine

    def half(plan):
        meta = read_plan_metadata(metadata_path(plan))
        return HalfEngine(plan, plan_role(meta), meta.get("io_dtypes") or {})

    return {str(p): (half(enc), half(sc)) for p, (enc, sc) in state.user_cache_engines.items()}


def _unserved(engines: int, plan: ServingPlan, kind: str = "") -> str:
    if engines and plan.target is not Target.GPU:
        return f"; {engines} {kind}TensorRT engine(s) built but not served (target {plan.target})"
    return ""
