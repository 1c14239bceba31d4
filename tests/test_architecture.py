"""The package's architecture, checked: the import-linter contracts in pyproject.toml
([tool.importlinter]: layers, engine parts, torch-free), no import cycle between modules, and that
the Triton python model and the ONNX metadata reader really run without torch.

The layer and torch-free contracts and the cycle finder each get a negative control (a planted bad
import must fail them, named), so a check that quietly stopped matching anything cannot pass.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from collections import deque
from pathlib import Path

import grimp
import pytest
from helpers import FAKE_PB_UTILS

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: import-linter depends on tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = "onerank_export"
PYPROJECT = ROOT / "pyproject.toml"
CONTRACTS = {c["id"]: c for c in tomllib.loads(PYPROJECT.read_text())["tool"]["importlinter"]["contracts"]}

# Run through import-linter's own entry function (stable from 2.1 on) in a fresh interpreter: the
# package is found on sys.path, so a subprocess whose path starts at a given src/ lints that tree.
_LINT = ("import sys; from importlinter.cli import lint_imports; "
         "sys.exit(lint_imports(config_filename=sys.argv[1], limit_to_contracts=tuple(sys.argv[2:]), no_cache=True))")


def lint(src: Path, *contracts: str, config: Path = PYPROJECT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(src), "COLUMNS": "200"}  # wide: chains stay on one line
    return subprocess.run([sys.executable, "-c", _LINT, str(config), *contracts], cwd=src, env=env,
                          capture_output=True, text=True, timeout=120)


def report(proc: subprocess.CompletedProcess) -> str:
    """import-linter's report without its logo: the contracts, kept or broken, and each broken chain."""
    out = proc.stdout
    start = out.find("Contracts\n")
    return (out[start:] if start >= 0 else out) + proc.stderr


def layer_modules(contract: dict) -> list[str]:
    return [m.strip().strip("()") for layer in contract["layers"] for m in layer.replace(":", "|").split("|")]


# ----- the import-linter contracts ----------------------------------------------------------------


@pytest.mark.parametrize("contract", sorted(CONTRACTS))
def test_import_contract_is_kept(contract):
    proc = lint(SRC, contract)
    assert proc.returncode == 0, f"import-linter contract {contract!r} is broken:\n{report(proc)}"


def test_contracts_cover_every_module():
    """A module in no layer would be checked by nothing: every child of the package is in one, every
    engine part is in the independence contract, and the root package (__version__) imports nothing."""
    graph = grimp.build_graph(PACKAGE, cache_dir=None)
    in_layers = layer_modules(CONTRACTS["layers"])
    assert sorted(graph.find_children(PACKAGE)) == sorted(in_layers)
    assert sorted(graph.find_children(f"{PACKAGE}.engine")) == sorted(CONTRACTS["engine-parts"]["modules"])
    assert not graph.find_modules_directly_imported_by(PACKAGE)


# ----- no import cycles ---------------------------------------------------------------------------


def _shortest_path(edges: dict[str, set[str]], start: str, goal: str) -> list[str] | None:
    previous: dict[str, str | None] = {start: None}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        if node == goal:
            path = [node]
            while previous[path[-1]] is not None:
                path.append(previous[path[-1]])
            return path[::-1]
        for nxt in sorted(edges[node]):
            if nxt not in previous:
                previous[nxt] = node
                queue.append(nxt)
    return None


def import_cycles(graph: grimp.ImportGraph) -> list[str]:
    """One shortest cycle per strongly connected group of modules, as `a -> b (l.N) -> ... -> a (l.M)`."""
    edges = {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    # Tarjan's strongly connected components (recursion depth <= number of modules: ~100 here).
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[set[str]] = []

    def visit(m: str) -> None:
        index[m] = low[m] = len(index)
        stack.append(m)
        for n in edges[m]:
            if n not in index:
                visit(n)
                low[m] = min(low[m], low[n])
            elif n in stack:
                low[m] = min(low[m], index[n])
        if low[m] == index[m]:
            component = set()
            while True:
                n = stack.pop()
                component.add(n)
                if n == m:
                    break
            components.append(component)

    for m in sorted(edges):
        if m not in index:
            visit(m)

    cycles = []
    for component in components:
        if len(component) < 2 and not any(m in edges[m] for m in component):
            continue
        first = min(component)
        back = [_shortest_path(edges, nxt, first) for nxt in sorted(edges[first] & component)]
        path = [first, *min((p for p in back if p), key=len)]
        hops = []
        for importer, imported in itertools.pairwise(path):
            lines = sorted(d["line_number"] for d in graph.get_import_details(importer=importer, imported=imported))
            hops.append(f"{imported} (l.{','.join(map(str, lines)) or '?'})")
        cycles.append(" -> ".join([first, *hops]))
    return sorted(cycles)


def test_no_import_cycles():
    """Between modules, counting lazy imports and TYPE_CHECKING ones: a cycle is a cycle for a reader."""
    graph = grimp.build_graph(PACKAGE, exclude_type_checking_imports=False, cache_dir=None)
    cycles = import_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_cycle_finder_names_a_cycle():
    """Negative control for the cycle test: a planted three-module cycle is found and named, with lines."""
    graph = grimp.ImportGraph()
    for importer, imported, line in (("p.a", "p.b", 3), ("p.b", "p.c", 5), ("p.c", "p.a", 7), ("p.c", "p.d", 8)):
        graph.add_import(importer=importer, imported=imported, line_number=line, line_contents=f"import {imported}")
    assert import_cycles(graph) == ["p.a -> p.b (l.3) -> p.c (l.5) -> p.a (l.7)"]
    graph.remove_import(importer="p.c", imported="p.a")
    assert import_cycles(graph) == []


# ----- negative controls for the contracts --------------------------------------------------------


@pytest.mark.parametrize(("contract", "module_file", "bad_import", "imported"), [
    ("layers", "spec.py", "import onerank_export.cli.main", "onerank_export.cli.main"),
    ("torch-free", "export/metadata.py", "import torch", "torch"),
])
def test_contract_fails_when_broken_on_purpose(tmp_path, contract, module_file, bad_import, imported):
    """A copy of the package with one forbidden import added: the contract reports exactly that import,
    line included. This tree's own report must not have it, so it is the added line that fails."""
    src = tmp_path / "src"
    shutil.copytree(SRC / PACKAGE, src / PACKAGE, ignore=shutil.ignore_patterns("__pycache__"))
    target = src / PACKAGE / module_file
    lines = [*target.read_text().splitlines(), f"{bad_import}  # added by test_architecture"]
    target.write_text("\n".join(lines) + "\n")
    shutil.copy(PYPROJECT, tmp_path / "pyproject.toml")
    importer = f"{PACKAGE}.{module_file.removesuffix('.py').replace('/', '.')}"
    chain = f"- {importer} -> {imported} (l.{len(lines)})"

    broken = lint(src, contract, config=tmp_path / "pyproject.toml")
    assert broken.returncode != 0, report(broken)
    assert chain in _squeeze(broken.stdout), report(broken)

    assert f"{importer} -> {imported} " not in _squeeze(lint(SRC, contract).stdout)


def _squeeze(text: str) -> str:
    """Runs of spaces to one: import-linter pads its chain lines differently per contract type."""
    return re.sub(r"[ \t]+", " ", text)


# ----- torch-free at run time ---------------------------------------------------------------------


# Loads the served model the way the stub does (by file path, as `model`), scores one request,
# reads the ONNX metadata, imports every source of the torch-free contract, then reports.
_SERVE = '''
import importlib, importlib.util, json, sys
import numpy as np

model_file, model_dir, sources = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
spec_ = importlib.util.spec_from_file_location("model", model_file)
served = importlib.util.module_from_spec(spec_)
spec_.loader.exec_module(served)

from onerank_export import spec
from onerank_export.config import OneRankConfig
from onerank_export.export.metadata import detect_precision, read_metadata

onnx_path = model_dir + "/1/model.onnx"
meta = read_metadata(onnx_path)
config = meta.config
model = served.TritonPythonModel()
model.initialize({
    "model_config": json.dumps({"max_batch_size": 4,
                                "parameters": {"onerank.config": {"string_value": config.to_json()}}}),
    "model_repository": model_dir, "model_version": "1",
})
request = {t.name: np.ones(t.shape_for(config, {spec.BATCH: 2, spec.HIST_LEN: 5, spec.NUM_CANDIDATES: 3}),
                           dtype=t.np_dtype) for t in spec.INPUTS}
(response,) = model.execute([request])
assert response.error is None, response.error
for name in sources:
    importlib.import_module(name)
print(json.dumps({
    "scores": list(response.output_tensors[0].as_numpy().shape),
    "precision": str(detect_precision(onnx_path).value),
    "torch": sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "functorch")),
}))
'''


def _tiny_served_onnx(path: Path) -> None:
    """A small ONNX with the serving contract's inputs and output and the metadata `export` writes,
    built with onnx.helper: exporting a real model takes torch ~10 s, and this test is about imports.
    It has a LayerNormalization followed by MatMul + Add, so the CPU rewrite (ort_cpu_graph) runs."""
    import numpy as np
    import onnx
    from helpers import TINY
    from onnx import TensorProto, helper, numpy_helper

    from onerank_export import spec
    from onerank_export.export.metadata import OnnxMetadata
    from onerank_export.precision import Precision

    f, t = TINY.num_cand_features, TINY.num_tasks
    rng = np.random.default_rng(0)
    onnx_type = {"int64": TensorProto.INT64, "float32": TensorProto.FLOAT}
    inputs = [helper.make_tensor_value_info(s.name, onnx_type[s.dtype], [a if a in spec.DYNAMIC_AXES else d
                                                                         for a, d in zip(s.axes, s.static_dims(TINY),
                                                                                         strict=True)])
              for s in spec.INPUTS]
    out = spec.OUTPUTS[0]
    outputs = [helper.make_tensor_value_info(out.name, TensorProto.FLOAT, [spec.BATCH, spec.NUM_CANDIDATES, t])]
    inits = [numpy_helper.from_array(a, n) for n, a in (
        ("gamma", rng.normal(size=f).astype(np.float32)), ("beta", rng.normal(size=f).astype(np.float32)),
        ("w", rng.normal(size=(f, t)).astype(np.float32)), ("b", rng.normal(size=t).astype(np.float32)))]
    nodes = [
        helper.make_node("LayerNormalization", ["cand_features", "gamma", "beta"], ["ln"], axis=-1, epsilon=1e-5),
        helper.make_node("MatMul", ["ln", "w"], ["mm"]),
        helper.make_node("Add", ["mm", "b"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], [out.name]),
    ]
    model = helper.make_model(helper.make_graph(nodes, "tiny_served", inputs, outputs, inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    OnnxMetadata(config_json=TINY.to_json(), precision=Precision.FP32).apply(model)
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True)
    onnx.save(model, str(path))


def test_served_model_and_metadata_reader_run_without_torch(tmp_path):
    """What the torch-free contract promises, at run time: `python -X importtime` of the python-backend
    model (loaded as Triton loads it, serving a request) and the metadata reader imports no torch."""
    from helpers import TINY

    fake = tmp_path / "stub"
    fake.mkdir()
    (fake / "triton_python_backend_utils.py").write_text(textwrap.dedent(FAKE_PB_UTILS))
    model_dir = tmp_path / "onerank"
    _tiny_served_onnx(model_dir / "1" / "model.onnx")
    sources = CONTRACTS["torch-free"]["source_modules"]

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake), str(SRC)])}
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", _SERVE,
                           str(SRC / PACKAGE / "serving" / "python_model.py"), str(model_dir), json.dumps(sources)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["scores"] == [2, 3, TINY.num_tasks]
    assert result["precision"] == "fp32"
    assert result["torch"] == []
    imported = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")]
    assert "onerank_export.export.ort_cpu_graph" in imported and "onnxruntime" in imported  # the lazy ones ran
    assert not [m for m in imported if m.split(".")[0] in ("torch", "functorch")]
