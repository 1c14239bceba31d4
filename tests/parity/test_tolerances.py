"""`--tolerances FILE`: per-precision overrides, every mistake a one-line error naming the file."""

from __future__ import annotations

import json

import pytest

from onerank_export.errors import ConfigError
from onerank_export.parity.verify import load_tolerances
from onerank_export.precision import Precision, Tolerance


def test_overrides_are_read_by_precision(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"fp16": {"atol": 0.01}, "int8": {"atol": 0.1, "rtol": 0.5}}))
    assert load_tolerances(path) == {Precision.FP16: Tolerance(0.01), Precision.INT8: Tolerance(0.1, 0.5)}
    assert load_tolerances(None) == {}


@pytest.mark.parametrize("content, message", [
    ('{"bf16": {"atol": 1}}', "unknown precision 'bf16' (known: fp32, fp16, int8)"),
    ('{"fp16": {"rtol": 1}}', 'fp16 must be {"atol": number, "rtol": number (optional)}'),
    ('{"fp16": {"atol": -1}}', "fp16 tolerances must be finite numbers >= 0"),
    ("[1]", "expected an object like"),
    ("{", "not readable JSON"),
])
def test_mistakes_are_one_line_errors_naming_the_file(tmp_path, content, message):
    path = tmp_path / "t.json"
    path.write_text(content)
    with pytest.raises(ConfigError) as err:
        load_tolerances(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value) and "\n" not in str(err.value)
