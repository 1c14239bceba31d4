"""Ahead-of-time compilation of the MatchingScore kernel for sm_75 / sm_80 / sm_86 / sm_89 / sm_90 (no GPU needed)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from onerank_export.engine.kernel import aot
from onerank_export.engine.kernel.matching_score import LAUNCH_CONFIGS

PLUGIN_DIR = Path(__file__).resolve().parents[3] / "plugins" / "matching_score"
EXPECTED_SM = {75: "75", 80: "80", 86: "86", 89: "89", 90: "90a"}  # Triton targets sm_90a on compute capability 9.0
KERNEL_PARAMS = ["z_ptr", "r_ptr", "valid_ptr", "out_ptr", "num_rows", "num_tasks", "rows_per_batch", "d_model",
                 "scale"]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """All four archs compiled once per module, from a cold Triton cache so the compiler really runs."""
    from triton import knobs

    out = tmp_path_factory.mktemp("kernels")
    with knobs.cache.scope():
        knobs.cache.dir = str(tmp_path_factory.mktemp("triton-cache"))
        start = time.perf_counter()
        images = aot.compile_all(aot.ARCHS)
        seconds = time.perf_counter() - start
    header = aot.write_kernels(images, out)
    print(f"\nAOT: {len(images)} images in {seconds:.1f} s (cold Triton cache)")
    return images, out, header


def test_an_image_per_arch_dtype_and_launch_config(compiled):
    images, out, _ = compiled
    expected = {(a, d, c.name) for a in aot.ARCHS for d in aot.DTYPES for c in LAUNCH_CONFIGS}
    assert {(i.arch, i.dtype, i.config.name) for i in images} == expected
    for img in images:
        assert (out / f"{img.stem}.cubin").read_bytes() == img.cubin
        assert (out / f"{img.stem}.ptx").read_text() == img.ptx


def test_cubins_are_cuda_elf_for_their_sm(compiled):
    images, out, _ = compiled
    for img in images:
        data = (out / f"{img.stem}.cubin").read_bytes()
        assert data[:4] == b"\x7fELF" and int.from_bytes(data[18:20], "little") == aot.EM_CUDA, img.stem
        assert img.elf_sm == EXPECTED_SM[img.arch], img.stem
        assert aot.cubin_sm(data) == EXPECTED_SM[img.arch]
        assert re.search(rf"^\.target\s+sm_{EXPECTED_SM[img.arch]}\b", img.ptx, flags=re.M), img.stem


def test_no_spills_and_resources_recorded(compiled):
    images, _, _ = compiled
    for img in images:
        res = img.resources
        assert res.local_bytes == 0 and res.stack_bytes == 0, f"{img.stem} spills: {res}"
        assert 0 < res.registers <= 128, f"{img.stem}: {res.registers} registers limits occupancy"
        assert 0 <= img.launch_shared_bytes <= 48 * 1024, img.stem


def test_aligned_config_really_vectorizes(compiled):
    """The divisibility hints are what the vec16 flavour is for: 128-bit loads; generic has none."""
    images, _, _ = compiled
    for img in images:
        vector_loads = re.findall(r"ld\.global(?:\.\w+)*\.v[24]\.", img.ptx)
        assert bool(vector_loads) == img.config.aligned, img.stem


def test_parameter_list_includes_tritons_scratch_pointers(compiled):
    images, _, _ = compiled
    for img in images:
        entry = re.search(rf"\.entry\s+{img.entry}\s*\((.*?)\)", img.ptx, flags=re.S).group(1)
        assert len(re.findall(r"\.param", entry)) == len(img.params)
        assert [p.name for p in img.params] == [*KERNEL_PARAMS, *aot.SCRATCH_PARAMS]
        assert [p.role for p in img.params].count("scratch") == 2


def test_portable_ptx_and_one_ptxas(compiled):
    images, _, _ = compiled
    for img in images:
        assert img.ptx_isa == ("8.0" if img.arch == 90 else "7.8"), img.stem
        assert img.ptxas_version.startswith("12."), "cubins must load on CUDA 12 drivers"


def test_kernels_json_describes_every_image(compiled):
    images, out, _ = compiled
    meta = json.loads((out / aot.KERNELS_JSON).read_text())
    assert meta["entry"] == "matching_score_kernel"
    assert [p["name"] for p in meta["params"]] == [*KERNEL_PARAMS, *aot.SCRATCH_PARAMS]
    assert len(meta["images"]) == len(images)
    for entry, img in zip(meta["images"], images, strict=True):
        assert (out / entry["cubin"]).exists() and (out / entry["ptx"]).exists()
        for key in ("registers", "local_bytes", "stack_bytes", "static_shared_bytes", "launch_shared_bytes",
                    "num_warps", "block_rows", "block_d"):
            assert isinstance(entry[key], int), key
        assert entry["registers"] == img.resources.registers
        assert entry["block_rows"] == img.config.block_rows


def _cuda_include() -> Path | None:
    for root in ("/usr/local/cuda", *(str(Path(p).resolve().parents[1]) for p in filter(None, [shutil.which("nvcc")]))):
        if (Path(root) / "include" / "cuda.h").exists():
            return Path(root) / "include"
    return None


def test_generated_header_compiles_with_the_launcher(compiled):
    """The launcher static_asserts the parameter list; compiling it against this header checks they agree."""
    _, out, header = compiled
    cxx, cuda_include = shutil.which("g++"), _cuda_include()
    if cxx is None or cuda_include is None:
        pytest.skip("needs g++ and the CUDA headers (cuda.h)")
    text = header.read_text()
    assert f"constexpr int32_t kNumImages = {len(compiled[0])};" in text
    cmd = [cxx, "-std=c++17", "-fsyntax-only", "-Wall", "-Wextra", "-Werror", "-isystem", str(cuda_include),
           f"-I{PLUGIN_DIR}", f"-I{out}", str(PLUGIN_DIR / "matchingScoreKernel.cpp")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]


# ----- the plugin's launcher against a fake CUDA driver (tests/engine/cpp/launcher_harness.cpp) ----------------------

HARNESS_SOURCE = Path(__file__).parents[1] / "cpp" / "launcher_harness.cpp"
CUDA_ERROR_INVALID_VALUE, CUDA_ERROR_OUT_OF_MEMORY, CUDA_ERROR_INVALID_CONTEXT = 1, 2, 201
CUDA_ERROR_NO_BINARY_FOR_GPU = 209
FP32, FP16 = 0, 1


@pytest.fixture(scope="module")
def launcher(compiled, tmp_path_factory):
    """Run scenarios through the real launchMatchingScore; returns one dict per scenario."""
    _, out, _ = compiled
    cxx, cuda_include = shutil.which("g++"), _cuda_include()
    if cxx is None or cuda_include is None:
        pytest.skip("needs g++ and the CUDA headers (cuda.h)")
    exe = tmp_path_factory.mktemp("harness") / "launcher_harness"
    cmd = [cxx, "-std=c++17", "-O0", "-Wall", "-Wextra", "-Werror", "-isystem", str(cuda_include), f"-I{PLUGIN_DIR}",
           f"-I{out}", str(HARNESS_SOURCE), "-o", str(exe)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]

    def run(*scenarios: dict) -> list[dict]:
        defaults = {"dtype": "fp32", "b": 2, "n": 7, "k": 3, "d": 64, "misalign": 0, "fail_cubin": 0, "fail_after": -1,
                    "switch_ctx": 0, "repeat": 1}
        args = [" ".join(f"{key}={value}" for key, value in {**defaults, **s}.items()) for s in scenarios]
        result = subprocess.run([str(exe), *args], capture_output=True, text=True, check=True)
        return [json.loads(line) for line in result.stdout.splitlines()]

    return run


def configs_loaded(res: dict) -> list[str]:
    return [ld["config"] for ld in res["loads"] if ld["accepted"]]


@pytest.mark.parametrize(("cc", "dtype", "kind", "sm"), [
    (75, "fp32", "cubin", 75), (75, "fp16", "cubin", 75), (80, "fp32", "cubin", 80), (86, "fp16", "cubin", 86),
    (87, "fp32", "cubin", 86), (89, "fp16", "cubin", 89),
    (90, "fp32", "cubin", 90), (100, "fp32", "ptx", 89), (120, "fp16", "ptx", 89),
])
def test_launcher_picks_an_image_the_device_runs(launcher, cc, dtype, kind, sm):
    (res,) = launcher({"cc": cc, "dtype": dtype})
    assert res["status"] == 0, res["messages"]
    # Every launch configuration is loaded up front: the one a launch takes depends on its pointers.
    assert [(ld["kind"], ld["sm"], ld["accepted"]) for ld in res["loads"]] == [(kind, sm, True)] * len(LAUNCH_CONFIGS)
    assert sorted(configs_loaded(res)) == sorted(c.name for c in LAUNCH_CONFIGS)
    assert {ld["dtype"] for ld in res["loads"]} == {FP16 if dtype == "fp16" else FP32}
    assert res["launches"] == 1 and res["launched"]["sm"] == sm


def test_launcher_passes_the_kernels_arguments(launcher, compiled):
    images, _, _ = compiled
    (res,) = launcher({"cc": 86, "b": 2, "n": 7, "k": 3, "d": 64})
    assert res["launched"]["config"] == "vec16"
    vec16 = next(c for c in LAUNCH_CONFIGS if c.name == "vec16")
    rows = 2 * 7 * 3
    assert res["grid"] == -(-rows // vec16.block_rows) and res["block"] == vec16.num_warps * 32
    image = next(i for i in images if (i.arch, i.dtype, i.config.name) == (86, "fp32", "vec16"))
    assert res["shared"] == image.launch_shared_bytes
    assert res["pointer_offsets"] == [0, 1024, 2048, 3072]  # z, r, valid, scores in the kernel's order
    assert res["ints"] == [rows, 3, 7 * 3, 64] and res["scale"] == 0.125
    assert res["scratch"] == [0, 0]


@pytest.mark.parametrize(("change", "why"), [({"d": 50}, "d_model % 16"), ({"misalign": 4}, "r not 16-byte aligned")])
def test_launcher_falls_back_to_the_generic_config(launcher, change, why):
    (res,) = launcher({"cc": 80, **change})
    generic = next(c for c in LAUNCH_CONFIGS if not c.aligned)
    assert res["launched"]["config"] == generic.name, why
    assert res["grid"] == -(-42 // generic.block_rows)


def test_launcher_jits_ptx_when_the_driver_rejects_the_cubin(launcher):
    (res,) = launcher({"cc": 90, "fail_cubin": 1})
    expected = [("cubin", 90, False), ("ptx", 89, True)] * len(LAUNCH_CONFIGS)
    assert [(ld["kind"], ld["sm"], ld["accepted"]) for ld in res["loads"]] == expected
    assert res["status"] == 0 and "PTX (JIT)" in res["messages"]
    assert res["launched"]["sm"] == 89


def test_launcher_returns_errors_instead_of_launching(launcher):
    old_gpu, empty, too_many = launcher({"cc": 70}, {"cc": 80, "n": 0}, {"cc": 80, "b": 2**20, "n": 2**10, "k": 3})
    assert old_gpu["status"] == CUDA_ERROR_NO_BINARY_FOR_GPU and "sm_70" in old_gpu["messages"]
    assert old_gpu["launches"] == 0 and old_gpu["live_modules"] == 0
    assert empty["status"] == 0 and empty["launches"] == 0
    assert too_many["status"] == CUDA_ERROR_INVALID_VALUE and too_many["launches"] == 0


def test_a_launch_in_another_context_is_refused_and_loads_nothing(launcher):
    (res,) = launcher({"cc": 86, "switch_ctx": 1})
    assert res["status"] == CUDA_ERROR_INVALID_CONTEXT and res["launches"] == 0
    assert "enqueue runs in CUDA context 0x10100 but onShapeChange loaded the kernels into 0x10000" in res["messages"]
    assert res["calls"]["launch"]["module_loads"] == 0
    # Unloading pushes the kernels' own context, whichever is current.
    assert res["unload_status"] == 0 and res["live_modules"] == 0 and res["bad_unloads"] == 0


def test_a_load_failing_part_way_leaves_no_module_behind(launcher):
    (res,) = launcher({"cc": 80, "fail_after": 1})  # the driver runs out of memory after the first module
    assert res["status"] == CUDA_ERROR_OUT_OF_MEMORY and "cannot load a kernel for sm_80 fp32" in res["messages"]
    assert res["calls"]["load"]["module_unloads"] == 1 and res["live_modules"] == 0 and res["bad_unloads"] == 0
    assert res["launches"] == 0


def test_launches_load_and_allocate_nothing(launcher):
    (res,) = launcher({"cc": 86, "repeat": 3})
    assert res["launches"] == 3 and res["status"] == 0
    calls = res["calls"]
    assert calls["load"]["module_loads"] == len(LAUNCH_CONFIGS) and calls["load"]["launches"] == 0
    assert calls["launch"] == {"module_loads": 0, "module_unloads": 0, "allocations": 0, "launches": 3}
    assert calls["unload"]["module_unloads"] == len(LAUNCH_CONFIGS)
    assert res["unload_status"] == 0 and res["live_modules"] == 0 and res["bad_unloads"] == 0
    assert res["messages"].split("|")[1:] == ["", "", ""]  # the load says what it loaded; launches say nothing
    assert res["messages"].startswith("device sm_86 uses the sm_86 fp32 vec16 cubin, the sm_86 fp32 generic cubin")


def test_cli_writes_the_same_artifacts(tmp_path):
    assert aot.main(["--out", str(tmp_path), "--arch", "80", "--quiet"]) == 0
    meta = json.loads((tmp_path / aot.KERNELS_JSON).read_text())
    assert {i["arch"] for i in meta["images"]} == {80}
    assert (tmp_path / aot.HEADER_NAME).exists()
    assert aot.main(["--out", str(tmp_path), "--arch", "70", "--quiet"]) == 1
