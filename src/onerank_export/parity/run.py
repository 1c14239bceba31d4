"""The run half of the parity suite: activate each runner, infer every request, keep the outputs.

Nothing is judged here (`suite.compare_runs` does that), so what a slow or remote backend
produced can be compared again with other tolerances. An unavailable backend is recorded with
its reason (reported as skipped, never passed); any other error propagates.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from onerank_export.host import release_freed_memory
from onerank_export.parity.cases import ParityCase
from onerank_export.parity.invariance import InvarianceSetup
from onerank_export.parity.results import RunnerOutputs, RunResults
from onerank_export.parity.runner import Runner, RunnerUnavailable
from onerank_export.precision import Precision

ProgressFn = Callable[[str], None]


def run_runners(reference: Runner, targets: Sequence[tuple[Runner, Precision | str]], cases: Sequence[ParityCase],
                *, invariance_case: ParityCase | None = None, progress: ProgressFn | None = None) -> RunResults:
    """Infer `cases` (and the invariance requests of `invariance_case`) on the reference and each target.

    The reference must be available: without it there is nothing to compare with."""
    note = progress or (lambda _msg: None)
    setup = InvarianceSetup.for_case(invariance_case) if invariance_case is not None else None
    invariance_feeds = setup.feeds(invariance_case) if setup is not None else {}
    results = RunResults(RunnerOutputs(reference.name, Precision.FP32), cases={c.name: c.shape for c in cases},
                         invariance=setup)
    with reference:
        results.reference.cases = {c.name: reference.infer(c.feed) for c in cases}
        results.reference.invariance = {k: reference.infer(f) for k, f in invariance_feeds.items()}
    for runner, precision in targets:
        run = RunnerOutputs(runner.name, Precision(precision))
        results.targets.append(run)
        try:
            runner.activate()
        except RunnerUnavailable as exc:
            run.skip_reason = str(exc)
            note(f"{runner.name}: skipped: {exc}")
            continue
        # Runners that choose an execution provider (ONNX Runtime) say which one ran; others have none.
        run.provider = getattr(runner, "provider", None)
        try:
            for c in cases:
                note(f"{runner.name} [{run.precision}] {c.name}")
                run.cases[c.name] = runner.infer(c.feed)
            run.invariance = {k: runner.infer(f) for k, f in invariance_feeds.items()}
        finally:
            runner.deactivate()
            release_freed_memory(collect=False)  # each runner's sessions and outputs gone before the next one's
    return results
