"""Run once, compare many times: kept outputs are rejudged with other tolerances without a runner."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import Missing, make_tiny_model

from onerank_export.errors import ConfigError
from onerank_export.parity.cases import default_cases, invariance_case
from onerank_export.parity.invariance import CHECKS
from onerank_export.parity.results import RunResults
from onerank_export.parity.runner import Runner
from onerank_export.parity.runners import EagerDenseRunner, EagerServingRunner
from onerank_export.parity.suite import compare_runs, run_parity
from onerank_export.precision import Precision, Tolerance
from onerank_export.verdict import Outcome


class Counting(Runner):
    """Counts inferences, and adds a small offset to the real candidates' scores."""

    def __init__(self, inner: Runner, offset: float = 0.0) -> None:
        super().__init__(inner.name)
        self.inner, self.offset, self.calls = inner, offset, 0

    def activate_impl(self):
        self.inner.activate()

    def infer_impl(self, feed):
        self.calls += 1
        scores = self.inner.infer(feed)["scores"].copy()
        scores[feed["cand_item_ids"] != 0] += self.offset  # real candidates only: padding stays exactly 0
        return {"scores": scores}


@pytest.fixture(scope="module")
def run():
    model = make_tiny_model(seed=2)
    cfg = model.cfg
    reference = Counting(EagerDenseRunner(model))
    target = Counting(EagerServingRunner(model), offset=4e-6)
    report = run_parity(reference, [(target, "fp32"), (Missing("tensorrt-fp16"), Precision.FP16)],
                        default_cases(cfg), invariance_case=invariance_case(cfg, 0))
    return report, reference, target


def test_the_run_keeps_every_output_of_every_case_and_invariance_request(run):
    report, reference, target = run
    results = report.run_results
    assert results is not None and results.reference.name == reference.name
    cases = list(results.cases)
    assert cases == [c.name for c in default_cases(make_tiny_model(seed=2).cfg)]
    served, missing = results.targets
    assert served.precision is Precision.FP32 and set(served.cases) == set(cases)
    assert set(served.invariance) == {"base", *CHECKS}
    assert missing.skip_reason == "no CUDA device" and not missing.cases and not missing.invariance
    # One inference per case and per invariance request (base + 3 derived), on each runner that ran.
    assert reference.calls == target.calls == len(cases) + 4


def test_recompare_with_a_tighter_tolerance_fails_without_inferring_again(run):
    report, reference, target = run
    assert report.passed  # 4e-6 is inside the fp32 default (1e-5)
    calls = reference.calls, target.calls
    strict = compare_runs(report.run_results, {Precision.FP32: Tolerance(atol=1e-6)})
    assert (reference.calls, target.calls) == calls  # judged from the kept outputs only
    assert not strict.passed and strict.tolerances[Precision.FP32].atol == 1e-6
    failed = [c for c in strict.cases if c.status is Outcome.FAILED]
    assert failed and all(c.runner == target.name for c in failed)
    assert all(3.9e-6 < c.outputs[0].required_atol < 4.2e-6 for c in failed)
    # The unavailable runner stays skipped with its reason whatever the tolerances.
    skipped = [c for c in strict.cases if c.runner == "tensorrt-fp16"]
    assert skipped and all(c.status is Outcome.SKIPPED and c.reason == "no CUDA device" for c in skipped)
    # Same tolerances, same verdicts: comparing is a pure function of the outputs.
    assert json.dumps(compare_runs(report.run_results).to_dict()) == json.dumps(report.to_dict())


def test_saved_results_load_and_compare_to_the_same_report_without_pickle(run, tmp_path):
    report, _, _ = run
    path = report.run_results.save(tmp_path / "run.npz")
    assert path == tmp_path / "run.npz" and sorted(p.name for p in tmp_path.iterdir()) == ["run.npz"]
    with np.load(path, allow_pickle=False) as data:  # every entry loads without pickle
        assert all(data[k].dtype != object for k in data.files)
    loaded = RunResults.load(path)
    assert [r.name for r in loaded.runners] == [r.name for r in report.run_results.runners]
    assert loaded.targets[1].skip_reason == "no CUDA device"
    assert json.dumps(compare_runs(loaded).to_dict()) == json.dumps(report.to_dict())
    assert not compare_runs(loaded, {"fp32": Tolerance(atol=1e-6)}).passed


def test_a_file_that_is_not_saved_results_is_a_one_line_error(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not an npz")
    with pytest.raises(ConfigError, match="not saved parity run results") as exc:
        RunResults.load(bad)
    assert "\n" not in str(exc.value)
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ConfigError, match=r"other\.npz"):
        RunResults.load(tmp_path / "other.npz")
