"""The comparator reports the right numbers and never lets a mismatch through."""

from __future__ import annotations

import numpy as np

from onerank_export.parity.compare import compare_array
from onerank_export.precision import Tolerance


def test_statistics_and_required_tolerance():
    ref = np.linspace(0.1, 0.9, 1000, dtype=np.float32).reshape(10, 100)
    out = ref.copy()
    out[3, 7] += 2e-4
    out[5, :] += 1e-6
    c = compare_array("scores", ref, out, Tolerance(atol=1e-5))
    assert not c.passed
    assert c.worst_index == (3, 7)
    assert abs(c.max_abs - 2e-4) < 1e-7
    assert abs(c.required_atol - 2e-4) < 1e-7  # the tolerance that would have passed
    assert c.p99_abs < 1e-5  # one outlier does not move the 99th percentile
    assert compare_array("scores", ref, out, Tolerance(atol=c.required_atol * 1.001)).passed


def test_relative_tolerance_scales_with_the_reference():
    ref = np.array([1.0, 100.0], dtype=np.float32)
    out = np.array([1.0, 100.05], dtype=np.float32)
    assert not compare_array("x", ref, out, Tolerance(atol=1e-3)).passed
    assert compare_array("x", ref, out, Tolerance(atol=1e-3, rtol=1e-3)).passed


def test_nan_inf_shape_dtype_and_missing_outputs_fail():
    ref = np.zeros((2, 3), np.float32)
    nan = ref.copy()
    nan[0, 1] = np.nan
    c = compare_array("s", ref, nan, Tolerance(atol=1.0))
    assert not c.passed and c.nonfinite_output == 1 and np.isinf(c.required_atol)
    assert compare_array("s", nan, nan.copy(), Tolerance(atol=0.0)).passed  # identical NaN positions agree
    assert "shape" in compare_array("s", ref, np.zeros((3, 2), np.float32), Tolerance(1.0)).problem
    assert "dtype" in compare_array("s", ref, np.zeros((2, 3), np.float16), Tolerance(1.0)).problem
    assert "missing" in compare_array("s", ref, None, Tolerance(1.0)).problem
