"""Compare a runner's outputs with a reference's: per-output error statistics and a verdict.

For every output: max / mean / p99 of absolute and relative error, NaN/Inf counts on both
sides, pass/fail against `atol + rtol * |reference|`, and the smallest atol that would have
passed at the given rtol, so a failure says by how much it failed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np

from onerank_export.precision import Tolerance


@dataclass(frozen=True)
class OutputComparison:
    output: str
    passed: bool
    shape: tuple[int, ...]
    max_abs: float
    mean_abs: float
    p99_abs: float
    max_rel: float
    mean_rel: float
    p99_rel: float
    nonfinite_reference: int
    nonfinite_output: int
    atol: float
    rtol: float
    required_atol: float  # smallest atol that passes at this rtol (inf when non-finite values differ)
    worst_index: tuple[int, ...]
    problem: str = ""  # set when the comparison could not be made (missing output, shape, dtype)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def summary(self) -> str:
        if self.problem:
            return self.problem
        return (f"max_abs={self.max_abs:.3g} p99_abs={self.p99_abs:.3g} mean_abs={self.mean_abs:.3g} "
                f"max_rel={self.max_rel:.3g}; needs atol>={self.required_atol:.3g}")


def compare_outputs(reference: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray],
                    tolerance: Tolerance) -> list[OutputComparison]:
    return [compare_array(name, ref, outputs.get(name), tolerance) for name, ref in reference.items()]


def compare_array(name: str, ref: np.ndarray, out: np.ndarray | None, tol: Tolerance) -> OutputComparison:
    ref = np.asarray(ref)
    if out is None:
        return _problem(name, ref.shape, tol, f"output '{name}' is missing")
    out = np.asarray(out)
    if out.shape != ref.shape:
        return _problem(name, ref.shape, tol, f"output '{name}' has shape {list(out.shape)}, "
                                              f"reference {list(ref.shape)}")
    if out.dtype != ref.dtype:
        return _problem(name, ref.shape, tol, f"output '{name}' has dtype {out.dtype}, reference {ref.dtype}")
    r = ref.astype(np.float64)
    o = out.astype(np.float64)
    fin_r, fin_o = np.isfinite(r), np.isfinite(o)
    both = fin_r & fin_o
    # Non-finite values must match exactly (same NaN / same signed Inf) or the comparison fails.
    nonfinite_mismatch = ~both & ~((np.isnan(r) & np.isnan(o)) | (np.isinf(r) & (r == o)))
    abs_err = np.where(both, np.abs(o - r), 0.0)
    rel_err = np.where(both, abs_err / np.maximum(np.abs(r), 1e-12), 0.0)
    if nonfinite_mismatch.any():
        abs_err = np.where(nonfinite_mismatch, np.inf, abs_err)
    size = max(abs_err.size, 1)
    excess = abs_err - tol.rtol * np.abs(np.where(both, r, 0.0))
    required = float(max(excess.max(initial=0.0), 0.0))
    worst = np.unravel_index(int(np.argmax(abs_err)), abs_err.shape) if abs_err.size else ()
    return OutputComparison(
        output=name,
        passed=bool(required <= tol.atol),
        shape=tuple(int(s) for s in ref.shape),
        max_abs=float(abs_err.max(initial=0.0)),
        mean_abs=float(abs_err.sum() / size),
        p99_abs=float(np.percentile(abs_err, 99, method="higher")) if abs_err.size else 0.0,
        max_rel=float(rel_err.max(initial=0.0)),
        mean_rel=float(rel_err.sum() / size),
        p99_rel=float(np.percentile(rel_err, 99, method="higher")) if rel_err.size else 0.0,
        nonfinite_reference=int((~fin_r).sum()),
        nonfinite_output=int((~fin_o).sum()),
        atol=tol.atol,
        rtol=tol.rtol,
        required_atol=required,
        worst_index=tuple(int(i) for i in worst),
    )


def _problem(name: str, shape: tuple[int, ...], tol: Tolerance, problem: str) -> OutputComparison:
    nan = float("nan")
    return OutputComparison(name, False, tuple(int(s) for s in shape), nan, nan, nan, nan, nan, nan, 0, 0,
                            tol.atol, tol.rtol, float("inf"), (), problem)
