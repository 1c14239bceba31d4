"""The python-backend model's execute(): requests of one shape run as one ONNX Runtime call, each
answer is its own request's rows, and a bad request gets its own error without failing the others.
Triton's stub module is stood in for (tests/test_architecture.py runs the real file end to end)."""

from __future__ import annotations

import importlib.util
import sys
import types

import numpy as np
import pytest
from helpers import FAKE_PB_UTILS, TINY, request

from onerank_export.serving import repository


class RecordingSession:
    """Scores each row from its own inputs, so a row answered for the wrong request shows."""

    def __init__(self):
        self.batches = []

    def run(self, outputs, feed):
        self.batches.append(feed["cand_item_ids"].shape[0])
        per_row = feed["cand_features"].sum(axis=(1, 2)) + feed["hist_item_ids"].sum(axis=1)
        n, k = feed["cand_item_ids"].shape[1], TINY.num_tasks
        return [np.broadcast_to(per_row[:, None, None], (len(per_row), n, k)).astype(np.float32)]


@pytest.fixture
def served(monkeypatch):
    stub = types.ModuleType("triton_python_backend_utils")
    exec(FAKE_PB_UTILS, stub.__dict__)  # the same stand-in tests/test_architecture.py gives the real file
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", stub)
    spec_ = importlib.util.spec_from_file_location("served_model", repository.PYTHON_MODEL_SOURCE)
    module = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(module)
    model = module.TritonPythonModel()
    model.config, model.max_batch, model.session = TINY, TINY.serving.max_batch_size, RecordingSession()
    model.cached = None  # initialize() sets it for a --user-cache model
    return model


def test_requests_of_one_shape_run_together_and_keep_their_own_rows(served):
    same = [request(TINY, b, 9, 5, seed=i) for i, b in enumerate((1, 2, 1))]
    other = request(TINY, 1, 4, 7, seed=9)
    bad = {**request(TINY, 1, 9, 5, seed=10)}
    bad["cand_item_ids"] = np.full_like(bad["cand_item_ids"], TINY.item_vocab_size)
    responses = served.execute([same[0], other, bad, same[1], same[2]])
    assert sorted(served.session.batches) == [1, 4]  # the three 9x5 requests (4 rows) in one call
    for feed, response in zip([same[0], other, same[1], same[2]], [responses[i] for i in (0, 1, 3, 4)],
                              strict=True):
        assert response.error is None
        (scores,) = response.output_tensors
        expected = RecordingSession().run(None, feed)[0]
        np.testing.assert_array_equal(scores.as_numpy(), expected)
    assert responses[2].error is not None and responses[2].error.code == 3  # INVALID_ARG
    assert "item_vocab_size" in str(responses[2].error) and "\n" not in str(responses[2].error)


def test_a_runtime_failure_answers_only_the_request_that_caused_it(served):
    poison = request(TINY, 1, 9, 5, seed=1)
    poison["cand_features"][0, 0, 0] = 123.0  # the stand-in session fails on this request only

    class Failing(RecordingSession):
        def run(self, outputs, feed):
            if (feed["cand_features"] == 123.0).any():
                raise RuntimeError("ORT said no")
            return super().run(outputs, feed)

    served.session = Failing()
    responses = served.execute([request(TINY, 1, 9, 5, seed=2), poison, request(TINY, 1, 4, 7, seed=3)])
    assert "RuntimeError: ORT said no" in str(responses[1].error)
    assert responses[0].error is None and responses[2].error is None  # stacked with it, still answered
