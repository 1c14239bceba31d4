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
    digest = checkpoint_digest(checkpoint)
    if targets.split is not None:  # before the weights load: a wrong store is refused in a second
        check_store_matches(targets.split[1], digest)
    model = load_checkpoint(checkpoint)
    cfg = model.cfg
    tolerances = load_tolerances(tolerances_file)
    cases = default_cases(cfg, seed) + [shape_case(cfg, *s, seed=seed) for s in extra_shapes]
    dense = [targets.split[0], *targets.split_variants] if targets.split else []
    for path in [*targets.onnx_paths, *dense, *(p for e, s, _ in targets.user_cache_pairs() for p in (e, s))]:
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


def split_dense(files: list[Path], embeddings: Path | None
                ) -> tuple[list[Path], tuple[Path, Path] | None, list[Path]]:
    """`verify --onnx dense.fp32.onnx [--onnx dense.int8.onnx ...] --embeddings DIR`: the split dense
    graphs (told apart by their `onerank.graph` metadata), one per precision, with the store they look
    rows up in; a build directory stands for its embeddings/. Returns (other files, (first dense graph,
    store), the other dense graphs); never a dense graph without a store or a store without one."""
    from onerank_export.embeddings.split import STORE_DIR
    from onerank_export.export.metadata import GRAPH_KEY, detect_precision, read_metadata

    dense = [p for p in files if read_metadata(p).other.get(GRAPH_KEY) == "dense"]
    rest = [p for p in files if p not in dense]
    if not dense and embeddings is None:
        return rest, None, []
    if not dense:
        raise ConfigError(f"--embeddings {embeddings}: no split dense graph among --onnx; give the build's "
                          "onnx/onerank.dense.fp32.onnx with it")
    if embeddings is None:
        raise ConfigError(f"{dense[0]}: a split dense graph takes looked-up item rows; give its embedding store "
                          "with --embeddings (the build's embeddings/ directory or the build directory)")
    seen: dict[Precision, Path] = {}
    for path in dense:
        p = detect_precision(path)
        if p in seen:
            raise ConfigError(f"--onnx has two {p} split dense graphs ({seen[p].name}, {path.name}); give one per "
                              "precision with their --embeddings store")
        seen[p] = path
    store = Path(embeddings)
    if not (store / "index.json").is_file() and (store / STORE_DIR / "index.json").is_file():
        store = store / STORE_DIR
    return rest, (dense[0], store), dense[1:]


def check_store_matches(store: Path, digest: str) -> None:
    """One line when a store was written from another checkpoint than the one verified against."""
    from onerank_export.embeddings.store import open_store

    written_from = open_store(store).checkpoint_sha256
    if written_from and written_from != digest:
        raise ConfigError(f"{store}: embedding store was written from checkpoint {written_from[:12]}, not the "
                          f"checkpoint verified against ({digest[:12]}); give the store of the same build")


def split_user_cache_halves(files) -> tuple[list[Path], dict[Precision, tuple[Path, Path]] | None]:
    """`verify --onnx` files: single serving graphs, and user encoder + candidate scorer pairs (told
    apart by their `onerank.graph` metadata), paired by their `onerank.precision` and each checked as
    the cached path: at most one pair per precision."""
    from onerank_export.export.metadata import GRAPH_KEY, detect_precision, read_metadata

    singles: list[Path] = []
    halves: dict[str, dict[Precision, list[Path]]] = {"user_encoder": {}, "candidate_scorer": {}}
    meta = {}
    for path in map(Path, files):
        meta[path] = read_metadata(path)
        role = meta[path].other.get(GRAPH_KEY, "serving")
        if role in halves:
            halves[role].setdefault(detect_precision(path), []).append(path)
        else:
            singles.append(path)
    encoders, scorers = halves["user_encoder"], halves["candidate_scorer"]
    if not encoders and not scorers:
        return singles, None
    pairs = {}
    for precision in sorted({*encoders, *scorers}, key=lambda p: list(Precision).index(p)):
        enc, sc = encoders.get(precision, []), scorers.get(precision, [])
        if len(enc) != 1 or len(sc) != 1:
            raise ConfigError(f"--onnx has {len(enc)} {precision} user encoder(s) and {len(sc)} {precision} candidate "
                              f"scorer(s); give exactly one of each per precision (onnx/onerank.user_encoder."
                              f"{precision}.onnx and onnx/onerank.candidate_scorer.{precision}.onnx of one build)")
        if meta[enc[0]].checkpoint_sha256 != meta[sc[0]].checkpoint_sha256:
            raise ConfigError(f"{enc[0].name} and {sc[0].name} come from different checkpoints; "
                              "give the two halves of one build")
        pairs[precision] = (enc[0], sc[0])
    return singles, pairs


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
