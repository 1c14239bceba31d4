"""`verify`: eager-dense reference vs every backend the user points at, on seeded cases."""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from onerank_export.errors import ConfigError
from onerank_export.export.metadata import check_matches_checkpoint
from onerank_export.model.checkpoint import checkpoint_digest, load_checkpoint
from onerank_export.parity.cases import default_cases, invariance_case, shape_case
from onerank_export.parity.report import write_reports
from onerank_export.parity.run import ProgressFn
from onerank_export.parity.suite import ParityReport
from onerank_export.parity.targets import ParityTargets, build_runners, run_parity_suite
from onerank_export.precision import Precision, Tolerance


def load_tolerances(path: Path | None) -> dict[Precision, Tolerance]:
    """Per-precision overrides from a JSON file like {"fp16": {"atol": 0.005}}; {} without a file."""
    if path is None:
        return {}
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not readable JSON ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected an object like {{\"fp16\": {{\"atol\": 0.005}}}}")
    out = {}
    for key, value in raw.items():
        if key not in {p.value for p in Precision}:
            raise ConfigError(f"{path}: unknown precision {key!r} (known: {', '.join(p.value for p in Precision)})")
        precision = Precision(key)
        if not isinstance(value, dict) or set(value) - {"atol", "rtol"} or "atol" not in value:
            raise ConfigError(f"{path}: {precision} must be {{\"atol\": number, \"rtol\": number (optional)}}")
        atol, rtol = value["atol"], value.get("rtol", 0.0)
        if not all(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0 for v in (atol, rtol)):
            raise ConfigError(f"{path}: {precision} tolerances must be finite numbers >= 0")
        out[precision] = Tolerance(float(atol), float(rtol))
    return out


def run_verify(checkpoint: Path, targets: ParityTargets, extra_shapes: Sequence[tuple[int, int, int]],
               tolerances_file: Path | None, reports: Path, seed: int = 0,
               progress: ProgressFn | None = None) -> ParityReport:
    """Check `targets` (default: an fp32 export made now) and write parity.json + junit.xml to `reports`."""
    model = load_checkpoint(checkpoint)
    cfg = model.cfg
    tolerances = load_tolerances(tolerances_file)
    cases = default_cases(cfg, seed) + [shape_case(cfg, *s, seed=seed) for s in extra_shapes]
    digest = checkpoint_digest(checkpoint)
    for path in targets.onnx_paths:
        check_matches_checkpoint(path, cfg, digest)
    with tempfile.TemporaryDirectory(prefix="onerank-verify-") as tmp:
        if targets.empty:
            from onerank_export.export.onnx_export import export_onnx

            targets = replace(targets, onnx=[export_onnx(model, Path(tmp) / "onerank.fp32.onnx").path])
        runners = build_runners(model, targets)
        report = run_parity_suite(model, runners, cases, tolerances, invariance_case=invariance_case(cfg, seed),
                                  progress=progress)
    write_reports(report, reports)
    return report
