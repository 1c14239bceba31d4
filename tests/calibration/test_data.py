"""Calibration data: validated up front (one line naming file, tensor and row; nothing written),
read from .npz or ragged Parquet, sampled deterministically, calibration and evaluation disjoint."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import TINY, make_tiny_model

from onerank_export.calibration.data import load_requests, prepare_data
from onerank_export.calibration.settings import CalibrationSettings
from onerank_export.cli.main import main
from onerank_export.errors import DataError
from onerank_export.model.checkpoint import save_checkpoint
from onerank_export.spec import random_request


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return save_checkpoint(make_tiny_model(), tmp_path_factory.mktemp("ckpt") / "tiny")


def requests(n: int = 12, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feed = random_request(TINY, rng, n, 9, 7)
    labels = (rng.random((n, 7, TINY.num_tasks)) < 0.3).astype(np.float32)
    labels[feed["cand_item_ids"] == 0] = 0
    return {**feed, "labels": labels}


def corrupt(kind: str) -> tuple[dict[str, np.ndarray], list[str]]:
    """A request set broken one way, and the fragments its error line must contain."""
    data = requests()
    if kind == "nan":
        data["cand_features"][4, 2, 1] = np.nan
        return data, ["'cand_features'", "row 4", "nan", "[2, 1]"]
    if kind == "inf-label":
        data["labels"][6, 0, 2] = np.inf
        return data, ["'labels'", "row 6", "inf"]
    if kind == "empty":
        return {k: v[:0] for k, v in data.items()}, ["no requests"]
    if kind == "dtype":
        data["hist_item_ids"] = data["hist_item_ids"].astype(np.int32)
        return data, ["'hist_item_ids'", "int32", "expected int64"]
    if kind == "vocab":
        data["cand_item_ids"][3, 1] = TINY.item_vocab_size + 7
        return data, ["'cand_item_ids'", "row 3", f"id {TINY.item_vocab_size + 7}", "item_vocab_size"]
    if kind == "negative-id":
        data["context_ids"][9, 2] = -1
        return data, ["'context_ids'", "row 9", "id -1"]
    if kind == "shape":
        data["cand_features"] = data["cand_features"][..., :5]
        return data, ["'cand_features'", f"the model expects {TINY.num_cand_features}"]
    if kind == "disagree":
        data["cand_item_ids"] = data["cand_item_ids"][:, :6]
        return data, ["'cand_features' has num_candidates=7 but 'cand_item_ids' has 6", "must agree"]
    if kind == "missing":
        del data["context_ids"]
        return data, ["missing tensor 'context_ids'"]
    if kind == "label-dtype":
        data["labels"] = data["labels"].astype(np.float64)
        return data, ["'labels'", "float64", "expected float32 (0/1 per task)"]
    if kind == "label-shape":
        data["labels"] = data["labels"][:, :5]
        return data, ["'labels' has num_candidates=5 but 'cand_item_ids' has 7", "must agree"]
    if kind == "label-not-binary":
        data["labels"][2, 3, 1] = 0.5
        return data, ["'labels'", "row 2", "value 0.5", "[3, 1]", "not 0 or 1"]
    raise AssertionError(kind)


KINDS = ("nan", "inf-label", "empty", "dtype", "vocab", "negative-id", "shape", "disagree", "missing",
         "label-dtype", "label-shape", "label-not-binary")


@pytest.mark.parametrize("kind", KINDS)
def test_bad_data_exits_1_with_one_line_and_writes_nothing(capsys, tmp_path, tiny_ckpt, kind):
    data, fragments = corrupt(kind)
    path = tmp_path / "calib.npz"
    np.savez(path, **data)
    out, reports = tmp_path / "out" / "m.int8.onnx", tmp_path / "reports"
    code = main(["calibrate", "--checkpoint", str(tiny_ckpt), "--precision", "int8", "--data", str(path),
                 "--num-requests", "4", "--out", str(out), "--report", str(reports)])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and str(path) in lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert not out.parent.exists() and not reports.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib.npz"]


def test_object_arrays_are_refused_without_pickle(tmp_path):
    data = requests()
    data["cand_features"] = np.array([object()] * 12, dtype=object)
    path = tmp_path / "calib.npz"
    np.savez(path, **data)
    with pytest.raises(DataError, match="without pickle"):
        load_requests(path, TINY)


def _parquet(path, rows: dict[str, list], types: dict[str, pa.DataType] | None = None):
    types = types or {}
    default = {"cand_features": pa.list_(pa.list_(pa.float32())), "labels": pa.list_(pa.list_(pa.float32()))}
    table = pa.table({k: pa.array(v, type=types.get(k, default.get(k, pa.list_(pa.int64())))) for k, v in rows.items()})
    pq.write_table(table, path)
    return path


def ragged_rows() -> dict[str, list]:
    f = TINY.num_cand_features
    return {
        "hist_item_ids": [[5, 6, 7], [], [9]],
        "hist_action_ids": [[1, 2, 1], [], [3]],
        "context_ids": [[1, 2, 3, 4]] * 3,
        "cand_item_ids": [[11, 12], [13], [14, 15, 16]],
        "cand_features": [[[0.5] * f] * 2, [[1.0] * f], [[2.0] * f] * 3],
        "labels": [[[1, 0, 0], [0, 0, 0]], [[1, 1, 0]], [[0, 0, 0]] * 3],
    }


def test_ragged_parquet_is_padded_like_the_contract(tmp_path):
    got = load_requests(_parquet(tmp_path / "r.parquet", ragged_rows()), TINY)
    f = got.features
    assert f["hist_item_ids"].tolist() == [[5, 6, 7], [0, 0, 0], [0, 0, 9]]  # history left-padded
    assert f["cand_item_ids"].tolist() == [[11, 12, 0], [13, 0, 0], [14, 15, 16]]  # candidates right-padded
    assert f["cand_features"].shape == (3, 3, TINY.num_cand_features) and f["cand_features"][1, 1:].sum() == 0
    assert got.labels.shape == (3, 3, 3) and got.labels[1, 0].tolist() == [1, 1, 0]


@pytest.mark.parametrize(("change", "fragment"), [
    (("cand_features", "float64"), "expected list<list<float>>"),
    (("hist_action_ids", "short"), "'hist_action_ids' row 0 has 2 entries but 'hist_item_ids' has 3"),
    (("cand_features", "width"), "row 2 has a candidate with 3 values"),
    (("cand_item_ids", "vocab"), "'cand_item_ids' row 1: id 300"),
])
def test_parquet_errors_name_column_and_row(tmp_path, change, fragment):
    rows, types = ragged_rows(), {}
    column, how = change
    if how == "float64":
        types[column] = pa.list_(pa.list_(pa.float64()))
    elif how == "short":
        rows[column][0] = [1, 2]
    elif how == "width":
        rows[column][2][1] = [1.0, 2.0, 3.0]
    elif how == "vocab":
        rows[column][1] = [TINY.item_vocab_size]
    with pytest.raises(DataError) as info:
        load_requests(_parquet(tmp_path / "bad.parquet", rows, types), TINY)
    assert fragment in str(info.value) and "bad.parquet" in str(info.value)


def test_file_split_is_deterministic_disjoint_and_drops_duplicates(tmp_path):
    data = requests(40)
    for k in data:  # request 30 is a copy of request 0: it must not be evaluated if 0 calibrates
        data[k][30] = data[k][0]
    path = tmp_path / "calib.npz"
    np.savez(path, **data)
    settings = CalibrationSettings("int8", num_requests=20, eval_requests=100, seed=3)
    a, b = prepare_data(TINY, settings, path), prepare_data(TINY, settings, path)
    assert a.calibration.fingerprints() == b.calibration.fingerprints()
    assert not set(a.calibration.fingerprints()) & set(a.evaluation.fingerprints())
    assert len(a.calibration) == 20 and len(a.evaluation) + a.info.evaluation_dropped_as_duplicates == 20
    other = prepare_data(TINY, CalibrationSettings("int8", num_requests=20, seed=4), path)
    assert other.calibration.fingerprints() != a.calibration.fingerprints()


def test_evaluation_needs_labels_and_enough_requests(tmp_path):
    data = requests(10)
    unlabelled = {k: v for k, v in data.items() if k != "labels"}
    np.savez(tmp_path / "nolabels.npz", **unlabelled)
    np.savez(tmp_path / "small.npz", **data)
    np.savez(tmp_path / "held_out.npz", **requests(10, seed=1))
    with pytest.raises(DataError, match="no 'labels' tensor"):
        prepare_data(TINY, CalibrationSettings("int8", num_requests=4), tmp_path / "nolabels.npz")
    with pytest.raises(DataError, match="leaves none for the held-out evaluation"):
        prepare_data(TINY, CalibrationSettings("int8", num_requests=10), tmp_path / "small.npz")
    with pytest.raises(DataError, match="every evaluation request also appears in the calibration set"):
        prepare_data(TINY, CalibrationSettings("int8", num_requests=10), tmp_path / "nolabels.npz",
                     tmp_path / "small.npz")  # the same requests twice
    split = prepare_data(TINY, CalibrationSettings("int8", num_requests=10), tmp_path / "nolabels.npz",
                         tmp_path / "held_out.npz")  # unlabelled calibration, labelled evaluation file
    assert len(split.calibration) == 10 and len(split.evaluation) == 10 and split.evaluation.labels is not None


def test_demo_sets_are_disjoint_and_seeded():
    cfg = TINY
    a = prepare_data(cfg, CalibrationSettings("fp16", num_requests=16, eval_requests=64, seed=1))
    b = prepare_data(cfg, CalibrationSettings("fp16", num_requests=16, eval_requests=64, seed=1))
    assert a.calibration.fingerprints() == b.calibration.fingerprints()
    assert a.evaluation.fingerprints() == b.evaluation.fingerprints()
    assert not set(a.calibration.fingerprints()) & set(a.evaluation.fingerprints())
    assert a.info.calibration_requests == 16 and a.info.evaluation_requests == 64


def test_build_checks_calibration_data_before_any_work(capsys, tmp_path, tiny_ckpt):
    data, fragments = corrupt("nan")
    path = tmp_path / "calib.npz"
    np.savez(path, **data)
    code = main(["build", "--checkpoint", str(tiny_ckpt), "--out", str(tmp_path / "b"), "--precision", "int8",
                 "--calibration-data", str(path), "--engine", "skip", "--no-triton"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and all(f in err for f in fragments), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib.npz"]


@pytest.mark.slow  # a whole build with fp16 calibration, ~11 s
def test_build_calibrates_on_the_given_data(capsys, tmp_path, tiny_ckpt):
    path = tmp_path / "calib.npz"
    np.savez(path, **requests(n=400, seed=5))
    out = tmp_path / "b"
    code = main(["build", "--checkpoint", str(tiny_ckpt), "--out", str(out), "--precision", "fp16",
                 "--calibration-data", str(path), "--engine", "skip", "--no-triton"])
    capsys.readouterr()
    import json

    report = json.loads((out / "reports" / "calibration.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["options"]["calibration_data"] == str(path)
    assert str(path) in json.dumps(report), "the report names the data it was calibrated on"
    assert code in (0, 1)  # random tiny weights may fail a gate; the data path is what is under test
