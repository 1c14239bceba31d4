"""fp16 and int8 user encoder + candidate scorer: the single graph's converters applied to each half,
the composition judged by the single graph's gates, fp16 states at the interface, nothing written
when a gate fails; the build stage that makes them and the cached path per precision in parity."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import onnx
import pytest
import torch
from helpers import request
from onnx import TensorProto

from onerank_export.calibration.data import RequestSet, prepare_data
from onerank_export.calibration.pipeline import calibrate
from onerank_export.calibration.settings import AccuracyGates, CalibrationSettings
from onerank_export.calibration.user_cache import REPORT_NAME, calibrate_halves, composed_scores
from onerank_export.export.metadata import GRAPH_KEY, read_metadata
from onerank_export.export.onnx_config import CANDIDATE_SCORER_ONNX_CONFIG, USER_ENCODER_ONNX_CONFIG
from onerank_export.export.onnx_export import export_onnx
from onerank_export.export.ort_session import cpu_session
from onerank_export.pipeline.options import BuildOptions
from onerank_export.pipeline.result import Status
from onerank_export.pipeline.stages.user_cache_precision import UserCachePrecisionStage
from onerank_export.pipeline.state import BuildState
from onerank_export.precision import DEFAULT_TOLERANCES, Precision
from onerank_export.serving.repository import UserCacheModels
from onerank_export.serving.user_cache import CacheSettings
from onerank_export.user_states import ENCODER_INPUTS, state_names, state_nbytes_per_row

SMALL = {"num_requests": 32, "eval_requests": 64}  # the tiny model: seconds, not minutes
# The module fixture converts and calibrates both halves in two precisions (~20 s): the CI tier, not the
# fast one (which had grown to 111 s of its 2 minutes).
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny(tiny_fp32_onnx, tiny_halves, tmp_path_factory):
    """The session's tiny model, single graph and fp32 halves, small demo request sets, and per
    precision the halves calibrated from them (fp16 also the single graph, to compare with)."""
    model, single = tiny_fp32_onnx
    _, enc, sc = tiny_halves
    out = tmp_path_factory.mktemp("tiny-reduced-halves")
    sets = prepare_data(model.cfg, CalibrationSettings("fp16", **SMALL))
    fp16 = CalibrationSettings("fp16", **SMALL)
    single16 = calibrate(single, model, fp16, out=out / "onerank.fp16.onnx", report_dir=out / "reports", sets=sets)
    assert single16.model_path is not None, single16.summary
    runs = {p: calibrate_halves(enc, sc, model, CalibrationSettings(p, **SMALL), sets, out_dir=out,
                                report_dir=out / "reports", single=single16.model_path if p == "fp16" else None)
            for p in (Precision.FP16, Precision.INT8)}
    return {"model": model, "single": single, "encoder": enc, "scorer": sc, "sets": sets, "runs": runs, "out": out}


def _io(model: onnx.ModelProto) -> dict[str, int]:
    return {v.name: v.type.tensor_type.elem_type for v in (*model.graph.input, *model.graph.output)}


def _eager(model, feed):
    with torch.no_grad():
        return model(**{k: torch.from_numpy(v) for k, v in feed.items()}).scores.numpy()


def test_fp16_halves_exchange_fp16_states_and_keep_the_request_contract(tiny):
    cfg, outcome = tiny["model"].cfg, tiny["runs"][Precision.FP16]
    assert outcome.passed, outcome.summary
    enc_path, sc_path = outcome.paths
    assert (enc_path.name, sc_path.name) == ("onerank.user_encoder.fp16.onnx", "onerank.candidate_scorer.fp16.onnx")
    enc, sc = onnx.load(str(enc_path)), onnx.load(str(sc_path))
    states = state_names(cfg)
    assert _io(enc) == {"hist_item_ids": TensorProto.INT64, "hist_action_ids": TensorProto.INT64,
                        **dict.fromkeys(states, TensorProto.FLOAT16)}
    assert _io(sc) == {**dict.fromkeys(states, TensorProto.FLOAT16), "context_ids": TensorProto.INT64,
                       "cand_item_ids": TensorProto.INT64, "cand_features": TensorProto.FLOAT,
                       "scores": TensorProto.FLOAT}
    assert TensorProto.BOOL not in {*_io(enc).values(), *_io(sc).values()}
    # The states cross as computed: no Cast at the interface on either side.
    casts = [n for m in (enc, sc) for n in m.graph.node if n.op_type == "Cast"]
    assert not [c.name for c in casts if set(c.input) & set(states) or set(c.output) & set(states)]
    for m, role in ((enc, "user_encoder"), (sc, "candidate_scorer")):
        meta = read_metadata(m)
        assert meta.precision is Precision.FP16 and meta.other[GRAPH_KEY] == role
    # Half the bytes of fp32 per row, which is what the encoder really returns.
    feed = request(cfg, 1, 23, 2, seed=0)
    out = cpu_session(str(enc_path), 1).run(None, {k: feed[k] for k in ENCODER_INPUTS})
    assert {o.dtype for o in out} == {np.dtype(np.float16)}
    assert sum(o.nbytes for o in out) == state_nbytes_per_row(cfg, 23, 2) == state_nbytes_per_row(cfg, 23) // 2
    assert outcome.entry.state_dtype == "float16"


def test_fp16_composition_is_within_tolerance_of_eager_and_equals_the_single_fp16_graph(tiny):
    model, outcome = tiny["model"], tiny["runs"][Precision.FP16]
    enc, sc = (onnx.load(str(p)) for p in outcome.paths)
    single16 = cpu_session(str(tiny["out"] / "onerank.fp16.onnx"), 1)
    for b, length, n in ((1, 1, 1), (3, 37, 11)):
        feed = request(model.cfg, b, length, n, seed=length)
        feed["hist_item_ids"][0] = feed["hist_action_ids"][0] = 0  # an empty history
        scores = composed_scores(enc, sc, model.cfg, RequestSet(feed, None, "test"))
        assert np.abs(scores - _eager(model, feed)).max() <= DEFAULT_TOLERANCES[Precision.FP16].atol
        (single,) = single16.run(None, feed)
        assert np.abs(scores - single).max() <= 1e-6  # the same fp16 ops, split where the states are
    entry = outcome.entry
    assert entry.single_graph["path"] == "onerank.fp16.onnx" and entry.single_graph["max_abs_diff"] <= 1e-6
    names = {g.name for g in entry.gates}
    assert names >= {"auc_change[click]", "top10_overlap_mean", "max_abs_error", "finite_scores", "structure"}
    checks = [c.name for h in entry.halves for c in h.structure]
    assert "io_contract" in checks and checks.count("custom_op_intact") == 1  # only the scorer has the node
    enc_checks = [c.name for c in entry.halves[0].structure]
    assert "custom_op_intact" not in enc_checks and "scorer_fp16_inputs" not in enc_checks


def test_int8_halves_are_quantized_keep_fp32_states_and_pass(tiny):
    outcome = tiny["runs"][Precision.INT8]
    assert outcome.passed, outcome.summary
    states = state_names(tiny["model"].cfg)
    for path, entry_half in zip(outcome.paths, outcome.entry.halves, strict=True):
        m = onnx.load(str(path))
        ops = {n.op_type for n in m.graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops, path.name
        assert {t for n, t in _io(m).items() if n in states} == {TensorProto.FLOAT}
        assert entry_half.detail["quantized_nodes"] and all(c.passed for c in entry_half.structure)
    assert outcome.entry.state_dtype == "float32" and "skipped" in outcome.entry.single_graph
    # One report for both precisions, beside (not inside) the single graph's calibration.json.
    report = json.loads((tiny["out"] / "reports" / REPORT_NAME).read_text())
    assert set(report["precisions"]) == {"fp16", "int8"} and report["passed"] is True
    assert report["precisions"]["int8"]["states"]["dtype"] == "float32"
    assert set(json.loads((tiny["out"] / "reports" / "calibration.json").read_text())["precisions"]) == {"fp16"}


class SharedInputs:
    """Stands in for the build's CalibrationInputs: hands out the module's small sets, counts the calls."""

    def __init__(self, sets):
        self.sets, self.calls = sets, []

    def get(self, config, settings, data):
        self.calls.append((settings.precision, settings.num_requests, data))
        return self.sets


def _state(tiny, tmp_path, single: dict):
    options = BuildOptions(out=tmp_path / "unused", user_cache=True)
    state = BuildState(options, tmp_path / "ckpt", tmp_path, model=tiny["model"],
                       onnx={Precision.FP32: tiny["single"], **single})
    state.user_cache = UserCacheModels(tiny["encoder"], tiny["scorer"], CacheSettings())
    return state


def test_the_stage_writes_both_halves_hands_them_to_parity_and_lists_them(tiny, tmp_path):
    inputs = SharedInputs(tiny["sets"])
    state = _state(tiny, tmp_path, {Precision.FP16: tiny["out"] / "onerank.fp16.onnx"})
    result = UserCachePrecisionStage("fp16", inputs).run(state)
    assert result.status is Status.OK and result.name == "user cache fp16", result.detail
    assert inputs.calls == [(Precision.FP16, 256, None)]  # the build's shared data, as the precision stage asks
    enc, sc = state.user_cache_variants[Precision.FP16]
    assert result.artifacts == {"onnx_user_encoder_fp16": enc, "onnx_candidate_scorer_fp16": sc,
                                "user_cache_calibration_report": tmp_path / "reports" / REPORT_NAME}
    assert enc == tmp_path / "onnx" / "onerank.user_encoder.fp16.onnx" and enc.is_file() and sc.is_file()
    assert result.metrics["state_dtype"] == "float16" and result.metrics["vs_single_graph"]["max_abs_diff"] <= 1e-6
    assert "float16 states" in result.detail and "\n" not in result.detail


def test_a_failed_gate_writes_no_halves_and_the_stage_names_the_gate(tiny, tmp_path):
    state = _state(tiny, tmp_path, {})  # no single fp16 graph: the comparison is skipped, not failed
    stage = UserCachePrecisionStage("fp16", SharedInputs(tiny["sets"]), gates=AccuracyGates(max_fp16_abs_error=0.0))
    result = stage.run(state)
    assert result.status is Status.FAILED
    assert result.detail.startswith("gate failed: max_abs_error ") and "(gate <= 0)" in result.detail
    assert result.detail.endswith("halves not written")
    assert not list((tmp_path / "onnx").glob("*.onnx")) and state.user_cache_variants == {}
    assert set(result.artifacts) == {"user_cache_calibration_report"}
    entry = json.loads(result.artifacts["user_cache_calibration_report"].read_text())["precisions"]["fp16"]
    assert entry["passed"] is False and entry["gates_config"]["max_fp16_abs_error"] == 0.0
    assert [h["model"]["written"] for h in entry["halves"].values()] == [False, False]
    assert "skipped" in entry["vs_single_graph"] and result.metrics["gates_failed"] == ["max_abs_error"]


def test_a_structure_failure_in_one_half_fails_the_gate_with_its_role(tiny, monkeypatch):
    from onerank_export.calibration import user_cache
    from onerank_export.verdict import Verdict

    real = user_cache.check_fp16

    def broken(model, fp32, plan, io=()):
        out = real(model, fp32, plan, io)
        return [*out, Verdict.check("made_up", False, "a check that fails")] if io and "hist_item_ids" in [
            i.name for i in model.graph.input] else out

    monkeypatch.setattr(user_cache, "check_fp16", broken)
    out = tiny["out"] / "broken"
    outcome = calibrate_halves(tiny["encoder"], tiny["scorer"], tiny["model"], CalibrationSettings("fp16", **SMALL),
                               tiny["sets"], out_dir=out, report_dir=out)
    assert not outcome.passed and outcome.paths is None and not list(out.glob("*.onnx"))
    (structure,) = [g for g in outcome.entry.gates if g.name == "structure"]
    assert structure.detail == "user_encoder.made_up: a check that fails"


def test_parity_runs_the_cached_path_of_every_precision(tiny):
    from onerank_export.parity.cases import default_cases
    from onerank_export.parity.targets import ParityTargets, build_runners, run_parity_suite

    model = tiny["model"]
    halves = {Precision.FP32: (tiny["encoder"], tiny["scorer"]),
              **{p: tiny["runs"][p].paths for p in (Precision.FP16, Precision.INT8)}}
    runners = build_runners(model, ParityTargets(user_cache=halves))
    cached = [(r.name, p) for r, p in runners if r.name.startswith("user-cache")]
    assert cached == [("user-cache-fp32", Precision.FP32), ("user-cache-fp16", Precision.FP16),
                      ("user-cache-int8", Precision.INT8)]
    cases = default_cases(model.cfg, 0)[:3]
    report = run_parity_suite(model, [r for r in runners if r[0].name.startswith("user-cache")], cases)
    assert report.passed, [f.runner for f in report.failures]
    ran = {(c.runner, c.precision) for c in report.cases}
    assert {r for r, _ in ran} == {"user-cache-fp32", "user-cache-fp16", "user-cache-int8"}


def test_verify_pairs_the_halves_per_precision(tiny, tmp_path):
    from onerank_export.errors import ConfigError
    from onerank_export.parity.verify import split_user_cache_halves

    fp16, int8 = tiny["runs"][Precision.FP16].paths, tiny["runs"][Precision.INT8].paths
    files = [tiny["single"], tiny["encoder"], *fp16, tiny["scorer"], int8[1], int8[0]]
    singles, pairs = split_user_cache_halves(files)
    assert singles == [tiny["single"]]
    assert pairs == {Precision.FP32: (tiny["encoder"], tiny["scorer"]), Precision.FP16: fp16, Precision.INT8: int8}
    with pytest.raises(ConfigError, match=r"^--onnx has 1 fp16 user encoder\(s\) and 0 fp16 candidate scorer\(s\)"):
        split_user_cache_halves([tiny["encoder"], tiny["scorer"], fp16[0], int8[1]])
    other = tmp_path / "other.onnx"
    m = onnx.load(str(fp16[1]))
    meta = replace(read_metadata(m), checkpoint_sha256="ef" * 32)
    meta.apply(m)
    onnx.save(m, str(other))
    with pytest.raises(ConfigError, match="come from different checkpoints"):
        split_user_cache_halves([fp16[0], other])


@pytest.mark.slow  # a demo calibration of both halves per precision, plus their export (~1 min on 2 cores)
def test_demo_halves_pass_the_single_graphs_gates_and_match_its_scores(demo_model, demo_fp32_onnx, calibrated,
                                                                       tmp_path):
    enc, sc = tmp_path / "enc.onnx", tmp_path / "sc.onnx"
    export_onnx(demo_model, enc, export_config=USER_ENCODER_ONNX_CONFIG)
    export_onnx(demo_model, sc, export_config=CANDIDATE_SCORER_ONNX_CONFIG)
    sets = prepare_data(demo_model.cfg, CalibrationSettings("fp16"))
    # fp16: the same ops split at the states (measured 0.0); int8: a rounding step here and there where
    # the activation scales differ by ~1e-7 (measured 6.2e-4; docs/user-cache.md#precision-of-the-halves).
    for p, diff in ((Precision.FP16, 1e-6), (Precision.INT8, 2e-3)):
        single = calibrated(p)
        outcome = calibrate_halves(enc, sc, demo_model, CalibrationSettings(p), sets, out_dir=tmp_path,
                                   report_dir=tmp_path, single=single.model_path)
        assert outcome.passed, outcome.summary
        assert [g.name for g in outcome.entry.gates] == [g.name for g in single.entry.gates]
        assert outcome.entry.single_graph["max_abs_diff"] <= diff, p
        # Both judged on the same held-out requests against the same eager scores.
        acc, ref = outcome.entry.accuracy, single.entry.accuracy
        assert abs(acc.max_abs_error - ref.max_abs_error) <= diff and acc.topk_overlap.mean == pytest.approx(
            ref.topk_overlap.mean, abs=1e-3)


@pytest.mark.slow  # a whole tiny `build --user-cache` (three exports, both precisions: ~2 min on 2 cores)
def test_build_with_user_cache_makes_and_checks_the_halves_of_each_precision(tmp_path, capsys):
    from helpers import make_tiny_model

    from onerank_export.cli.main import main
    from onerank_export.model.checkpoint import save_checkpoint

    ckpt = save_checkpoint(make_tiny_model(), tmp_path / "ckpt")
    out = tmp_path / "build"
    code = main(["build", "--checkpoint", str(ckpt), "--out", str(out), "--user-cache", "--no-triton",
                 "--engine", "skip", "--target", "cpu"])
    assert code == 0, capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["name"] for s in manifest["stages"]] == [
        "checkpoint", "export fp32", "user cache", "fp16", "int8", "user cache fp16", "user cache int8", "engine",
        "parity"]
    paths = {a["path"] for a in manifest["artifacts"]}
    assert {f"onnx/onerank.{role}.{p}.onnx" for role in ("user_encoder", "candidate_scorer")
            for p in ("fp32", "fp16", "int8")} <= paths
    assert "reports/user_cache_calibration.json" in paths
    parity = json.loads((out / "reports" / "parity.json").read_text())
    runners = {c["runner"] for c in parity["cases"]}
    assert {"user-cache-fp32", "user-cache-fp16", "user-cache-int8"} <= runners
    stage = next(s for s in manifest["stages"] if s["name"] == "user cache fp16")
    assert stage["metrics"]["state_dtype"] == "float16" and stage["metrics"]["vs_single_graph"]["max_abs_diff"] <= 1e-6
