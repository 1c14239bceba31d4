"""The AOT step refuses a Triton it was not written for with one line, before anything is written.

Two fakes stand in for the Triton releases this machine does not have: `triton.__version__` set to an old
release (the floor check), and the real compiler's PTX with its `.entry` parameter list rewritten (the ABI check),
e.g. as Triton 3.4 emits it: the kernel's nine parameters and one scratch pointer instead of two.
"""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
import triton

from onerank_export.engine.kernel import aot
from onerank_export.errors import StageError

KERNEL_TYPES = ["u64"] * 4 + ["u32"] * 4 + ["f32"]  # z, r, valid, out; num_rows .. d_model; scale
PTR = ".param .u64 .ptr .global .align 1"


def run_aot(tmp_path, capsys) -> tuple[int, list[str]]:
    out = tmp_path / "kernels"
    code = aot.main(["--out", str(out), "--arch", "80", "--quiet"])
    lines = capsys.readouterr().out.splitlines()
    return code, lines


# ----- the version floor ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("version", ["3.4.0", "3.3.1", "3.2.0", "2.3.1", "nightly"])
def test_an_older_triton_is_one_line_before_any_compile(version, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(triton, "__version__", version)
    monkeypatch.setattr(triton, "compile", lambda *a, **k: pytest.fail("compiled on an unsupported Triton"))
    code, lines = run_aot(tmp_path, capsys)
    assert code == 1 and len(lines) == 1
    assert lines[0].startswith(f"error: triton {version} is too old to compile the MatchingScore kernel")
    assert "triton>=3.5 (AOT checked with 3.5.0 to 3.9.0)" in lines[0]
    assert "global_scratch and profile_scratch" in lines[0] and "triton.knobs" in lines[0]
    assert not (tmp_path / "kernels").exists()


@pytest.mark.parametrize("version", ["3.5.0", "3.5.1+git4a8d5e1", "3.6.0rc1", "3.9.0", "3.10.0", "4.0.0"])
def test_the_floor_and_newer_releases_pass_the_version_check(version, monkeypatch):
    monkeypatch.setattr(triton, "__version__", version)
    assert aot.require_supported_triton() == version  # 3.10 compares as a number, not below "3.5" as text


def test_the_installed_triton_is_supported():
    """What CI installs from the extras must pass its own floor (pyproject: triton>=3.5)."""
    major, minor = (int(x) for x in re.match(r"(\d+)\.(\d+)", triton.__version__).groups())
    assert (major, minor) >= aot.TRITON_FLOOR


# ----- the compiled parameter list --------------------------------------------------------------------------------

def entry(types: list[str], name: str = "matching_score_kernel") -> str:
    params = ",\n".join(f"\t{PTR if t == 'u64' else '.param .' + t} {name}_param_{i}" for i, t in enumerate(types))
    return f".version 7.8\n.target sm_80\n.visible .entry {name}(\n{params}\n)\n{{\n\tret;\n}}\n"


def test_the_expected_list_is_named_kernel_then_scratch():
    params = aot.entry_params(entry([*KERNEL_TYPES, "u64", "u64"]), "matching_score_kernel", aot.signature("fp32"))
    assert [p.name for p in params][-3:] == ["scale", *aot.SCRATCH_PARAMS]
    assert [p.role for p in params] == ["kernel"] * 9 + ["scratch"] * 2


@pytest.mark.parametrize(("label", "types"), [
    ("one scratch pointer (Triton 3.4)", [*KERNEL_TYPES, "u64"]),
    ("three scratch pointers", KERNEL_TYPES + ["u64"] * 3),
    ("scratch pointers first", ["u64", "u64", *KERNEL_TYPES]),
    ("scale passed as u32", [*KERNEL_TYPES[:-1], "u32", "u64", "u64"]),
])
def test_a_parameter_list_the_launcher_does_not_pass_is_one_line(label, types, monkeypatch):
    monkeypatch.setattr(triton, "__version__", "3.99.0")
    with pytest.raises(StageError) as info:
        aot.entry_params(entry(types), "matching_score_kernel", aot.signature("fp16"))
    message = str(info.value)
    assert "\n" not in message, label
    assert message.startswith(f"triton 3.99.0 compiled matching_score_kernel with {len(types)} parameters"), label
    assert "9 kernel parameters then exactly the scratch pointers global_scratch, profile_scratch" in message
    assert "supported: triton>=3.5" in message


def rewrite_entry(ptx: str, change) -> str:
    """The real PTX with its .entry parameter lines passed through `change` (a list -> list function)."""
    match = re.search(r"(\.entry\s+\w+\s*\()(.*?)(\n\))", ptx, flags=re.S)
    lines = [ln.rstrip(",") for ln in match.group(2).strip("\n").split("\n")]
    return ptx[:match.start(2)] + "\n" + ",\n".join(change(lines)) + ptx[match.end(2):]


@pytest.mark.parametrize("change", ["triton-3.4", "scratch-first", "unchanged"])
def test_the_real_compile_is_checked_before_anything_is_written(change, tmp_path, capsys, monkeypatch):
    """triton.compile really runs; only its PTX (and, for 3.4, its metadata) is altered on the way out."""
    real_compile = triton.compile

    def fake_compile(*args, **kwargs):
        compiled = real_compile(*args, **kwargs)
        md = compiled.metadata._asdict()
        if change == "triton-3.4":  # as Triton 3.4 compiles it: no profile_scratch parameter nor its metadata
            ptx = rewrite_entry(compiled.asm["ptx"], lambda lines: lines[:-1])
            md = {k: v for k, v in md.items() if not k.startswith("profile_scratch")}
        elif change == "scratch-first":
            ptx = rewrite_entry(compiled.asm["ptx"], lambda lines: lines[-2:] + lines[:-2])
        else:  # the negative control: the fake itself changes nothing
            ptx = compiled.asm["ptx"]
        return SimpleNamespace(asm={**compiled.asm, "ptx": ptx}, metadata=SimpleNamespace(**md))

    monkeypatch.setattr(triton, "compile", fake_compile)
    code, lines = run_aot(tmp_path, capsys)
    if change == "unchanged":
        assert code == 0 and (tmp_path / "kernels" / aot.HEADER_NAME).exists()
        return
    assert code == 1 and len(lines) == 1
    assert lines[0].startswith(f"error: triton {triton.__version__} compiled matching_score_kernel with "
                               f"{10 if change == 'triton-3.4' else 11} parameters")
    assert "global_scratch, profile_scratch" in lines[0] and "supported: triton>=3.5" in lines[0]
    assert not (tmp_path / "kernels").exists()
