"""Raw outputs of a parity run, kept apart from their judgement (Polygraphy's RunResults).

A run infers every case and invariance request on every runner once; comparing is a pure
function of these outputs and the tolerances (`suite.compare_runs`), so a report can be judged
again with other tolerances without a GPU, a server or a model. `save` / `load` keep a run in
one .npz (arrays, plus the layout as JSON text: no pickle anywhere).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onerank_export.errors import ConfigError
from onerank_export.io import atomic_path
from onerank_export.parity.invariance import InvarianceSetup
from onerank_export.precision import Precision

Outputs = dict[str, np.ndarray]  # output name -> array
FORMAT = "onerank-run-results/1"


@dataclass
class RunnerOutputs:
    """What one runner produced: outputs per case, or the reason it could not run here."""

    name: str
    precision: Precision
    skip_reason: str | None = None  # set when the runner was unavailable; then there are no outputs
    cases: dict[str, Outputs] = field(default_factory=dict)  # case name -> outputs
    invariance: dict[str, Outputs] = field(default_factory=dict)  # invariance.BASE / check -> outputs
    provider: str | None = None  # the execution provider that ran (ONNX Runtime runners), for the report

    @property
    def skipped(self) -> bool:
        return self.skip_reason is not None


@dataclass
class RunResults:
    reference: RunnerOutputs
    targets: list[RunnerOutputs] = field(default_factory=list)
    cases: dict[str, dict[str, int]] = field(default_factory=dict)  # case name -> shape, in run order
    invariance: InvarianceSetup | None = None  # None: no invariance requests were run

    @property
    def runners(self) -> list[RunnerOutputs]:
        return [self.reference, *self.targets]

    def save(self, path: str | Path) -> Path:
        """One .npz: arrays `a0`, `a1`, ... and `layout`, JSON text saying which array is which."""
        arrays: dict[str, np.ndarray] = {}

        def keep(outputs: Outputs) -> dict[str, str]:
            keys = {}
            for output, array in outputs.items():
                keys[output] = f"a{len(arrays)}"
                arrays[keys[output]] = np.asarray(array)
            return keys

        runners = [{"name": r.name, "precision": Precision(r.precision).value, "skip_reason": r.skip_reason,
                    "provider": r.provider, "cases": {c: keep(o) for c, o in r.cases.items()},
                    "invariance": {k: keep(o) for k, o in r.invariance.items()}} for r in self.runners]
        layout = {"format": FORMAT, "cases": self.cases, "runners": runners,
                  "invariance": None if self.invariance is None else self.invariance.to_dict()}
        path = Path(path)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: np.savez adds no suffix
            np.savez(f, layout=np.array(json.dumps(layout)), **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path) -> RunResults:
        try:
            with np.load(path, allow_pickle=False) as data:
                layout = json.loads(str(data["layout"][()]))
                if layout.get("format") != FORMAT:
                    raise ValueError(f"format is {layout.get('format')!r}, expected {FORMAT!r}")
                runners = [_runner(r, data) for r in layout["runners"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path}: not saved parity run results ({str(exc).splitlines()[0]})") from None
        invariance = layout["invariance"]
        return cls(runners[0], runners[1:], {c: dict(s) for c, s in layout["cases"].items()},
                   None if invariance is None else InvarianceSetup.from_dict(invariance))


def _runner(entry: dict[str, Any], data: Any) -> RunnerOutputs:
    def outputs(keys: dict[str, str]) -> Outputs:
        return {output: data[key] for output, key in keys.items()}

    return RunnerOutputs(entry["name"], Precision(entry["precision"]), entry["skip_reason"],
                         {c: outputs(k) for c, k in entry["cases"].items()},
                         {c: outputs(k) for c, k in entry["invariance"].items()},
                         provider=entry.get("provider"))  # absent from runs saved before it was recorded
