"""The optimisation profiles of the four engines (single graph, user encoder, candidate scorer, split
dense graph) and
the TensorRT rules they must keep, checked on the CPU against the exported ONNX files; and what
`build_engine` refuses before TensorRT is touched (role, plugin library, profile).

Rules (docs/engine.md, "Engines of the user-state cache"): every input of the network has a
profile and the profile names nothing else; min <= opt <= max (>= 1) on every dynamic axis; a
static axis gets its size; inputs sharing an axis name (batch across the states and the request
tensors, user_len across the states) get one range."""

from __future__ import annotations

import pytest
from helpers import TINY

from onerank_export.config import OneRankConfig
from onerank_export.engine.tensorrt.availability import tensorrt_unavailable_reason
from onerank_export.engine.tensorrt.builder import build_engine, check_build_inputs
from onerank_export.engine.tensorrt.plan_metadata import plan_file_name
from onerank_export.engine.tensorrt.profile import (
    CANDIDATE_SCORER,
    DENSE,
    ROLES,
    SERVING,
    USER_ENCODER,
    check_profile,
    declared_inputs,
    input_names,
    onnx_input_dims,
    onnx_io_dtypes,
    optimization_profile,
)
from onerank_export.errors import StageError
from onerank_export.user_states import ENCODER_INPUTS, SCORER_REQUEST_INPUTS, scorer_input_names, state_names

DEMO = OneRankConfig()  # the demo checkpoint's config


@pytest.mark.parametrize("role", ROLES)
def test_each_role_profile_keeps_the_rules_for_the_demo_config(role):
    profile = optimization_profile(DEMO, role)
    assert check_profile(profile, declared_inputs(DEMO, role)) == []
    assert list(profile) == list(declared_inputs(DEMO, role))


def test_scorer_profile_reads_its_ranges_from_the_serving_config_and_the_anchors():
    s, anchors = DEMO.serving, DEMO.num_anchor_tokens
    profile = optimization_profile(DEMO, CANDIDATE_SCORER)
    assert list(profile) == list(scorer_input_names(DEMO))
    heads, head_dim = DEMO.n_heads, DEMO.d_model // DEMO.n_heads
    batch = (1, s.opt_batch_size, s.max_batch_size)
    user_len = (1 + anchors, s.opt_hist_len + anchors, DEMO.max_hist_len + anchors)
    for name in state_names(DEMO)[1:]:
        assert profile[name] == tuple((b, heads, u, head_dim) for b, u in zip(batch, user_len, strict=True)), name
    assert profile["user_key_mask"] == tuple((b, 1, u, 1) for b, u in zip(batch, user_len, strict=True))
    # the request tensors keep the single graph's ranges: one batch range across states and requests
    serving = optimization_profile(DEMO, SERVING)
    for name in SCORER_REQUEST_INPUTS:
        assert profile[name] == serving[name]
    assert {tuple(shape[0] for shape in shapes) for shapes in profile.values()} == {batch}
    assert optimization_profile(DEMO, USER_ENCODER) == {n: serving[n] for n in ENCODER_INPUTS}


def test_roles_and_inputs_are_the_export_configs():
    from onerank_export.export.onnx_config import (
        CANDIDATE_SCORER_ONNX_CONFIG,
        ONERANK_ONNX_CONFIG,
        SPLIT_DENSE_ONNX_CONFIG,
        USER_ENCODER_ONNX_CONFIG,
    )

    configs = (ONERANK_ONNX_CONFIG, USER_ENCODER_ONNX_CONFIG, CANDIDATE_SCORER_ONNX_CONFIG, SPLIT_DENSE_ONNX_CONFIG)
    assert tuple(c.role for c in configs) == ROLES
    for c in configs:
        assert input_names(DEMO, c.role) == tuple(c.input_names_for(DEMO)), c.role
    with pytest.raises(StageError, match="unknown engine role 'ranker'"):
        input_names(DEMO, "ranker")


def test_declared_inputs_are_the_exported_onnx_inputs(tiny_halves_onnx, tiny_fp32_onnx):
    _, encoder, scorer = tiny_halves_onnx
    for role, path in ((USER_ENCODER, encoder), (CANDIDATE_SCORER, scorer), (SERVING, tiny_fp32_onnx[1])):
        assert onnx_input_dims(path) == declared_inputs(TINY, role), role
        assert check_profile(optimization_profile(TINY, role), onnx_input_dims(path)) == [], role


def test_negative_control_each_rule_is_caught(tiny_halves_onnx):
    inputs = onnx_input_dims(tiny_halves_onnx[2])
    good = optimization_profile(TINY, CANDIDATE_SCORER)

    def problems(**changes):
        profile = {**good, **changes}
        return check_profile({k: v for k, v in profile.items() if v is not None}, inputs)

    (lo, opt, hi) = good["user_key_0"]
    missing = problems(user_value_1=None)
    assert missing == ["input 'user_value_1' has no optimisation profile (TensorRT needs one for every dynamic input)"]
    assert problems(extra=good["user_key_0"]) == ["the profile names 'extra', which is not an input of the network"]
    swapped = problems(user_key_0=(lo, hi, opt))  # opt > max on batch and user_len
    order = [p for p in swapped if "does not hold" in p]
    assert order == ["'user_key_0' axis 0: min 1 <= opt 8 <= max 1 (all >= 1) does not hold",
                     "'user_key_0' axis 2: min 3 <= opt 66 <= max 34 (all >= 1) does not hold"], swapped
    assert problems(cand_item_ids=((0, 1), *good["cand_item_ids"][1:]))[0].startswith(
        "'cand_item_ids' axis 0: min 0 <= opt")
    wider = problems(cand_features=(*good["cand_features"][:2], (hi[0] + 1, *good["cand_features"][2][1:])))
    assert len(wider) == 1 and "('batch')" in wider[0] and "need one range" in wider[0], wider
    longer = problems(user_value_0=(lo, opt, (hi[0], hi[1], hi[2] + 1, hi[3])))
    assert len(longer) == 1 and "('user_len')" in longer[0], longer
    static = problems(user_key_1=tuple((s[0], s[1] + 1, s[2], s[3]) for s in good["user_key_1"]))
    assert static == [f"'user_key_1' axis 1 is static ({TINY.n_heads}) but the profile gives 3/3/3"]
    rank = problems(context_ids=tuple((*s, 1) for s in good["context_ids"]))
    assert len(rank) == 1 and "rank 2" in rank[0]
    # another config's profile against these files: the head counts and sizes differ
    assert any("is static" in p for p in check_profile(optimization_profile(DEMO, CANDIDATE_SCORER), inputs))


@pytest.mark.skipif(tensorrt_unavailable_reason() is None, reason="TensorRT and CUDA are available here")
def test_build_engine_refuses_before_tensorrt(tiny_halves_onnx, tmp_path):
    _, encoder, scorer = tiny_halves_onnx
    plan = tmp_path / "x.plan"

    def refused(onnx, role, plugin, config=TINY):
        with pytest.raises(StageError) as err:
            build_engine(onnx, plan, config, "fp32", plugin_library=plugin, role=role)
        assert "\n" not in str(err.value) and not plan.exists()
        return str(err.value)

    assert refused(scorer, CANDIDATE_SCORER, None) == (
        "onerank.candidate_scorer.fp32.onnx has 1 MatchingScore node(s); a plugin library is needed to build it "
        "(--plugin, or let the engine stage build it)")
    assert refused(encoder, CANDIDATE_SCORER, tmp_path / "lib.so") == (
        "onerank.user_encoder.fp32.onnx is the user_encoder graph, not the candidate_scorer graph; "
        "pass the candidate_scorer ONNX")
    assert refused(scorer, SERVING, tmp_path / "lib.so").startswith("onerank.candidate_scorer.fp32.onnx is the "
                                                                   "candidate_scorer graph, not the serving graph")
    assert "is static" in refused(scorer, CANDIDATE_SCORER, tmp_path / "lib.so", config=DEMO)
    assert "unknown engine role 'ranker'" in refused(scorer, "ranker", None)
    # the encoder needs no plugin: its checks pass, and only the missing TensorRT stops it here
    assert refused(encoder, USER_ENCODER, None).startswith("TensorRT cannot run here: ")


# ----- split mode's dense graph -------------------------------------------------------------------


def test_dense_profile_fits_the_exported_dense_onnx(tiny_dense_onnx):
    path = tiny_dense_onnx[1]
    inputs = onnx_input_dims(path)
    assert inputs == declared_inputs(TINY, DENSE)
    # the row tensors share the ids' axis names and end in a static d_model, as the export declares them
    assert inputs["hist_item_rows"] == ("batch", "hist_len", TINY.d_model)
    assert inputs["cand_item_rows"] == ("batch", "num_candidates", TINY.d_model)
    profile = optimization_profile(TINY, DENSE)
    assert check_profile(profile, inputs) == []
    serving = optimization_profile(TINY, SERVING)
    assert {n: profile[n] for n in serving} == serving  # the contract tensors keep the single graph's ranges
    for row, ids in (("hist_item_rows", "hist_item_ids"), ("cand_item_rows", "cand_item_ids")):
        assert profile[row] == tuple((*shape, TINY.d_model) for shape in serving[ids]), row


def test_dense_profile_negative_controls(tiny_dense_onnx):
    inputs = onnx_input_dims(tiny_dense_onnx[1])
    good = optimization_profile(TINY, DENSE)
    (lo, opt, hi) = good["hist_item_rows"]
    # a row range that is not its ids' range: the shared hist_len axis is reported
    longer = check_profile({**good, "hist_item_rows": (lo, opt, (hi[0], hi[1] + 1, hi[2]))}, inputs)
    assert len(longer) == 1 and "'hist_item_rows' axis 1 ('hist_len')" in longer[0] and "need one range" in longer[0]
    # a wrong d_model: the static axis is reported
    wide = tuple((*s[:2], TINY.d_model * 2) for s in good["cand_item_rows"])
    assert check_profile({**good, "cand_item_rows": wide}, inputs) == [
        f"'cand_item_rows' axis 2 is static ({TINY.d_model}) but the profile gives 32/32/32"]
    # another config's profile (d_model 64) against this file
    assert any("'hist_item_rows' axis 2 is static" in p for p in check_profile(optimization_profile(DEMO, DENSE),
                                                                               inputs))
    # the single graph's profile lacks the rows
    missing = check_profile(optimization_profile(TINY, SERVING), inputs)
    why = "has no optimisation profile (TensorRT needs one for every dynamic input)"
    assert missing == [f"input 'cand_item_rows' {why}", f"input 'hist_item_rows' {why}"]


def test_dense_build_inputs_need_the_plugin_and_the_dense_graph(tiny_dense_onnx, tiny_fp32_onnx, tmp_path):
    dense, lib = tiny_dense_onnx[1], tmp_path / "lib.so"
    assert check_build_inputs(dense, DENSE, lib) == 1  # one MatchingScore node: built with the plugin library
    with pytest.raises(StageError) as err:
        check_build_inputs(dense, DENSE, None)
    assert str(err.value) == ("onerank.dense.fp32.onnx has 1 MatchingScore node(s); a plugin library is needed to "
                              "build it (--plugin, or let the engine stage build it)")
    with pytest.raises(StageError, match="is the dense graph, not the serving graph; pass the serving ONNX"):
        check_build_inputs(dense, SERVING, lib)
    with pytest.raises(StageError, match="is the serving graph, not the dense graph; pass the dense ONNX"):
        check_build_inputs(tiny_fp32_onnx[1], DENSE, lib)
    assert [plan_file_name(p, DENSE) for p in ("fp32", "fp16", "int8")] == [
        "onerank.dense.fp32.plan", "onerank.dense.fp16.plan", "onerank.dense.int8.plan"]
    # what the plan metadata records as the engine's I/O types (the gpu repository's configs read them)
    assert onnx_io_dtypes(dense) == {"hist_item_ids": "int64", "hist_action_ids": "int64", "context_ids": "int64",
                                     "cand_item_ids": "int64", "cand_features": "float32",
                                     "hist_item_rows": "float32", "cand_item_rows": "float32", "scores": "float32"}


@pytest.mark.skipif(tensorrt_unavailable_reason() is None, reason="TensorRT and CUDA are available here")
def test_build_engine_of_the_dense_graph_refuses_before_tensorrt(tiny_dense_onnx, tmp_path):
    plan = tmp_path / plan_file_name("fp32", DENSE)

    def refused(config):
        with pytest.raises(StageError) as err:
            build_engine(tiny_dense_onnx[1], plan, config, "fp32", plugin_library=tmp_path / "lib.so", role=DENSE)
        assert "\n" not in str(err.value) and not plan.exists()
        return str(err.value)

    assert refused(DEMO) == ("onerank.dense.fp32.onnx: 'hist_item_rows' axis 2 is static (16) but the profile gives "
                             "64/64/64 (+1 more); re-export the ONNX with this version")  # another d_model
    assert refused(TINY).startswith("TensorRT cannot run here: ")  # every check passed; only TensorRT is missing
