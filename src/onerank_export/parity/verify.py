"""`verify`: eager-dense reference vs every backend the user points at, on seeded cases."""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from onerank_export.errors import ConfigError, StageError
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
    for path in [*targets.onnx_paths, *(targets.user_cache or ())]:
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


def split_user_cache_halves(files) -> tuple[list[Path], tuple[Path, Path] | None]:
    """`verify --onnx` files: single serving graphs, and at most one user encoder + candidate scorer
    pair (told apart by their `onerank.graph` metadata), which is checked as the cached path."""
    from onerank_export.export.metadata import GRAPH_KEY, read_metadata

    singles: list[Path] = []
    halves: dict[str, list[Path]] = {"user_encoder": [], "candidate_scorer": []}
    for path in map(Path, files):
        role = read_metadata(path).other.get(GRAPH_KEY, "serving")
        halves.get(role, singles).append(path)
    encoders, scorers = halves["user_encoder"], halves["candidate_scorer"]
    if not encoders and not scorers:
        return singles, None
    if len(encoders) != 1 or len(scorers) != 1:
        raise ConfigError(f"--onnx has {len(encoders)} user encoder(s) and {len(scorers)} candidate scorer(s); "
                          "give exactly one of each (onnx/onerank.user_encoder.<p>.onnx and "
                          "onnx/onerank.candidate_scorer.<p>.onnx of one build)")
    enc, sc = read_metadata(encoders[0]), read_metadata(scorers[0])
    if (enc.checkpoint_sha256, enc.precision) != (sc.checkpoint_sha256, sc.precision):
        raise ConfigError(f"{encoders[0].name} and {scorers[0].name} come from different checkpoints or precisions; "
                          "give the two halves of one build")
    return singles, (encoders[0], scorers[0])


def cache_metrics_line(url: str, model: str) -> str:
    """One line with the user-state cache's counters of `model` from the server's Prometheus page."""
    import urllib.request

    from onerank_export.serving.cache_metrics import parse_cache_metrics

    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
    except OSError as exc:
        raise StageError(f"could not read metrics from {url}: {exc}; start the server with a metrics port "
                         "(`onerank-export serve` serves them on 127.0.0.1:8002)") from None
    m = parse_cache_metrics(text, model)
    if not m:
        return f"user-state cache: model {model} exports no cache metrics (built without --user-cache?)"
    return (f"user-state cache of {model}: {m.get('cache_hits_total.local', 0):.0f} local hits, "
            f"{m.get('cache_hits_total.shared', 0):.0f} shared hits, {m.get('cache_misses_total', 0):.0f} misses, "
            f"{m.get('cache_bytes', 0) / 2**20:.1f} MiB in {m.get('cache_entries', 0):.0f} entries, "
            f"{m.get('cache_evictions_total', 0):.0f} evictions, {m.get('cache_shared_errors_total', 0):.0f} Redis "
            f"errors, {m.get('encoder_seconds_total', 0):.3f} s in the user encoder")
