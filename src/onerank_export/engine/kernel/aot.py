"""Compile the MatchingScore kernel ahead of time: cubin + PTX per (arch, dtype, launch config).

    python -m onerank_export.engine.kernel.aot --out DIR [--arch 80 86 89 90]

writes `DIR/matching_score.sm<cc>.<dtype>.<config>.{cubin,ptx}`, `DIR/kernels.json` (metadata) and
`DIR/matchingScoreKernels.h` (the images as byte arrays plus launch constants; the plugin includes it).
No GPU is needed: Triton lowers to PTX and its bundled ptxas assembles the cubin. Needs triton>=3.5
(TRITON_FLOOR); an older Triton, or one whose compiled parameter list is not the launcher's, is one line.

Choices that matter on the user's machine:
- every cubin is assembled by Triton's CUDA 12.x ptxas (12.9 in Triton 3.8/3.9, 12.8 in 3.5-3.7; also for
  sm_90, where Triton 3.9 would pick its 13.x "ptxas-blackwell"), so CUDA 12.x drivers can load them;
- the PTX declares the oldest ISA each target accepts (7.8; 8.0 for sm_90a), so a driver can JIT it
  on a GPU without an exact cubin;
- registers and local memory come from the cubin (`cuobjdump -res-usage`): Triton itself fills
  n_regs / n_spills only when it loads a kernel on a device.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path

from onerank_export.engine.kernel.header import render_kernel_header
from onerank_export.engine.kernel.image import ARCHS, KernelImage, KernelParam, ResourceUsage
from onerank_export.engine.kernel.matching_score import LAUNCH_CONFIGS, LaunchConfig, jit_kernel
from onerank_export.errors import StageError

DTYPES = ("fp32", "fp16")
PTX_ISA = {75: 78, 80: 78, 86: 78, 89: 78, 90: 80}  # the PTX ISA each target's PTX declares (x10)
EM_CUDA = 190  # ELF e_machine of NVIDIA cubins
# Triton appends these pointer parameters after the kernel's own; an AOT launcher passes null. profile_scratch
# arrived in 3.5 (triton-lang/triton#7258): Triton 3.4 compiles the same kernel with one trailing pointer.
SCRATCH_PARAMS = ("global_scratch", "profile_scratch")
# The oldest Triton with everything this module uses: triton.knobs (3.4) and that two-pointer launch ABI (3.5).
# Every release from 3.5.0 to 3.9.0 compiled the kernel with this module (docs/plugin.md#triton-versions); a newer
# one is allowed, and compile_image refuses it if its parameter list is not the one the launcher is written for.
TRITON_FLOOR = (3, 5)
SUPPORTED_TRITON = "triton>=3.5 (AOT checked with 3.5.0 to 3.9.0)"
# PTX .param type of each Triton signature type the kernel uses (pointers are u64); the launcher static_asserts them.
PTX_PARAM_TYPES = {"i32": "u32", "fp32": "f32"}
KERNELS_JSON = "kernels.json"
HEADER_NAME = "matchingScoreKernels.h"


def nvidia_tool(name: str) -> Path:
    """A tool from Triton's wheel (it ships ptxas, cuobjdump, nvdisasm), else from PATH."""
    import triton

    bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    if bundled.exists():
        return bundled
    found = shutil.which(name)
    if found is None:
        raise StageError(f"{name} not found: reinstall triton (its wheel bundles it) or put the CUDA toolkit on PATH")
    return Path(found)


def triton_version() -> str:
    import triton

    return str(getattr(triton, "__version__", "unknown"))


def require_supported_triton() -> str:
    """The installed Triton's version, or a one-line StageError when it is older than TRITON_FLOOR."""
    version = triton_version()
    match = re.match(r"(\d+)\.(\d+)", version)
    if match is None or (int(match[1]), int(match[2])) < TRITON_FLOOR:
        raise StageError(f"triton {version} is too old to compile the MatchingScore kernel ahead of time: it needs "
                         f"triton.knobs (3.4+) and the trailing {' and '.join(SCRATCH_PARAMS)} kernel parameters "
                         f"the plugin's launcher passes (3.5+); supported: {SUPPORTED_TRITON}: "
                         f"pip install -U 'triton>={TRITON_FLOOR[0]}.{TRITON_FLOOR[1]}'")
    return version


def signature(dtype: str) -> dict[str, str]:
    ptr = f"*{dtype}"
    return {"z_ptr": ptr, "r_ptr": ptr, "valid_ptr": "*i32", "out_ptr": "*fp32", "num_rows": "i32",
            "num_tasks": "i32", "rows_per_batch": "i32", "d_model": "i32", "scale": "fp32",
            "BLOCK_ROWS": "constexpr", "BLOCK_D": "constexpr"}


def compile_image(arch: int, dtype: str, config: LaunchConfig) -> KernelImage:
    """Compile one (arch, dtype, config) with triton.compile for GPUTarget("cuda", arch, 32)."""
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = jit_kernel()
    sig = signature(dtype)
    names = list(sig)
    # Divisibility hints are what make the aligned config use 128-bit loads; the plugin only picks it
    # when they hold (pointers 16-byte aligned, d_model % 16 == 0).
    hinted = ("z_ptr", "r_ptr", "valid_ptr", "out_ptr", "d_model") if config.aligned else ()
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in hinted}
    src = ASTSource(fn, sig, constexprs={"BLOCK_ROWS": config.block_rows, "BLOCK_D": config.block_d}, attrs=attrs)
    target = GPUTarget("cuda", arch, 32)
    backend = triton.compiler.make_backend(target)
    options = backend.parse_options({"num_warps": config.num_warps, "num_stages": config.num_stages,
                                     "enable_fp_fusion": True, "ptx_version": PTX_ISA[arch]})
    with knobs.nvidia.scope(), knobs.compilation.scope(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if "ptxas_blackwell" in knobs.nvidia.knob_descriptors:  # 3.6+; 3.5 has one ptxas for every arch anyway
            knobs.nvidia.ptxas_blackwell = knobs.nvidia.ptxas.path  # one ptxas (CUDA 12.x) for every arch
        knobs.compilation.disable_line_info = True  # smaller images; nothing here debugs SASS
        ptxas_version = knobs.nvidia.ptxas.version
        try:
            compiled = triton.compile(src, target=target, options=options.__dict__)
        except Exception as exc:  # triton raises CompilationError, RuntimeError (ptxas) ...
            raise StageError(f"compiling the MatchingScore kernel for sm_{arch} {dtype} failed: "
                             f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1]}") from exc
    md = compiled.metadata
    cubin, ptx = compiled.asm["cubin"], compiled.asm["ptx"]
    # The parameter list first: it is what differs between Triton releases, and it decides what the header says.
    params = entry_params(ptx, md.name, sig)
    # getattr: a Triton without profile scratch has no such field (and was refused by entry_params already).
    if getattr(md, "global_scratch_size", 0) or getattr(md, "profile_scratch_size", 0):
        raise StageError(f"sm_{arch} {dtype}: the kernel needs Triton scratch memory, which the plugin does not "
                         "allocate; simplify the kernel")
    return KernelImage(
        arch=arch, dtype=dtype, config=config, elf_sm=cubin_sm(cubin), cubin=cubin, ptx=ptx, entry=md.name,
        launch_shared_bytes=int(md.shared), params=params,
        resources=resource_usage(cubin, md.name), ptx_isa=ptx_directive(ptx, "version"), ptxas_version=ptxas_version,
    )


def entry_params(ptx: str, entry: str, sig: dict[str, str]) -> tuple[KernelParam, ...]:
    """The exact parameter list of the .entry, named: the kernel's own, then exactly Triton's SCRATCH_PARAMS.

    The launcher (plugins/matching_score/matchingScoreKernel.cpp) passes that many arguments of those types in that
    order, so any other list from this Triton is a one-line StageError here, before a header is written.
    """
    match = re.search(rf"\.entry\s+{re.escape(entry)}\s*\((.*?)\)", ptx, flags=re.S)
    if match is None:
        raise StageError(f"PTX has no .entry {entry}")
    types = re.findall(r"\.param\s+\.(\w+)", match.group(1))
    kernel = {n: t for n, t in sig.items() if t != "constexpr"}
    names = [*kernel, *SCRATCH_PARAMS]
    expected = [("u64" if t.startswith("*") else PTX_PARAM_TYPES.get(t)) for t in kernel.values()]
    expected += ["u64"] * len(SCRATCH_PARAMS)
    if len(types) != len(expected) or any(e is not None and e != t for e, t in zip(expected, types, strict=False)):
        want = ", ".join(f"{n}:{e or '?'}" for n, e in zip(names, expected, strict=True))
        raise StageError(f"triton {triton_version()} compiled {entry} with {len(types)} parameters "
                         f"({', '.join(types)}); the plugin's launcher passes {len(kernel)} kernel parameters then "
                         f"exactly the scratch pointers {', '.join(SCRATCH_PARAMS)} ({want}); "
                         f"supported: {SUPPORTED_TRITON}")
    return tuple(KernelParam(n, t, "kernel" if i < len(kernel) else "scratch")
                 for i, (n, t) in enumerate(zip(names, types, strict=True)))


def ptx_directive(ptx: str, name: str) -> str:
    match = re.search(rf"^\.{name}\s+(\S+)", ptx, flags=re.M)
    return match.group(1) if match else ""


def _cuobjdump(cubin: bytes, flag: str) -> str:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        proc = subprocess.run([str(nvidia_tool("cuobjdump")), flag, f.name], capture_output=True, text=True)
    if proc.returncode != 0:
        raise StageError(f"cuobjdump {flag} failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    return proc.stdout


def cubin_sm(cubin: bytes) -> str:
    """The SM the cubin's ELF header names ("80", "90a"); also checks it is a CUDA ELF."""
    if cubin[:4] != b"\x7fELF" or int.from_bytes(cubin[18:20], "little") != EM_CUDA:
        raise StageError("compiled kernel is not a CUDA ELF cubin")
    match = re.search(r"\bsm=(\w+)", _cuobjdump(cubin, "-elf"))
    if match is None:
        raise StageError("cuobjdump -elf did not report the cubin's SM")
    return match.group(1)


def resource_usage(cubin: bytes, entry: str) -> ResourceUsage:
    text = _cuobjdump(cubin, "-res-usage")
    match = re.search(rf"Function {re.escape(entry)}:\s*\n\s*(.*)", text)
    if match is None:
        raise StageError(f"cuobjdump -res-usage has no entry for {entry}")
    fields = dict(re.findall(r"([A-Z]+(?:\[\d+\])?):(\d+)", match.group(1)))
    return ResourceUsage(registers=int(fields["REG"]), stack_bytes=int(fields["STACK"]),
                         static_shared_bytes=int(fields["SHARED"]), local_bytes=int(fields["LOCAL"]),
                         constant_bytes=int(fields.get("CONSTANT[0]", 0)))


def compile_all(archs: Iterable[int] = ARCHS, progress: Callable[[str], None] | None = None) -> list[KernelImage]:
    require_supported_triton()  # before any compile: an old Triton fails on knobs or the ABI, not with this line
    images = []
    for arch in archs:
        if arch not in PTX_ISA:
            raise StageError(f"unsupported --arch {arch}; choose from {', '.join(map(str, ARCHS))}")
        for dtype in DTYPES:
            for config in LAUNCH_CONFIGS:
                start = time.perf_counter()
                images.append(compile_image(arch, dtype, config))
                if progress:
                    progress(f"sm_{arch} {dtype} {config.name}: {time.perf_counter() - start:.2f} s")
    return images


def metadata(images: list[KernelImage]) -> dict:
    import triton

    params = images[0].params
    if any(img.params != params for img in images):
        raise StageError("kernel images disagree on the parameter list")
    return {
        "generator": "python -m onerank_export.engine.kernel.aot",
        "triton_version": triton.__version__,
        "entry": images[0].entry,
        "params": [asdict(p) for p in params],
        "launch_configs": [asdict(c) for c in LAUNCH_CONFIGS],
        "images": [{
            "arch": img.arch, "elf_sm": img.elf_sm, "arch_specific": img.arch_specific, "dtype": img.dtype,
            "config": img.config.name, "block_rows": img.config.block_rows, "block_d": img.config.block_d,
            "num_warps": img.config.num_warps, "num_stages": img.config.num_stages,
            "launch_shared_bytes": img.launch_shared_bytes, **asdict(img.resources),
            "ptx_isa": img.ptx_isa, "ptxas_version": img.ptxas_version,
            "cubin": f"{img.stem}.cubin", "cubin_bytes": len(img.cubin),
            "cubin_sha256": hashlib.sha256(img.cubin).hexdigest(), "ptx": f"{img.stem}.ptx",
        } for img in images],
    }


def write_kernels(images: list[KernelImage], out_dir: Path) -> Path:
    """Write cubins, PTX, kernels.json and the C++ header into out_dir; returns the header path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for img in images:
        (out_dir / f"{img.stem}.cubin").write_bytes(img.cubin)
        (out_dir / f"{img.stem}.ptx").write_text(img.ptx)
    meta = metadata(images)
    (out_dir / KERNELS_JSON).write_text(json.dumps(meta, indent=2) + "\n")
    header = out_dir / HEADER_NAME
    header.write_text(render_kernel_header(images, meta))
    return header


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m onerank_export.engine.kernel.aot",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--arch", type=int, nargs="+", default=list(ARCHS), help="compute capabilities (x10)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    report = None if args.quiet else print
    try:
        start = time.perf_counter()
        images = compile_all(args.arch, progress=report)
        header = write_kernels(images, args.out)
    except StageError as exc:
        print(f"error: {exc}")
        return 1
    if report:
        report(f"{len(images)} images in {time.perf_counter() - start:.1f} s -> {header}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
