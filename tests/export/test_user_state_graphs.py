"""The user encoder and the candidate scorer: the serving graph cut where the user side ends.

scorer(encoder(x)) must be the single serving graph's function exactly (same code), in eager
PyTorch and in the exported ONNX, including padded and empty histories."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
import pytest
import torch
from helpers import make_tiny_model, request

from onerank_export import spec
from onerank_export.export.custom_op import MATCHING_SCORE
from onerank_export.export.metadata import GRAPH_KEY, read_metadata
from onerank_export.export.onnx_config import CANDIDATE_SCORER_ONNX_CONFIG, USER_ENCODER_ONNX_CONFIG
from onerank_export.export.onnx_export import export_onnx
from onerank_export.export.ort_session import cpu_session
from onerank_export.export.serving_graph import CandidateScorerGraph, ServingGraph, UserEncoderGraph
from onerank_export.user_states import (
    ENCODER_INPUTS,
    SCORER_REQUEST_INPUTS,
    scorer_input_names,
    state_names,
    state_nbytes_per_row,
    state_specs,
)

SHAPES = [(1, 1, 1), (2, 11, 7), (3, 37, 29)]


def _torch(feed):
    return {k: torch.from_numpy(v) for k, v in feed.items()}


def _with_empty_history(feed, row=0):
    feed = {k: v.copy() for k, v in feed.items()}
    feed["hist_item_ids"][row] = 0
    feed["hist_action_ids"][row] = 0
    return feed


@pytest.mark.parametrize(("b", "length", "n"), SHAPES)
def test_scorer_of_encoder_is_the_single_graph_in_eager(b, length, n):
    model = make_tiny_model(seed=b + n).eval()
    feed = _with_empty_history(request(model.cfg, b, length, n, seed=length))
    serving = ServingGraph(model)
    with torch.no_grad():
        t = _torch(feed)
        single = serving(**t)
        states = UserEncoderGraph(serving)(t["hist_item_ids"], t["hist_action_ids"])
        split = CandidateScorerGraph(serving)(*states, t["context_ids"], t["cand_item_ids"], t["cand_features"])
        dense = model(**t).scores
    assert torch.equal(split, single)  # the same code in the same order: bit-identical
    assert (split - dense).abs().max() <= 1e-6
    assert [tuple(s.shape) for s in states] == [s.shape(model.cfg, b, length) for s in state_specs(model.cfg)]


def test_states_depend_on_the_history_only():
    model = make_tiny_model(seed=5).eval()
    a, b = request(model.cfg, 2, 9, 4, seed=1), request(model.cfg, 2, 9, 6, seed=2)
    encoder = UserEncoderGraph(ServingGraph(model))
    with torch.no_grad():
        sa = encoder(*(torch.from_numpy(a[k]) for k in ENCODER_INPUTS))
        b.update({k: a[k] for k in ENCODER_INPUTS})
        sb = encoder(*(torch.from_numpy(b[k]) for k in ENCODER_INPUTS))
    assert all(torch.equal(x, y) for x, y in zip(sa, sb, strict=True))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = make_tiny_model(seed=3).eval()
    out = tmp_path_factory.mktemp("halves")
    paths = {"single": out / "single.onnx", "encoder": out / "encoder.onnx", "scorer": out / "scorer.onnx"}
    export_onnx(model, paths["single"], checkpoint_sha256="ab" * 32)
    export_onnx(model, paths["encoder"], checkpoint_sha256="ab" * 32, export_config=USER_ENCODER_ONNX_CONFIG)
    export_onnx(model, paths["scorer"], checkpoint_sha256="ab" * 32, export_config=CANDIDATE_SCORER_ONNX_CONFIG)
    return model, paths


@pytest.mark.slow  # three ONNX exports (~20 s on 2 cores)
def test_exported_halves_have_the_state_interface(exported):
    model, paths = exported
    enc, sc = onnx.load(str(paths["encoder"])), onnx.load(str(paths["scorer"]))
    assert [i.name for i in enc.graph.input] == list(ENCODER_INPUTS)
    assert [o.name for o in enc.graph.output] == list(state_names(model.cfg))
    assert [i.name for i in sc.graph.input] == list(scorer_input_names(model.cfg))
    assert [o.name for o in sc.graph.output] == list(spec.OUTPUT_NAMES)
    assert not [n for n in enc.graph.node if n.domain == MATCHING_SCORE.domain]
    assert not enc.functions and MATCHING_SCORE.domain not in {o.domain for o in enc.opset_import}
    assert [n.op_type for n in sc.graph.node if n.domain == MATCHING_SCORE.domain] == [MATCHING_SCORE.op_type]
    assert read_metadata(enc).other[GRAPH_KEY] == "user_encoder"
    assert read_metadata(sc).other[GRAPH_KEY] == "candidate_scorer"
    assert GRAPH_KEY not in read_metadata(onnx.load(str(paths["single"]))).other
    assert read_metadata(enc).checkpoint_sha256 == "ab" * 32
    # batch and user_len are dynamic in every state tensor
    for value in enc.graph.output:
        dims = value.type.tensor_type.shape.dim
        assert dims[0].dim_param and dims[2].dim_param, value.name


@pytest.mark.slow
@pytest.mark.parametrize(("b", "length", "n"), [*SHAPES, (2, 40, 3)])
def test_exported_halves_compose_to_the_single_graph_in_onnxruntime(exported, b, length, n):
    model, paths = exported
    single, enc, sc = (cpu_session(str(paths[k]), 1) for k in ("single", "encoder", "scorer"))
    feed = _with_empty_history(request(model.cfg, b, length, n, seed=b * length))
    states = enc.run(None, {k: feed[k] for k in ENCODER_INPUTS})
    for state, s in zip(states, state_specs(model.cfg), strict=True):
        assert state.shape == s.shape(model.cfg, b, length) and state.dtype == np.float32
    scores = sc.run(None, {**dict(zip(state_names(model.cfg), states, strict=True)),
                           **{k: feed[k] for k in SCORER_REQUEST_INPUTS}})[0]
    (reference,) = single.run(None, feed)
    with torch.no_grad():
        eager = model(**_torch(feed)).scores.numpy()
    assert np.abs(scores - reference).max() <= 1e-6
    assert np.abs(scores - eager).max() <= 1e-6
    assert np.all(scores[0][feed["cand_item_ids"][0] == 0] == 0)


@pytest.mark.slow  # three ONNX exports (~20 s on 2 cores)
def test_halves_export_byte_identically(exported, tmp_path):
    model, paths = exported
    for name, config in (("encoder", USER_ENCODER_ONNX_CONFIG), ("scorer", CANDIDATE_SCORER_ONNX_CONFIG)):
        again = tmp_path / f"{name}.onnx"
        export_onnx(model, again, checkpoint_sha256="ab" * 32, export_config=config)
        assert hashlib.sha256(again.read_bytes()).digest() == hashlib.sha256(paths[name].read_bytes()).digest()


@pytest.mark.slow  # three ONNX exports (~20 s on 2 cores)
def test_state_bytes_per_row_is_the_sizing_rule(exported):
    model, paths = exported
    enc = cpu_session(str(paths["encoder"]), 1)
    feed = request(model.cfg, 1, 23, 2, seed=0)
    states = enc.run(None, {k: feed[k] for k in ENCODER_INPUTS})
    assert sum(s.nbytes for s in states) == state_nbytes_per_row(model.cfg, 23)
