"""`verify`: eager-dense reference vs every backend the user points at, on seeded cases."""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from onerank_export.config import OneRankConfig
from onerank_export.errors import CheckFailed, ConfigError
from onerank_export.export.metadata import model_metadata
from onerank_export.model.checkpoint import checkpoint_digest, load_checkpoint
from onerank_export.parity.cases import ParityCase, default_cases, shape_case
from onerank_export.parity.compare import Tolerance
from onerank_export.parity.report import write_junit
from onerank_export.parity.runner import Runner, RunnerUnavailable
from onerank_export.parity.runners import EagerDenseRunner, EagerServingRunner, OnnxRuntimeRunner
from onerank_export.parity.suite import DEFAULT_TOLERANCES, ParityReport, run_parity

PRECISIONS = tuple(DEFAULT_TOLERANCES)


@dataclass
class VerifyTargets:
    onnx: list[Path] = field(default_factory=list)
    engines: list[Path] = field(default_factory=list)
    plugin: Path | None = None
    triton_url: str | None = None
    triton_model: str | None = None
    protocol: str = "http"


def detect_precision(path: Path) -> str:
    """The precision an ONNX model computes in: its `onerank.precision` metadata, else its content."""
    model = onnx.load(str(path), load_external_data=False)
    meta = model_metadata(model)
    if meta.get("onerank.precision") in PRECISIONS:
        return meta["onerank.precision"]
    if any(n.op_type == "QuantizeLinear" for n in model.graph.node):
        return "int8"
    if any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer):
        return "fp16"
    return "fp32"


def check_onnx_matches_checkpoint(path: Path, cfg: OneRankConfig, digest: str) -> None:
    """An ONNX exported from another checkpoint cannot be verified against this one: say so up front."""
    meta = model_metadata(onnx.load(str(path), load_external_data=False))
    if "onerank.config" in meta:
        theirs = OneRankConfig.from_dict(json.loads(meta["onerank.config"]), source=str(path))
        diff = [k for k, v in cfg.to_dict().items() if theirs.to_dict().get(k) != v]
        if diff:
            key = diff[0]
            raise ConfigError(f"{path}: exported from a checkpoint with another config ({key}="
                              f"{theirs.to_dict()[key]!r}, checkpoint has {cfg.to_dict()[key]!r}); "
                              "verify it against the checkpoint it was exported from")
    sha = meta.get("onerank.checkpoint_sha256")
    if sha and sha != digest:
        raise ConfigError(f"{path}: exported from checkpoint sha256 {sha[:12]}..., not {digest[:12]}... "
                          "(same config, other weights); pass the matching --checkpoint")


def load_tolerances(path: Path | None) -> dict[str, Tolerance]:
    if path is None:
        return {}
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not readable JSON ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected an object like {{\"fp16\": {{\"atol\": 0.005}}}}")
    out = {}
    for precision, value in raw.items():
        if precision not in PRECISIONS:
            raise ConfigError(f"{path}: unknown precision {precision!r} (known: {', '.join(PRECISIONS)})")
        if not isinstance(value, dict) or set(value) - {"atol", "rtol"} or "atol" not in value:
            raise ConfigError(f"{path}: {precision} must be {{\"atol\": number, \"rtol\": number (optional)}}")
        atol, rtol = value["atol"], value.get("rtol", 0.0)
        if not all(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0 for v in (atol, rtol)):
            raise ConfigError(f"{path}: {precision} tolerances must be finite numbers >= 0")
        out[precision] = Tolerance(float(atol), float(rtol))
    return out


def invariance_case(cfg: OneRankConfig, seed: int) -> ParityCase:
    """Small enough that appending 5 candidates / 7 history positions stays within the maxima."""
    return shape_case(cfg, 2, max(1, min(37, cfg.max_hist_len - 7)), max(1, min(29, cfg.max_candidates - 5)),
                      seed, name="invariance")


def run_verify(checkpoint: Path, targets: VerifyTargets, extra_shapes: Sequence[tuple[int, int, int]],
               tolerances_file: Path | None, reports: Path, seed: int = 0,
               progress: Callable[[str], None] | None = None) -> ParityReport:
    model = load_checkpoint(checkpoint)
    cfg = model.cfg
    tolerances = load_tolerances(tolerances_file)
    cases = default_cases(cfg, seed) + [shape_case(cfg, *s, seed=seed) for s in extra_shapes]
    runners: list[tuple[Runner, str]] = [(EagerServingRunner(model), "fp32")]
    with tempfile.TemporaryDirectory(prefix="onerank-verify-") as tmp:
        onnx_files = list(targets.onnx)
        if not onnx_files and not targets.engines and not targets.triton_url:
            from onerank_export.export.onnx_export import export_onnx

            onnx_files = [export_onnx(model, Path(tmp) / "onerank.fp32.onnx").path]
        digest = checkpoint_digest(checkpoint)
        for path in targets.onnx:
            check_onnx_matches_checkpoint(path, cfg, digest)
        for path in onnx_files:
            precision = detect_precision(path)
            runners.append((OnnxRuntimeRunner(path, name=f"onnxruntime:{path.name}"), precision))
            runners.append((OnnxRuntimeRunner(path, name=f"onnxruntime-canonical:{path.name}", cpu_rewrite=False),
                            precision))
        for plan in targets.engines:
            from onerank_export.parity.tensorrt_runner import TensorRTRunner

            runners.append((TensorRTRunner(plan, plugin_library=targets.plugin), _plan_precision(plan)))
        if targets.triton_url:
            runners.append((_triton_runner(targets), "fp32"))
        report = run_parity(EagerDenseRunner(model), runners, cases, tolerances,
                            invariance_case=invariance_case(cfg, seed), progress=progress)
    report.write_json(reports / "parity.json")
    write_junit(report, reports / "junit.xml")
    return report


def _plan_precision(plan: Path) -> str:
    for precision in PRECISIONS:
        if f".{precision}." in plan.name:
            return precision
    return "fp32"


def _triton_runner(targets: VerifyTargets) -> Runner:
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
