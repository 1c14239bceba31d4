"""What a parity run checks, and the one way runners are made for it (`build` and `verify` alike).

Runner names say the backend and precision: `eager-serving`, `onnxruntime-<precision>` (the
product's CPU rewrite, what the Triton CPU model serves), `onnxruntime-<precision>-canonical`
(the file as written, what Triton's ONNX Runtime backend loads), on a host with a CUDA device
`onnxruntime-<precision>-cuda` and `-tensorrt` (that file on ORT's CUDA / TensorRT providers),
`tensorrt-<precision>`, `split-<precision>[-store-<dtype>]` / `split-tensorrt-<precision>[-store-<dtype>]`
(split mode: the store's lookup feeding the dense ONNX of that precision in ONNX Runtime / its dense
TensorRT plan), `user-cache-<precision>` / `user-cache-tensorrt-<precision>` (the cached path on ONNX
Runtime / on the two TensorRT plans, miss then hit), and
`triton-<protocol>:<model>` for a live server, `triton-ort:<model>` for a repository's ONNX Runtime
backend models opened as that backend opens them. Only when two targets of one backend share a precision does
`:<file name>` (or the path, if the names agree too) follow, so names stay the same from build to
verify. A plan's precision is read from the `<plan>.json` its build wrote, never from its name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from onerank_export.engine.tensorrt.plan_metadata import metadata_path, read_plan_metadata
from onerank_export.errors import CheckFailed, ConfigError, StageError
from onerank_export.export.metadata import detect_precision
from onerank_export.host import cuda_device_present
from onerank_export.model.onerank import OneRankModel
from onerank_export.parity.cases import ParityCase
from onerank_export.parity.run import ProgressFn
from onerank_export.parity.runner import Runner, RunnerUnavailable
from onerank_export.parity.runners import (
    GPU_RUNNER_PROVIDERS,
    EagerDenseRunner,
    EagerServingRunner,
    OnnxRuntimeRunner,
    TritonOrtBackendRunner,
)
from onerank_export.parity.suite import ParityReport, Tolerances, run_parity
from onerank_export.precision import Precision


@dataclass(frozen=True)
class ParityTargets:
    """The artifacts to check. `onnx`: files whose precision is read from each, or {precision: file}
    when the caller knows it (a build's own exports)."""

    onnx: Sequence[Path] | Mapping[Precision, Path] = ()
    plans: Sequence[Path] = ()
    plugin: Path | None = None  # plugin library for the plans (default: beside them in the build layout)
    triton_url: str | None = None
    triton_model: str | None = None  # None: the server's default CPU model
    protocol: str = "http"
    repository: Path | None = None  # a Triton model repository: its ONNX Runtime backend models, loaded as it would
    # The cached path, miss then hit: (user encoder, candidate scorer), or {precision: (encoder, scorer)}
    user_cache: tuple[Path, Path] | Mapping[Precision, tuple[Path, Path]] | None = None
    split: tuple[Path, Path] | None = None  # (dense ONNX, embedding store dir): lookup + dense graph (split mode)
    split_variants: Sequence[Path] = ()  # more dense graphs (fp16 / int8), the same store; precision from each
    # {precision: dense TensorRT plan}: the lookup in `split`'s store feeding each plan (split mode on TensorRT)
    split_plans: Mapping[Precision, Path] = field(default_factory=dict)
    # {precision: (user encoder plan, candidate scorer plan)}: the cached path on TensorRT
    user_cache_plans: Mapping[Precision, tuple[Path, Path]] = field(default_factory=dict)

    @property
    def onnx_paths(self) -> list[Path]:
        return [Path(p) for p in (self.onnx.values() if isinstance(self.onnx, Mapping) else self.onnx)]

    def onnx_files(self) -> list[tuple[Path, Precision]]:
        if isinstance(self.onnx, Mapping):
            return [(Path(path), Precision(p)) for p, path in self.onnx.items()]
        return [(Path(path), detect_precision(path)) for path in self.onnx]

    def user_cache_pairs(self) -> list[tuple[Path, Path, Precision]]:
        """(encoder, scorer, precision) per pair; a bare pair's precision is read from its encoder."""
        if self.user_cache is None:
            return []
        if isinstance(self.user_cache, Mapping):
            return [(Path(e), Path(s), Precision(p)) for p, (e, s) in self.user_cache.items()]
        encoder, scorer = self.user_cache
        return [(Path(encoder), Path(scorer), detect_precision(encoder))]

    @property
    def empty(self) -> bool:
        return (not self.onnx and not self.plans and not self.triton_url and self.repository is None
                and not self.user_cache and self.split is None and not self.split_variants
                and not self.user_cache_plans and not self.split_plans)


def plan_precision(plan: Path) -> Precision:
    """The precision recorded in the plan's metadata; a one-line ConfigError when it cannot be read."""
    meta_file = metadata_path(Path(plan))
    try:
        meta = read_plan_metadata(meta_file)
    except StageError as exc:
        why = "missing" if not meta_file.is_file() else str(exc).removeprefix(f"{meta_file}: ")
        raise ConfigError(f"{plan}: its precision is read from {meta_file.name} beside it ({why}); keep the "
                          "metadata `onerank-export build` wrote next to the plan, or rebuild the engine") from None
    return Precision.parse(str(meta["precision"]), what=f"{meta_file}: precision")


def build_runners(model: OneRankModel, targets: ParityTargets) -> list[tuple[Runner, Precision]]:
    """Eager serving graph, then each ONNX model (CPU rewrite, canonical, then on ORT's GPU providers),
    plans, Triton.

    Reads every precision before any runner starts, so a bad target fails before slow work. A
    Triton server is contacted here: an unreachable server is a failed check, not a skipped one."""
    onnx = targets.onnx_files()
    plans = [(Path(plan), plan_precision(plan)) for plan in targets.plans]
    runners: list[tuple[Runner, Precision]] = [(EagerServingRunner(model), Precision.FP32)]
    ort_names = _names("onnxruntime", onnx)
    runners += [(OnnxRuntimeRunner(path, name=_named(n, "")), p) for (path, p), n in zip(onnx, ort_names, strict=True)]
    runners += [(OnnxRuntimeRunner(path, name=_named(n, "-canonical"), cpu_rewrite=False), p)
                for (path, p), n in zip(onnx, ort_names, strict=True)]
    # The GPU providers' rows exist where a GPU does (the probe `--target auto` and `--engine auto`
    # use): a GPU host sees them skipped with the reason when onnxruntime-gpu or its libraries are
    # missing; a CPU host's report keeps its rows and counts. They run the canonical file, the one
    # Triton's ONNX Runtime backend loads on KIND_GPU instances.
    if onnx and cuda_device_present():
        for variant, providers in GPU_RUNNER_PROVIDERS.items():
            runners += [(OnnxRuntimeRunner(path, name=_named(n, f"-{variant}"), providers=providers,
                                           cpu_rewrite=False), p)
                        for (path, p), n in zip(onnx, ort_names, strict=True)]
    if plans:
        from onerank_export.parity.tensorrt_runner import TensorRTRunner

        runners += [(TensorRTRunner(plan, plugin_library=targets.plugin, name=_named(n, "")), p)
                    for (plan, p), n in zip(plans, _names("tensorrt", plans), strict=True)]
    if targets.user_cache:
        from onerank_export.parity.user_cache_runner import UserCacheRunner

        runners += [(UserCacheRunner(encoder, scorer, name=f"user-cache-{precision}"), precision)
                    for encoder, scorer, precision in targets.user_cache_pairs()]
    if targets.split is not None:
        from onerank_export.parity.split_runner import SplitRunner

        dense, store = targets.split
        stored = SplitRunner.precision_of(store)
        for path in (dense, *targets.split_variants):
            p = detect_precision(path)
            runners.append((SplitRunner(path, store, name=split_runner_name(p, stored)), loosest(p, stored)))
    if targets.split_plans:
        runners += split_tensorrt_runners(targets)
    if targets.user_cache_plans:
        from onerank_export.parity.user_cache_runner import TensorRTUserCacheRunner

        runners += [(TensorRTUserCacheRunner(encoder, scorer, model.cfg, plugin_library=targets.plugin,
                                             name=f"user-cache-tensorrt-{Precision(p).value}"), Precision(p))
                    for p, (encoder, scorer) in targets.user_cache_plans.items()]
    if targets.repository is not None:
        runners += repository_runners(Path(targets.repository))
    if targets.triton_url:
        runners.append((_triton_runner(targets), Precision.FP32))
    return runners


def split_runner_name(dense: Precision, store: Precision, backend: str = "split") -> str:
    """`split-<dense precision>` (`split-tensorrt-...` for a plan), with `-store-<dtype>` when the rows
    come from a reduced store."""
    return f"{backend}-{dense.value}" + (f"-store-{store.value}" if store is not Precision.FP32 else "")


def loosest(*precisions: Precision) -> Precision:
    """The precision whose tolerance a chain of reduced parts is held to: the loosest of its parts."""
    order = (Precision.FP32, Precision.FP16, Precision.INT8)
    return max(precisions, key=order.index)


def split_tensorrt_runners(targets: ParityTargets) -> list[tuple[Runner, Precision]]:
    """`split-tensorrt-<p>` per dense plan, held to the looser of the plan's and the store's precision (an
    int8 store behind an fp32 plan is an int8 result)."""
    from onerank_export.parity.split_runner import SplitRunner
    from onerank_export.parity.tensorrt_runner import SplitTensorRTRunner

    if targets.split is None:
        raise ConfigError("dense TensorRT plans take looked-up item rows; give their embedding store "
                          "(the build's embeddings/) with them")
    store = Path(targets.split[1])
    stored = SplitRunner.precision_of(store)
    return [(SplitTensorRTRunner(plan, store, plugin_library=targets.plugin,
                                 name=split_runner_name(Precision(p), stored, "split-tensorrt")),
             loosest(Precision(p), stored)) for p, plan in targets.split_plans.items()]


def repository_runners(repository: Path) -> list[tuple[Runner, Precision]]:
    """One runner per ONNX Runtime backend model of a Triton repository, at the precision its config records."""
    from onerank_export.serving.model_config import read_config
    from onerank_export.serving.parameters import PRECISION_PARAMETER, ROLE_PARAMETER

    out: list[tuple[Runner, Precision]] = []
    for config in sorted(repository.glob("*/config.pbtxt")):
        cfg = read_config(config)
        if cfg.platform != "onnxruntime_onnx" and cfg.backend != "onnxruntime":
            continue
        if ROLE_PARAMETER in cfg.parameters:  # one half of the cached path: its inputs are not the contract's
            continue
        if any(i.name == "hist_item_rows" for i in cfg.input):  # split mode's dense model: fed rows by the
            continue  # lookup, which this runner does not do; the `split-*` runner checks the same file
        precision = Precision.parse(cfg.parameters[PRECISION_PARAMETER].string_value, what=f"{config}: precision")
        out.append((TritonOrtBackendRunner(config.parent), precision))
    return out


def run_parity_suite(model: OneRankModel, runners: Sequence[tuple[Runner, Precision | str]],
                     cases: Sequence[ParityCase], tolerances: Tolerances | None = None, *,
                     invariance_case: ParityCase | None = None, progress: ProgressFn | None = None) -> ParityReport:
    """Every runner against the eager dense model (the reference); `report.run_results` keeps the outputs."""
    return run_parity(EagerDenseRunner(model), runners, cases, tolerances, invariance_case=invariance_case,
                      progress=progress)


def _names(backend: str, items: list[tuple[Path, Precision]]) -> list[tuple[str, str]]:
    """(`<backend>-<precision>`, qualifier) per item; the qualifier is empty unless a name is shared."""
    out = []
    for path, precision in items:
        same = [other for other, p in items if p == precision]
        if len(same) == 1:
            qualifier = ""
        elif sum(other.name == path.name for other in same) == 1:
            qualifier = f":{path.name}"
        else:
            qualifier = f":{path}"
        out.append((f"{backend}-{precision.value}", qualifier))
    return out


def _named(name: tuple[str, str], variant: str) -> str:
    base, qualifier = name
    return f"{base}{variant}{qualifier}"


def _triton_runner(targets: ParityTargets) -> Runner:
    from onerank_export.parity.triton_runner import TritonRunner

    kwargs = {"protocol": targets.protocol}
    if targets.triton_model:
        kwargs["model_name"] = targets.triton_model
    runner = TritonRunner(targets.triton_url, **kwargs)
    try:  # an unreachable server is a failed verification, not a skipped one
        runner.activate()
    except RunnerUnavailable as exc:
        raise CheckFailed(f"Triton server at {targets.triton_url}: {exc}; start one with "
                          "`onerank-export serve --repository DIR`") from None
    return runner
