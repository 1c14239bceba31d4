"""The contract checker: each rule fires on the right tensor and element, in a fixed order, and each
caller (request validator, calibration data reader, parity case builder) words it its own way."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
from helpers import TINY
from hypothesis import given, settings
from hypothesis import strategies as st

from onerank_export import spec
from onerank_export.calibration.data_files import LABELS_SPEC, validate_arrays
from onerank_export.errors import DataError, RequestError
from onerank_export.parity.cases import shape_case
from onerank_export.spec import ContractViolation, Violation, check_arrays, random_request

B, L, N = 3, 9, 7
V = Violation


def ok(seed: int = 0) -> dict[str, np.ndarray]:
    return random_request(TINY, np.random.default_rng(seed), B, L, N)


def changed(**arrays) -> dict[str, np.ndarray]:
    feed = ok()
    for name, value in arrays.items():
        if value is None:
            del feed[name]
        else:
            feed[name] = value(feed[name]) if callable(value) else value
    return feed


def put(index, value):
    """An array transform: a copy with one element set."""
    def apply(arr):
        arr = arr.copy()
        arr[index] = value
        return arr
    return apply


F, VOCAB = TINY.num_cand_features, TINY.item_vocab_size
RULES = {  # name: (feed, max_batch, the violation the checker must report)
    "missing": (changed(context_ids=None), None, ContractViolation(V.MISSING, "context_ids")),
    "unknown": ({**ok(), "zz": np.zeros(1), "extra": np.zeros(1)}, None, ContractViolation(V.UNKNOWN, "extra")),
    "not-array": (changed(hist_action_ids=lambda a: a.tolist()), None,
                  ContractViolation(V.NOT_ARRAY, "hist_action_ids", found="list")),
    "dtype": (changed(cand_item_ids=lambda a: a.astype(np.int32)), None,
              ContractViolation(V.DTYPE, "cand_item_ids", found="int32", expected="int64")),
    "rank": (changed(context_ids=lambda a: a[:, None, :]), None,
             ContractViolation(V.RANK, "context_ids", shape=(B, 1, 4), expected=("batch", "num_context_fields"))),
    "rank-scalar": (changed(cand_features=np.array(0.5, np.float32)), None,
                    ContractViolation(V.RANK, "cand_features", shape=(),
                                      expected=("batch", "num_candidates", "num_cand_features"))),
    "static-axis": (changed(cand_features=lambda a: a[..., :5]), None,
                    ContractViolation(V.STATIC_AXIS, "cand_features", axis="num_cand_features", size=5, expected=F)),
    "disagree-hist": (changed(hist_action_ids=lambda a: a[:, 1:]), None,
                      ContractViolation(V.DISAGREE, "hist_action_ids", axis="hist_len", size=L - 1, expected=L,
                                        other_tensor="hist_item_ids")),
    "disagree-batch": (changed(cand_features=lambda a: a[:2]), None,
                       ContractViolation(V.DISAGREE, "cand_features", axis="batch", size=2, expected=B,
                                         other_tensor="hist_item_ids")),
    "range-candidates": (random_request(TINY, np.random.default_rng(1), 1, 4, TINY.max_candidates + 1), None,
                         ContractViolation(V.RANGE, "cand_item_ids", axis="num_candidates",
                                           size=TINY.max_candidates + 1, expected=(1, TINY.max_candidates))),
    "range-history-empty": (changed(hist_item_ids=lambda a: a[:, :0], hist_action_ids=lambda a: a[:, :0]), None,
                            ContractViolation(V.RANGE, "hist_item_ids", axis="hist_len", size=0,
                                              expected=(1, TINY.max_hist_len))),
    "batch-limit": (ok(), B - 1,
                    ContractViolation(V.RANGE, "hist_item_ids", axis="batch", size=B, expected=(1, B - 1))),
    "vocab": (changed(cand_item_ids=put((1, 4), VOCAB)), None,
              ContractViolation(V.VOCAB, "cand_item_ids", expected=VOCAB, index=(1, 4), value=VOCAB,
                                vocab_field="item_vocab_size")),
    "vocab-negative": (changed(context_ids=put((2, 3), -1)), None,
                       ContractViolation(V.VOCAB, "context_ids", expected=TINY.context_vocab_size, index=(2, 3),
                                         value=-1, vocab_field="context_vocab_size")),
    "nan": (changed(cand_features=put((2, 1, 6), np.nan)), None,
            ContractViolation(V.NOT_FINITE, "cand_features", index=(2, 1, 6), value=float("nan"))),
}


@pytest.mark.parametrize("rule", RULES)
def test_each_rule_names_the_tensor_and_the_element(rule):
    feed, max_batch, want = RULES[rule]
    got = check_arrays(TINY, feed, max_batch=max_batch)
    assert got is not None
    if want.kind is V.NOT_FINITE:  # nan != nan: compare the value on its own
        assert np.isnan(got.value)
        got, want = replace(got, value=None), replace(want, value=None)
    assert got == want


def test_a_valid_request_passes_and_resolves_its_sizes():
    feed = ok()
    assert check_arrays(TINY, feed) is None
    assert check_arrays(TINY, feed, max_batch=B) is None  # the limit is inclusive
    assert spec.validate_request(TINY, feed) == {"batch": B, "hist_len": L, "num_candidates": N}


def test_row_position_and_infinity():
    got = check_arrays(TINY, changed(cand_features=put((1, 3, 2), -np.inf)))
    assert (got.kind, got.row, got.position, got.value) == (V.NOT_FINITE, 1, [3, 2], -np.inf)


def test_first_offending_element_in_c_order():
    feed = changed(hist_item_ids=put((2, 0), -5))
    feed["hist_item_ids"][0, 8] = VOCAB  # earlier row, later column: this one is first
    assert check_arrays(TINY, feed).index == (0, 8)


@pytest.mark.parametrize(("breaks", "first"), [
    ({"context_ids": None, "zz": np.zeros(1)}, V.MISSING),  # names before anything else
    ({"cand_features": lambda a: a.astype(np.float64), "hist_item_ids": lambda a: a[:, :, None]}, V.RANK),
    ({"hist_item_ids": put((0, 0), -1), "cand_features": lambda a: a[..., :3]}, V.STATIC_AXIS),  # layout < values
    ({"cand_item_ids": put((0, 0), -1), "hist_item_ids": lambda a: a[:, :0],
      "hist_action_ids": lambda a: a[:, :0]}, V.RANGE),  # ranges before values
    ({"cand_features": put((0, 0, 0), np.nan), "context_ids": put((0, 0), 10**6)}, V.VOCAB),  # contract order
])
def test_the_first_problem_in_the_documented_order_wins(breaks, first):
    assert check_arrays(TINY, changed(**breaks)).kind is first


def test_extra_tensors_are_optional_and_checked_like_inputs():
    labels = np.zeros((B, N, TINY.num_tasks), np.float32)
    assert check_arrays(TINY, ok(), extra=(LABELS_SPEC,)) is None
    assert check_arrays(TINY, {**ok(), "labels": labels}, extra=(LABELS_SPEC,)) is None
    assert check_arrays(TINY, {**ok(), "labels": labels}) == ContractViolation(V.UNKNOWN, "labels")
    got = check_arrays(TINY, {**ok(), "labels": labels[:, :4]}, extra=(LABELS_SPEC,))
    assert got == ContractViolation(V.DISAGREE, "labels", axis="num_candidates", size=4, expected=N,
                                    other_tensor="cand_item_ids")
    labels[1, 2, 0] = np.inf
    got = check_arrays(TINY, {**ok(), "labels": labels}, extra=(LABELS_SPEC,))
    assert (got.kind, got.tensor, got.index) == (V.NOT_FINITE, "labels", (1, 2, 0))


def test_names_and_dims_alone():
    assert spec.check_names(spec.INPUT_NAMES) is None
    assert spec.check_names(["hist_item_ids"]).tensor == "hist_action_ids"
    assert spec.check_dims(TINY, {"batch": 10**9, "hist_len": 1, "num_candidates": 1}) is None  # no batch limit
    assert spec.check_dims(TINY, {"batch": 1, "hist_len": 65}) == ContractViolation(
        V.RANGE, None, axis="hist_len", size=65, expected=(1, 64))


@settings(max_examples=40, deadline=None)
@given(batch=st.integers(1, TINY.serving.max_batch_size), hist_len=st.integers(1, TINY.max_hist_len),
       num_candidates=st.integers(1, TINY.max_candidates), full=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_every_random_request_follows_the_contract(batch, hist_len, num_candidates, full, seed):
    feed = random_request(TINY, np.random.default_rng(seed), batch, hist_len, num_candidates, full=full)
    assert check_arrays(TINY, feed, max_batch=TINY.serving.max_batch_size) is None
    assert spec.dynamic_sizes(feed) == {"batch": batch, "hist_len": hist_len, "num_candidates": num_candidates}


# ----- each caller's wording -------------------------------------------------------------------

NAMES = "hist_item_ids, hist_action_ids, context_ids, cand_item_ids, cand_features"
# rule: (the request validator's line, the data file reader's line); None where the rule cannot
# fire for that caller (a file has no batch limit).
WORDING = {
    "missing": (f"request: missing input 'context_ids' (inputs are {NAMES})",
                f"f.npz: missing tensor 'context_ids' (a request file holds {NAMES} and optionally 'labels')"),
    "unknown": (f"request: unknown input 'extra' (inputs are {NAMES})",
                f"f.npz: unknown tensor 'extra' (known: {NAMES}, labels)"),
    "not-array": ("request: input 'hist_action_ids' must be a numpy array, got list",
                  "f.npz: tensor 'hist_action_ids' is a list, not a numpy array"),
    "dtype": ("request: input 'cand_item_ids' has dtype int32, expected int64 (convert with .astype(np.int64))",
              "f.npz: tensor 'cand_item_ids' has dtype int32, expected int64 (store it with .astype(np.int64))"),
    "rank": ("request: input 'context_ids' has rank 3 (shape [3, 1, 4]), expected rank 2 [batch, num_context_fields]",
             "f.npz: tensor 'context_ids' has shape [3, 1, 4], expected rank 2 [batch, num_context_fields]"),
    "rank-scalar": ("request: input 'cand_features' has rank 0 (shape []), expected rank 3 "
                    "[batch, num_candidates, num_cand_features]",
                    "f.npz: tensor 'cand_features' has shape [], expected rank 3 "
                    "[batch, num_candidates, num_cand_features]"),
    "static-axis": ("request: input 'cand_features' axis num_cand_features is 5, the model expects 8",
                    "f.npz: tensor 'cand_features' has num_cand_features=5, the model expects 8"),
    "disagree-hist": ("request: input 'hist_action_ids' has hist_len=8 but another input has hist_len=9; "
                      "all inputs of a request must agree",
                      "f.npz: tensor 'hist_action_ids' has hist_len=8 but 'hist_item_ids' has 9; "
                      "all tensors of a file must agree"),
    "disagree-batch": ("request: input 'cand_features' has batch=2 but another input has batch=3; "
                       "all inputs of a request must agree",
                       "f.npz: tensor 'cand_features' has batch=2 but 'hist_item_ids' has 3; "
                       "all tensors of a file must agree"),
    "range-candidates": ("request: num_candidates=65 is outside the model's range [1, 64] "
                         "(config max for num_candidates)",
                         "f.npz: tensor 'cand_item_ids' has num_candidates=65, outside the model's range [1, 64]"),
    "range-history-empty": ("request: hist_len=0 is outside the model's range [1, 64] (config max for hist_len)",
                            "f.npz: tensor 'hist_item_ids' has hist_len=0, outside the model's range [1, 64]"),
    "batch-limit": ("request: batch=3 is outside the model's range [1, 2]", None),
    "vocab": ("request: cand_item_ids[1, 4] = 300 is outside [0, 300) (item_vocab_size); "
              "map unknown ids to a valid bucket upstream",
              "f.npz: tensor 'cand_item_ids' row 1: id 300 at position [4] is outside [0, 300) (item_vocab_size); "
              "map unknown ids to a valid bucket upstream"),
    "vocab-negative": ("request: context_ids[2, 3] = -1 is outside [0, 128) (context_vocab_size); "
                       "map unknown ids to a valid bucket upstream",
                       "f.npz: tensor 'context_ids' row 2: id -1 at position [3] is outside [0, 128) "
                       "(context_vocab_size); map unknown ids to a valid bucket upstream"),
    "nan": ("request: cand_features[2, 1, 6] is nan; features must be finite",
            "f.npz: tensor 'cand_features' row 2: nan at position [1, 6]; values must be finite"),
}


def test_every_rule_has_both_wordings():
    assert set(WORDING) == set(RULES) and {v.kind for _, _, v in RULES.values()} == set(Violation)


@pytest.mark.parametrize("rule", WORDING)
def test_request_and_data_file_wording(rule):
    feed, max_batch, _ = RULES[rule]
    request, data_file = WORDING[rule]
    with pytest.raises(RequestError) as err:
        spec.validate_request(TINY, feed, max_batch=max_batch)
    assert str(err.value) == request
    if data_file is None:
        validate_arrays(feed, TINY, "f.npz")  # files have no batch limit
    else:
        with pytest.raises(DataError) as err:
            validate_arrays(feed, TINY, "f.npz")
        assert str(err.value) == data_file


def test_request_wording_names_where():
    with pytest.raises(RequestError, match=r"^client: batch=3 is outside the model's range \[1, 2\]$"):
        spec.validate_request(TINY, ok(), max_batch=2, where="client")


def test_data_file_wording_for_labels_and_empty_files():
    labels = np.zeros((B, N, TINY.num_tasks), np.float32)
    cases = {
        "f.npz: tensor 'labels' has dtype float64, expected float32 (0/1 per task)": labels.astype(np.float64),
        "f.npz: tensor 'labels' has num_tasks=2, the model expects 3": labels[..., :2],
        "f.npz: tensor 'labels' row 0: value 0.5 at position [1, 2] is not 0 or 1": put((0, 1, 2), 0.5)(labels),
    }
    for message, bad in cases.items():
        with pytest.raises(DataError) as err:
            validate_arrays({**ok(), "labels": bad}, TINY, "f.npz")
        assert str(err.value) == message
    features, got = validate_arrays({**ok(), "labels": labels}, TINY, "f.npz")
    assert got is labels and set(features) == set(spec.INPUT_NAMES)
    with pytest.raises(DataError, match=r"f\.npz: holds no requests \(tensor 'hist_item_ids' has 0 rows\)"):
        validate_arrays({k: v[:0] for k, v in ok().items()}, TINY, "f.npz")


@pytest.mark.parametrize(("shape", "message"), [
    ((1, 65, 3), "parity shape: hist_len=65 is outside the model's range [1, 64] (config max_hist_len)"),
    ((1, 3, 0), "parity shape: num_candidates=0 is outside the model's range [1, 64] (config max_candidates)"),
    ((0, 3, 3), "parity shape: batch=0 must be >= 1"),
])
def test_parity_shape_wording(shape, message):
    with pytest.raises(RequestError) as err:
        shape_case(TINY, *shape)
    assert str(err.value) == message


def test_parity_cases_follow_the_contract_and_batch_is_unbounded():
    case = shape_case(TINY, TINY.serving.max_batch_size + 1, 5, 6)  # a runner with a batch limit judges B
    assert case.shape == {"batch": TINY.serving.max_batch_size + 1, "hist_len": 5, "num_candidates": 6}
    assert check_arrays(TINY, case.feed) is None


def test_the_contract_module_does_not_import_torch():
    code = "import sys, onerank_export.spec; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
