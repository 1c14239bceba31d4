"""fp16 and int8 variants of the user encoder and the candidate scorer (the user-state cache's halves),
made by the single graph's converters and judged by its gates.

Calibration data: the encoder calibrates on the calibration requests' history columns; the scorer on
the states the *fp32* encoder computes for those requests plus the request columns, so each half
sees exactly the activations its part of the single graph sees. Judgement: the composition
scorer_p(encoder_p(x)) against fp32 eager on the held-out requests, through `accuracy.compare` and
`apply_gates` (AUC/GAUC change, top-k overlap, fp16 max error, finite scores), plus each half's
structure checks (checks.py; the custom-op check only in the scorer, which has the node). The
composition's distance to the single graph of the same precision is recorded, not gated: both are
judged against eager by the same gates, and the single graph need not exist (its own gate may have
failed) for the halves to be usable.

States in the model's precision: the fp16 halves exchange the states as fp16 (the fp16 single
graph computes those tensors in fp16 anyway), so a cache entry holds half the bytes and the scorer
reads exactly what was stored. The int8 halves keep fp32 states: Q/DQ sits on the inputs of the
weight matmuls only, the keys and values are float outputs of the qkv projection consumed by the
attention matmuls kept in float, so the int8 single graph holds them in fp32 too (storing them in
int8 would quantize the key operand that carries the mask column: docs/precision.md).

Both halves are written only when every gate passed; reports/user_cache_calibration.json gets an
entry per precision either way. No int8 error localisation here: the single graph's report has it,
for the same weights.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx

from onerank_export.calibration.accuracy import apply_gates, compare, describe_gate, run_onnx
from onerank_export.calibration.checks import check_fp16, check_int8
from onerank_export.calibration.data import CalibrationData, DataInfo, RequestSet
from onerank_export.calibration.result import Accuracy, Gated, ModelRecord
from onerank_export.calibration.selection import NodeChoice
from onerank_export.calibration.settings import CalibrationSettings
from onerank_export.export.metadata import read_metadata
from onerank_export.io import atomic_path, sha256_file, write_json
from onerank_export.model.onerank import OneRankModel
from onerank_export.precision import Precision
from onerank_export.user_states import ENCODER_INPUTS, SCORER_REQUEST_INPUTS, state_names, state_nbytes_per_row
from onerank_export.verdict import Verdict

REPORT_FORMAT = "onerank-user-cache-calibration/1"
REPORT_NAME = "user_cache_calibration.json"
ROLES = ("user_encoder", "candidate_scorer")
Progress = Callable[[str], None]


def half_file_name(role: str, precision: Precision) -> str:
    """onerank.user_encoder.fp16.onnx, onerank.candidate_scorer.int8.onnx, ..."""
    return f"onerank.{role}.{Precision(precision).value}.onnx"


def state_dtype(precision: Precision) -> np.dtype:
    """The element type of the states the halves of `precision` exchange (and the cache stores)."""
    return np.dtype(np.float16 if Precision(precision) is Precision.FP16 else np.float32)


@dataclass(frozen=True)
class HalfRecord:
    """One converted half: where it went, its node choices and its structure checks."""

    role: str
    model: ModelRecord
    nodes: tuple[NodeChoice, ...]  # kept in float, or placed for a stated reason
    structure: tuple[Verdict, ...]
    detail: dict  # fp16: casts; int8: quantized nodes

    def to_dict(self) -> dict:
        return {"model": self.model.to_dict(), "nodes": [c.to_dict() for c in self.nodes],
                "structure": [c.to_dict() for c in self.structure], **self.detail}


@dataclass(frozen=True)
class HalvesEntry(Gated):
    """One precision's entry in user_cache_calibration.json."""

    precision: Precision
    halves: tuple[HalfRecord, HalfRecord]  # encoder, scorer
    settings: CalibrationSettings
    data: DataInfo
    accuracy: Accuracy  # of the composition scorer_p(encoder_p(x)) against fp32 eager
    gates: tuple[Verdict, ...]
    state_dtype: str
    state_bytes_per_row: dict[str, int]  # {"hist_len": L, "bytes": ...} at the serving config's opt L
    single_graph: dict  # {"path", "max_abs_diff"} or {"skipped": reason}
    seconds: dict[str, float]


    def to_dict(self) -> dict:
        int8 = self.precision is Precision.INT8
        return {
            "passed": self.passed,
            "halves": {h.role: h.to_dict() for h in self.halves},
            "settings": self.settings.to_dict() | {"method": self.settings.method if int8 else None},
            "gates_config": self.settings.gates.to_dict(),
            "data": self.data.to_dict(),
            "states": {"dtype": self.state_dtype, **self.state_bytes_per_row},
            "accuracy": self.accuracy.to_dict(),
            "gates": [g.to_dict() for g in self.gates],
            "vs_single_graph": self.single_graph,
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
        }


@dataclass(frozen=True)
class HalvesOutcome:
    entry: HalvesEntry
    report_path: Path
    summary: str

    @property
    def passed(self) -> bool:
        return self.entry.passed

    @property
    def paths(self) -> tuple[Path, Path] | None:
        """(encoder, scorer), or None when a gate failed: rejected halves are never written."""
        if not self.passed:
            return None
        encoder, scorer = self.entry.halves
        return encoder.model.path, scorer.model.path


def calibrate_halves(encoder_fp32: Path, scorer_fp32: Path, model: OneRankModel, settings: CalibrationSettings,
                     sets: CalibrationData, *, out_dir: Path, report_dir: Path, single: Path | None = None,
                     progress: Progress | None = None) -> HalvesOutcome:
    """Convert both fp32 halves to `settings.precision`, judge the composition, write both only if
    every gate passed. `single`: the single graph of the same precision, to record the difference."""
    from onerank_export.model.train import predict

    say = progress or (lambda _msg: None)
    cfg, precision, started = model.cfg, settings.precision, time.perf_counter()
    names = state_names(cfg)
    seconds: dict[str, float] = {}

    t0 = time.perf_counter()
    fp32 = {role: onnx.load(str(p)) for role, p in zip(ROLES, (encoder_fp32, scorer_fp32), strict=True)}
    calib = sets.calibration.batches(settings.batch_size)
    encoder_batches = [{n: b[n] for n in ENCODER_INPUTS} for b in calib]
    encoder = _session(fp32["user_encoder"])
    scorer_batches = [{**dict(zip(names, encoder.run(list(names), feed), strict=True)),
                       **{n: b[n] for n in SCORER_REQUEST_INPUTS}} for feed, b in zip(encoder_batches, calib,
                                                                                       strict=True)]
    reference = predict(model.eval(), sets.evaluation.features)
    fp32_composed = composed_scores(fp32["user_encoder"], fp32["candidate_scorer"], cfg, sets.evaluation)
    seconds["reference"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    fp16_io = names if precision is Precision.FP16 else ()
    say(f"converting the user encoder and the candidate scorer to {precision}")
    converted = {}
    for role, batches, path in zip(ROLES, (encoder_batches, scorer_batches), (encoder_fp32, scorer_fp32),
                                   strict=True):
        converted[role] = _convert(path, fp32[role], batches, settings, fp16_io,
                                   {"requests": str(len(sets.calibration))})
    seconds["convert"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    encoder_p, scorer_p = (converted[r][0] for r in ROLES)
    scores = composed_scores(encoder_p, scorer_p, cfg, sets.evaluation)
    accuracy = compare(reference, scores, sets.evaluation, cfg.tasks, settings.gates.topk, fp32_composed)
    checks = [replace(v, name=f"{role}.{v.name}") for role in ROLES for v in converted[role][2]]
    gates = apply_gates(precision, accuracy, settings.gates, checks)
    single_graph = _vs_single(single, scores, sets.evaluation)
    seconds["evaluate"] = time.perf_counter() - t0

    passed = all(g.passed for g in gates)
    halves = []
    for role in ROLES:
        proto, plan, structure, detail = converted[role]
        out = Path(out_dir) / half_file_name(role, precision)
        if passed:
            with atomic_path(out) as tmp:
                onnx.save_model(proto, str(tmp))
        record = ModelRecord(out, passed, sha256_file(out) if passed else None)
        halves.append(HalfRecord(role, record, tuple(c for c in plan if not c.low_precision or c.reason),
                                 tuple(structure), detail))
    seconds["total"] = time.perf_counter() - started
    dtype = state_dtype(precision)
    entry = HalvesEntry(precision, (halves[0], halves[1]), settings, sets.info, accuracy, tuple(gates), dtype.name,
                        {"hist_len": cfg.serving.opt_hist_len,
                         "bytes_per_row": state_nbytes_per_row(cfg, cfg.serving.opt_hist_len, dtype.itemsize)},
                        single_graph, seconds)
    header = {"checkpoint_sha256": read_metadata(fp32["user_encoder"]).checkpoint_sha256,
              "user_encoder_fp32_sha256": sha256_file(encoder_fp32),
              "candidate_scorer_fp32_sha256": sha256_file(scorer_fp32),
              "reference": "fp32 eager (dense PyTorch model)", "tasks": list(cfg.tasks)}
    report_path = write_halves_report(Path(report_dir), header, entry)
    return HalvesOutcome(entry, report_path, summarize(entry))


def composed_scores(encoder: onnx.ModelProto, scorer: onnx.ModelProto, cfg, requests: RequestSet,
                    batch_size: int = 256) -> np.ndarray:
    """scorer(encoder(x)) [B, N, K] in the product's CPU sessions, the states handed over as the
    encoder returns them (their dtype included)."""
    names = list(state_names(cfg))
    enc, sc = _session(encoder), _session(scorer)
    out = []
    for feed in requests.batches(batch_size):
        states = enc.run(names, {n: feed[n] for n in ENCODER_INPUTS})
        out.append(sc.run(None, {**dict(zip(names, states, strict=True)),
                                 **{n: feed[n] for n in SCORER_REQUEST_INPUTS}})[0])
    return np.concatenate(out)


def summarize(entry: HalvesEntry) -> str:
    acc = entry.accuracy
    text = (f"user encoder + candidate scorer in {entry.precision}, {entry.state_dtype} states "
            f"({entry.state_bytes_per_row['bytes_per_row'] / 1024:.0f} KiB per row at L="
            f"{entry.state_bytes_per_row['hist_len']}): max |AUC change| {acc.worst_auc_change:.4f}, "
            f"top-{acc.topk} overlap {acc.topk_overlap.mean:.3f}, max abs err {acc.max_abs_error:.2e}")
    if "max_abs_diff" in entry.single_graph:
        text += f", vs single {entry.precision} graph {entry.single_graph['max_abs_diff']:.1e}"
    failed = entry.failed_gates
    if failed:
        first = failed[0]
        return f"gate failed: {describe_gate(first)}{' ' + first.detail if first.detail else ''}; {text}; " \
               "halves not written"
    return text


def write_halves_report(report_dir: Path, header: dict, entry: HalvesEntry) -> Path:
    """Add `entry` to report_dir/user_cache_calibration.json: one entry per precision for the same
    fp32 halves (a report of other halves is replaced, not merged), written atomically."""
    import json

    report_dir.mkdir(parents=True, exist_ok=True)
    path = report_dir / REPORT_NAME
    report = {"format": REPORT_FORMAT, **header, "precisions": {}}
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            old = {}
        same = all(old.get(k) == header[k] for k in ("user_encoder_fp32_sha256", "candidate_scorer_fp32_sha256"))
        if old.get("format") == REPORT_FORMAT and same:
            report["precisions"].update(old.get("precisions", {}))
    report["precisions"][entry.precision.value] = entry.to_dict()
    report["passed"] = all(e["passed"] for e in report["precisions"].values())
    write_json(path, report, allow_nan=False)
    return path


def _convert(path: Path, fp32: onnx.ModelProto, batches: Sequence[dict[str, np.ndarray]],
             settings: CalibrationSettings, fp16_io: Sequence[str], meta: dict[str, str]):
    """(proto, plan, structure checks, detail) of one half, by the single graph's converter and checks."""
    if settings.precision is Precision.INT8:
        from onerank_export.calibration.int8 import quantize_int8

        result = quantize_int8(path, batches, method=settings.method, keep_float=settings.keep_float,
                               force_low=settings.force_low_precision, calibration=meta)
        return (result.proto, result.plan, check_int8(result.proto, fp32, result.plan),
                {"quantized_nodes": list(result.quantized_nodes)})
    from onerank_export.calibration.fp16 import convert_fp16

    io = [n for n in fp16_io if n in {v.name for v in (*fp32.graph.input, *fp32.graph.output)}]
    result = convert_fp16(fp32, batches, data_max=settings.fp16_data_max, keep_float=settings.keep_float,
                          force_low=settings.force_low_precision, calibration=meta, fp16_io=io)
    return result.proto, result.plan, check_fp16(result.proto, fp32, result.plan, io), {"casts": result.casts}


def _vs_single(single: Path | None, scores: np.ndarray, requests: RequestSet) -> dict:
    if single is None or not Path(single).is_file():
        return {"skipped": "the single graph of this precision was not written (its precision stage failed or "
                           "did not run)"}
    theirs = run_onnx(onnx.load(str(single)), requests)
    return {"path": Path(single).name, "max_abs_diff": float(np.abs(theirs - scores)[requests.valid].max())}


def _session(model: onnx.ModelProto):
    from onerank_export.export.ort_session import cpu_session, default_threads

    return cpu_session(model.SerializeToString(), default_threads())
