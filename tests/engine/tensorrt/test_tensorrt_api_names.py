"""Every TensorRT Python name the engine builder and the TensorRT runner use exists in TensorRT's own
compiled bindings of the oldest (10.8) and the newest (11.4) supported release.

No TensorRT library can be installed here, but PyPI serves the real bindings wheels; their
`tensorrt.so` holds each exported Python name as a NUL-terminated string literal in `.rodata`.
The linker may merge a literal into the tail of a longer one ("Builder" is stored as the end of
"IExprBuilder"), so a name counts as exported when `name\\0` occurs in `.rodata`: absence is
exact, presence is up to that merging. Names the wheel's pure-Python `__init__.py` defines
(`__version__` in 10.8) count too.

The names are collected from the source by `trt_name_audit` (tests/trt_name_audit.py says
exactly what it follows and what it reports as a flow it cannot follow).
"""

from __future__ import annotations

import ast
import os
import struct
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from trt_name_audit import Audit, audit_sources

ROOT = Path(__file__).resolve().parents[3]
PACKAGE = ROOT / "src" / "onerank_export"
AUDITED = (PACKAGE / "engine" / "tensorrt" / "builder.py", PACKAGE / "engine" / "tensorrt" / "api.py",
           PACKAGE / "parity" / "tensorrt_runner.py")
OLDEST = ("tensorrt-cu12-bindings", "10.8.0.43")
NEWEST = ("tensorrt-cu13-bindings", "11.4.0.106")  # latest on PyPI when written (pip index versions)
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "onerank-export" / "trt-bindings"


# ----- the compiled bindings ---------------------------------------------------------------------


@dataclass(frozen=True)
class Bindings:
    release: str
    rodata: bytes
    python_names: frozenset[str]

    def exports(self, name: str) -> bool:
        return name in self.python_names or name.encode() + b"\0" in self.rodata


def elf_section(data: bytes, wanted: str) -> bytes:
    """One section of a little-endian ELF64 file (all these wheels are x86_64)."""
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1, "not a little-endian ELF64 file"
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def header(i: int) -> tuple[int, int, int]:
        name, _type, _flags, _addr, offset, size = struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize)
        return name, offset, size

    _, str_off, _ = header(shstrndx)
    for i in range(shnum):
        name, offset, size = header(i)
        if data[str_off + name:data.index(b"\0", str_off + name)].decode() == wanted:
            return data[offset:offset + size]
    raise AssertionError(f"no {wanted} section")


def python_defined_names(source: str) -> frozenset[str]:
    """Names the wheel's __init__.py defines at top level or assigns onto its classes."""
    names = set()
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        for target in node.targets if isinstance(node, ast.Assign) else []:
            if isinstance(target, (ast.Name, ast.Attribute)):
                names.add(target.id if isinstance(target, ast.Name) else target.attr)
    return frozenset(names)


def load_bindings(package: str, version: str) -> Bindings:
    CACHE.mkdir(parents=True, exist_ok=True)
    pattern = f"{package.replace('-', '_')}-{version}-*.whl"
    wheels = sorted(CACHE.glob(pattern))
    if not wheels:
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                               "--disable-pip-version-check", "-q", "-d", str(CACHE), f"{package}=={version}"],
                              capture_output=True, text=True, timeout=600)
        wheels = sorted(CACHE.glob(pattern))
        if proc.returncode != 0 or not wheels:
            tail = (proc.stderr.strip().splitlines() or ["no wheel"])[-1]
            pytest.skip(f"cannot download {package}=={version} into {CACHE}: {tail}")
    with zipfile.ZipFile(wheels[0]) as wheel:
        so = next(n for n in wheel.namelist() if n.endswith("/tensorrt.so"))
        init = so.rsplit("/", 1)[0] + "/__init__.py"
        return Bindings(f"{package} {version}", elf_section(wheel.read(so), ".rodata"),
                        python_defined_names(wheel.read(init).decode()))


@pytest.fixture(scope="session")
def oldest() -> Bindings:
    return load_bindings(*OLDEST)


@pytest.fixture(scope="session")
def newest() -> Bindings:
    return load_bindings(*NEWEST)


def missing_names(audit: Audit, bindings: Bindings) -> list[str]:
    return sorted({f"{u.name} ({u.where})" for u in audit.uses if not u.guarded and not bindings.exports(u.name)})


@pytest.fixture(scope="module")
def audit() -> Audit:
    return audit_sources({p.relative_to(ROOT).as_posix(): p.read_text() for p in AUDITED})


# ----- the tests ------------------------------------------------------------------------------------


def test_collection_follows_every_tensorrt_value(audit):
    assert audit.problems == []
    # The collector sees the builder and the runner (a collector that saw nothing would pass vacuously).
    direct = audit.names(guarded=False)
    for name in ("Builder", "OnnxParser", "build_serialized_network", "set_shape", "create_timing_cache",
                 "phase_start", "deserialize_cuda_engine", "set_input_shape", "execute_async_v3", "load_library"):
        assert name in direct, name
    assert len(direct) >= 50, sorted(direct)


def test_every_name_exists_in_the_oldest_and_newest_bindings(audit, oldest, newest):
    for bindings in (oldest, newest):
        assert missing_names(audit, bindings) == [], bindings.release


def test_names_in_only_one_release_are_used_only_through_a_guard(audit, oldest, newest):
    direct, guarded = audit.names(guarded=False), audit.names(guarded=True)
    assert not direct & guarded, f"used both guarded and unguarded: {sorted(direct & guarded)}"
    for name in guarded:  # a guard around a name no release has is a typo
        assert oldest.exports(name) or newest.exports(name), name
    # The parser's global plugin override exists only in newer releases (11.4 has it, 10.8 does not), and the
    # builder must not use it at all: the node's plugin_namespace attribute routes it to the plugin, and the
    # flag would let any registered creator named like a built-in ONNX op replace that op (issue 12, defect 7).
    assert newest.exports("ENABLE_PLUGIN_OVERRIDE") and not oldest.exports("ENABLE_PLUGIN_OVERRIDE")
    assert "ENABLE_PLUGIN_OVERRIDE" not in direct | guarded


def test_negative_control_removed_and_made_up_names_are_caught(oldest, newest):
    for removed in ("FP16", "int8_calibrator", "EXPLICIT_BATCH"):  # BuilderFlag / IBuilderConfig / creation flag
        assert oldest.exports(removed) and not newest.exports(removed), removed
    # setInt8Calibrator never had that Python name: the binding is the `int8_calibrator` property.
    for absent in ("set_int8_calibrator", "build_serialized_network_onerank_v2"):
        assert not oldest.exports(absent) and not newest.exports(absent), absent
    # End to end: a builder written against 10.x passes the 10.8 check and fails the 11.4 one.
    old_style = '''
def build(trt, network, calibrator):
    builder = trt.Builder(trt.Logger(trt.Logger.WARNING))
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.FP16)
    config.int8_calibrator = calibrator
    return builder.build_serialized_network(network, config)
'''
    audit = audit_sources({"old_style.py": old_style})
    assert audit.problems == [] and missing_names(audit, oldest) == []
    assert [m.split()[0] for m in missing_names(audit, newest)] == ["FP16", "int8_calibrator"]


def test_collection_follows_flows_through_helpers_attributes_and_subclasses():
    source = '''
def make(trt):
    return trt.Runtime(trt.Logger())
def helper(trt, engine: trt.ICudaEngine):
    engine.via_annotation
class Runner:
    def start(self):
        import tensorrt as trt
        self.runtime = make(trt)
        self.engine, self.n = self.runtime.deserialize_cuda_engine(b""), 3
        for tensor in self.engine.tensors:
            tensor.via_loop
        helper(trt, self.engine)
        getattr(self.engine, "maybe_missing", None)
        class Monitor(trt.IProgressMonitor):
            def phase_start(self, name):
                self.ours = 1
    def use(self, ours):
        self.n.attr_of_int
        return str(self.engine.num_io_tensors)
def leak(trt, obj):
    obj.not_followed
def caller(trt):
    leak(trt, trt.Builder(None))
    print(trt.Builder(None), file=None)
    open(trt.Builder(None))
'''
    audit = audit_sources({"flows.py": source})
    direct = audit.names(guarded=False)
    assert {"Runtime", "Logger", "ICudaEngine", "via_annotation", "deserialize_cuda_engine", "tensors",
            "via_loop", "IProgressMonitor", "phase_start", "num_io_tensors", "Builder"} <= direct
    assert audit.names(guarded=True) == {"maybe_missing"}
    assert not {"ours", "runtime", "engine", "not_followed", "attr_of_int"} & direct
    assert len(audit.problems) == 2, audit.problems
    assert "leak()" in audit.problems[0] and "open()" in audit.problems[1]
