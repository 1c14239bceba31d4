"""ONNX past the protobuf limit (export/onnx_files.py): with the external-data threshold lowered, a tiny
model takes the path a 9M-row one takes: .onnx + .onnx.data, byte-identical re-export, the CPU rewrite,
sessions from files, repository copies that Triton's backend rules accept, the same scores."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import TINY, make_tiny_model, request

from onerank_export import spec
from onerank_export.export.onnx_export import export_onnx
from onerank_export.export.onnx_files import (
    EXTERNAL_DATA_ENV,
    data_file_name,
    data_files,
    save_onnx,
    session_from_proto,
    tensor_bytes,
    uses_external_data,
)
from onerank_export.export.ort_cpu_graph import write_ort_cpu_model
from onerank_export.export.ort_session import cpu_session, cpu_session_options
from onerank_export.serving.backend_rules import check_repository
from onerank_export.serving.profiles import Target, serving_plan
from onerank_export.serving.repository import write_model_repository

pytestmark = pytest.mark.slow  # exports with external data (~15 s); the full suite (CI) runs them

SMALL = 4096  # bytes: the tiny model (~140 KB of tensors) goes external, as a 2 GB one would


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny model exported twice with external data (threshold lowered), and resaved as one file."""
    model = make_tiny_model(seed=5)
    root = tmp_path_factory.mktemp("external")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(EXTERNAL_DATA_ENV, str(SMALL))
        external = export_onnx(model, root / "external" / "onerank.fp32.onnx").path
        again = export_onnx(model, root / "again" / "onerank.fp32.onnx").path
    single = save_onnx(onnx.load(str(external)), root / "single" / "onerank.fp32.onnx", threshold=1 << 30)
    return single, external, again


def _scores(session, feed):
    return session.run([spec.OUTPUT_NAMES[0]], feed)[0]


def test_export_past_the_threshold_writes_the_data_file_beside_the_model(exported):
    single, external, again = exported
    data = external.parent / "onerank.fp32.onnx.data"
    assert data_files(external) == [data] and data_files(single) == []
    assert sorted(p.name for p in external.parent.iterdir()) == ["onerank.fp32.onnx", "onerank.fp32.onnx.data"]
    head = onnx.load(str(external), load_external_data=False)
    table = next(t for t in head.graph.initializer if t.name == "model.item_emb.weight" or "item_emb" in t.name)
    assert table.data_location == onnx.TensorProto.EXTERNAL and list(table.dims) == [TINY.item_vocab_size, 16]
    # Streamed from the model's tensor before the proto was made (onnx_export.stream_tables): first in the file.
    assert {e.key: e.value for e in table.external_data} == {"location": "onerank.fp32.onnx.data", "offset": "0",
                                                             "length": str(TINY.item_vocab_size * 16 * 4)}
    table_bytes = TINY.item_vocab_size * 16 * 4
    assert data.stat().st_size >= table_bytes  # the weights there, the graph here
    assert external.stat().st_size < single.stat().st_size - table_bytes
    # Both files byte-identical on re-export (the data file is named and laid out deterministically).
    for a, b in ((external, again), (data, again.parent / data.name)):
        assert a.read_bytes() == b.read_bytes()
    # Same model: the data loads back into the tensors of the single-file export, value for value.
    full, ref = onnx.load(str(external)), onnx.load(str(single))
    assert not uses_external_data(full) and tensor_bytes(full) == tensor_bytes(ref)
    assert {i.name: i.raw_data for i in full.graph.initializer} == {i.name: i.raw_data for i in ref.graph.initializer}


def test_sessions_and_the_cpu_rewrite_score_exactly_as_the_single_file(exported, tmp_path, monkeypatch):
    single, external, _ = exported
    feed = request(TINY, 2, 9, 7, seed=3)
    expected = _scores(cpu_session(single, 1), feed)
    assert np.array_equal(_scores(cpu_session(external, 1), feed), expected)
    monkeypatch.setenv(EXTERNAL_DATA_ENV, str(SMALL))
    rewritten = write_ort_cpu_model(external, tmp_path / "onerank.fp32.cpu.onnx")
    assert data_files(rewritten) == [tmp_path / "onerank.fp32.cpu.onnx.data"]
    assert np.array_equal(_scores(cpu_session(rewritten, 1), feed), expected)
    # An in-memory model past the threshold opens from a temporary file and keeps its bytes.
    proto = onnx.load(str(single))
    before = {i.name: i.raw_data for i in proto.graph.initializer}
    session = session_from_proto(proto, cpu_session_options(1), ["CPUExecutionProvider"])
    assert session.get_inputs() and {i.name: i.raw_data for i in proto.graph.initializer} == before


def test_save_below_the_threshold_is_one_file_and_removes_a_stale_data_file(exported, tmp_path):
    single, _, _ = exported
    target = tmp_path / "m.onnx"
    save_onnx(onnx.load(str(single)), target, threshold=SMALL)
    assert (tmp_path / data_file_name(target)).is_file()
    save_onnx(onnx.load(str(single)), target, threshold=1 << 30)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"] and data_files(target) == []


def test_the_repository_copies_the_data_file_and_passes_the_backend_rules(exported, tmp_path, monkeypatch):
    _, external, _ = exported
    monkeypatch.setenv(EXTERNAL_DATA_ENV, str(SMALL))
    cpu = write_ort_cpu_model(external, tmp_path / "onnx" / "onerank.fp32.cpu.onnx")
    plan = serving_plan(Target.CPU, "--target cpu", "latency", cores=2)
    repo = write_model_repository(tmp_path, TINY, plan, {"fp32": external}, {}, None, cpu_onnx={"fp32": cpu})
    for model in ("onerank_onnx_fp32", "onerank"):
        version = repo.path / model / "1"
        assert (version / "onerank.fp32.cpu.onnx.data").is_file(), model  # the name model.onnx references
        assert repo.artifacts[f"triton_{model}_model_data"] == version / "onerank.fp32.cpu.onnx.data"
        # Hard links, not copies: the table is on disk once however many models serve it.
        assert (version / "model.onnx").samefile(cpu)
        assert (version / "onerank.fp32.cpu.onnx.data").samefile(cpu.parent / "onerank.fp32.cpu.onnx.data")
    assert check_repository(repo.path, "cpu") == []
    # Without its data file the rules name the tensor and the fix.
    (repo.path / "onerank" / "1" / "onerank.fp32.cpu.onnx.data").unlink()
    problems = check_repository(repo.path, "cpu")
    assert len(problems) == 1 and "onerank.fp32.cpu.onnx.data" in problems[0] and "missing" in problems[0]
