#!/usr/bin/env python
"""Why INT8 is (not) faster than fp32 in ONNX Runtime on this CPU, measured.

    python tools/bench/profile_int8.py [--out tools/bench/results]

1. CPU: the instruction sets ONNX Runtime's int8 kernels can use (AVX2 / AVX-512 VNNI / AMX).
2. GEMM: the model's linear shapes at L=256, N=512 (2048 group tokens x d=64) as single-node
   models: fp32 MatMul vs int8 MatMulInteger (s8s8, u8s8) vs Q/DQ -> MatMul (what ORT fuses
   into MatMulIntegerToFloat, activation quantization included).
3. Model: ORT's per-op-type kernel time for fp32, the default INT8 (weights' matmuls), an INT8
   with every matmul quantized (attention too), a CPU-only INT8 with uint8 activations (ORT's
   preferred u8s8 GEMM; TensorRT would reject it) and FP16, B=1, L=256, N=512, 2 threads; plus
   which fused kernels ORT's graph optimiser produced.
Prints tables, writes int8_profile.json.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from onerank_export.export.ort_session import cpu_session_options

THREADS = 2
HIST_LEN, CANDIDATES = 256, 512
GEMMS = {"qkv 2048x64x192": (2048, 64, 192), "out 2048x64x64": (2048, 64, 64),
         "ffn.up 2048x64x256": (2048, 64, 256), "ffn.down 2048x256x64": (2048, 256, 64)}


def cpu_flags() -> dict[str, bool]:
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags |= set(line.split(":", 1)[1].split())
    return {f: f in flags for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "avx512_fp16")}


def session(model):
    import onnxruntime as ort

    opts = cpu_session_options(THREADS)
    blob = model if isinstance(model, bytes) else model.SerializeToString()
    return ort.InferenceSession(blob, opts, providers=["CPUExecutionProvider"])


def timed(fn, seconds: float = 1.0) -> float:
    for _ in range(3):
        fn()
    times, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 20:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e3


def gemm_models(m: int, k: int, n: int) -> dict:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.normal(size=(k, n)).astype(np.float32)
    w8 = rng.integers(-127, 128, size=(k, n), dtype=np.int8)

    def model(nodes, inputs, inits):
        out = helper.make_tensor_value_info("y", TensorProto.FLOAT if "int" not in nodes[-1].op_type.lower()
                                            else TensorProto.INT32, None)
        return helper.make_model(helper.make_graph(nodes, "g", inputs, [out], inits),
                                 opset_imports=[helper.make_opsetid("", 20)])

    x32 = helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])
    scale = numpy_helper.from_array(np.array(0.05, np.float32), "s")
    wscale = numpy_helper.from_array(np.full(n, 0.01, np.float32), "ws")
    zp8 = numpy_helper.from_array(np.array(0, np.int8), "z")
    wzp = numpy_helper.from_array(np.zeros(n, np.int8), "wz")
    return {
        "fp32 MatMul": (model([helper.make_node("MatMul", ["x", "w"], ["y"])], [x32],
                              [numpy_helper.from_array(w, "w")]), np.float32),
        "int8 Q/DQ->MatMul": (model([
            helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
            helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
            helper.make_node("DequantizeLinear", ["w8", "ws", "wz"], ["wd"], axis=1),
            helper.make_node("MatMul", ["xd", "wd"], ["y"])], [x32],
            [scale, wscale, zp8, wzp, numpy_helper.from_array(w8, "w8")]), np.float32),
        "MatMulInteger s8s8": (model([helper.make_node("MatMulInteger", ["x", "w8"], ["y"])],
                                     [helper.make_tensor_value_info("x", TensorProto.INT8, [m, k])],
                                     [numpy_helper.from_array(w8, "w8")]), np.int8),
        "MatMulInteger u8s8": (model([helper.make_node("MatMulInteger", ["x", "w8"], ["y"])],
                                     [helper.make_tensor_value_info("x", TensorProto.UINT8, [m, k])],
                                     [numpy_helper.from_array(w8, "w8")]), np.uint8),
    }


def gemm_table() -> list[dict]:
    rows = []
    rng = np.random.default_rng(1)
    for label, (m, k, n) in GEMMS.items():
        for variant, (model, dtype) in gemm_models(m, k, n).items():
            x = rng.normal(size=(m, k)).astype(np.float32) if dtype == np.float32 else \
                rng.integers(0 if dtype == np.uint8 else -127, 128, size=(m, k)).astype(dtype)
            s = session(model)
            ms = timed(lambda s=s, x=x: s.run(None, {"x": x}))
            rows.append({"gemm": label, "variant": variant, "ms": ms, "gops": 2 * m * k * n / ms / 1e6})
    return rows


def model_variants(directory: Path) -> dict[str, Path]:
    """fp32 (random weights, bench config), default INT8, INT8 with every matmul, FP16."""
    import onnx
    import torch

    from onerank_export.calibration.fp16 import convert_fp16
    from onerank_export.calibration.int8 import quantize_int8
    from onerank_export.config import OneRankConfig
    from onerank_export.export.onnx_export import export_onnx
    from onerank_export.model.onerank import OneRankModel
    from onerank_export.parity.cases import random_request

    torch.manual_seed(0)
    cfg = OneRankConfig()
    fp32 = directory / "fp32.onnx"
    export_onnx(OneRankModel(cfg).eval(), fp32)
    rng = np.random.default_rng(0)
    batches = [random_request(cfg, rng, 4, 64, 64) for _ in range(4)]
    paths = {"fp32": fp32}
    default = quantize_int8(fp32, batches, method="minmax")
    every = quantize_int8(fp32, batches, method="minmax", force_low=["MatMul"])
    half = convert_fp16(onnx.load(str(fp32)), batches)
    for name, proto in (("int8", default.proto), ("int8-all-matmuls", every.proto), ("fp16", half.proto)):
        paths[name] = directory / f"{name}.onnx"
        onnx.save(proto, str(paths[name]))
    paths["int8-u8act"] = uint8_activation_variant(fp32, batches, directory, default.quantized_nodes)
    return paths


def uint8_activation_variant(fp32: Path, batches: list, directory: Path, nodes: list[str]) -> Path:
    """The same nodes with asymmetric uint8 activations: ORT CPU's preferred u8s8 GEMM. TensorRT
    rejects it (non-zero zero points), so the tool never produces it; it bounds what the CPU could do."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quant_pre_process, quantize_static

    pre, out = directory / "pre.onnx", directory / "int8-u8act.onnx"
    quant_pre_process(str(fp32), str(pre), skip_optimization=True, skip_symbolic_shape=True)
    model = onnx.load(str(pre))
    exclude = [n.name for n in model.graph.node if n.op_type in ("MatMul", "Gemm") and n.name not in nodes]
    reader = iter(batches)
    quantize_static(str(pre), str(out), type("Reader", (), {"get_next": lambda self: next(reader, None)})(),
                    quant_format=QuantFormat.QDQ, op_types_to_quantize=["MatMul", "Gemm"], per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=exclude,
                    extra_options={"WeightSymmetric": True, "QuantizeBias": False,
                                   "OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm"]})
    return out


def profile_model(path: Path, directory: Path) -> dict:
    import onnx
    import onnxruntime as ort

    from onerank_export.config import OneRankConfig
    from onerank_export.parity.cases import random_request

    feed = random_request(OneRankConfig(), np.random.default_rng(0), 1, HIST_LEN, CANDIDATES, full=True)
    timing_session = session(onnx.load(str(path)))
    p50 = timed(lambda: timing_session.run(None, feed), 3.0)
    opts = cpu_session_options(THREADS)
    opts.enable_profiling = True
    opts.profile_file_prefix = str(directory / f"profile_{path.stem}")
    optimized = directory / f"optimized_{path.name}"
    opts.optimized_model_filepath = str(optimized)
    s = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    runs = 30
    for _ in range(runs):
        s.run(None, feed)
    events = json.loads(Path(s.end_profiling()).read_text())
    by_op: collections.Counter[str] = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            by_op[e["args"]["op_name"]] += e["dur"] / runs / 1e3
    ops = collections.Counter(n.op_type for n in onnx.load(str(optimized)).graph.node)
    return {"p50_ms": p50, "kernel_ms": sum(by_op.values()), "op_ms": dict(by_op.most_common()),
            "optimized_nodes": {k: ops[k] for k in ("MatMul", "FusedMatMul", "MatMulIntegerToFloat",
                                                   "QLinearMatMul", "DynamicQuantizeMatMul", "QuantizeLinear",
                                                   "DequantizeLinear", "Cast") if ops[k]}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("tools/bench/results"))
    args = ap.parse_args()
    from rich.console import Console
    from rich.table import Table

    console = Console(width=140)
    args.out.mkdir(parents=True, exist_ok=True)
    flags = cpu_flags()
    console.print("CPU: " + ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in flags.items()))
    gemms = gemm_table()
    table = Table(title=f"single GEMM, {THREADS} threads (median ms, GOP/s)")
    for col in ("gemm", *dict.fromkeys(r["variant"] for r in gemms)):
        table.add_column(col, justify="left" if col == "gemm" else "right")
    for label in GEMMS:
        cells = [f"{r['ms']:.3f} ({r['gops']:.0f})" for r in gemms if r["gemm"] == label]
        table.add_row(label, *cells)
    console.print(table)
    with tempfile.TemporaryDirectory() as tmp:
        paths = model_variants(Path(tmp))
        models = {name: profile_model(path, Path(tmp)) for name, path in paths.items()}
    ops = sorted({op for m in models.values() for op in m["op_ms"]}, key=lambda op: -max(
        m["op_ms"].get(op, 0) for m in models.values()))[:14]
    table = Table(title=f"ORT kernel time per op type, B=1 L={HIST_LEN} N={CANDIDATES}, {THREADS} threads (ms/run)")
    table.add_column("op type")
    for name in models:
        table.add_column(name, justify="right")
    for op in ops:
        table.add_row(op, *[f"{m['op_ms'].get(op, 0):.2f}" for m in models.values()])
    table.add_row("[bold]sum of kernels[/]", *[f"{m['kernel_ms']:.2f}" for m in models.values()])
    table.add_row("[bold]p50 latency[/]", *[f"{m['p50_ms']:.2f}" for m in models.values()])
    console.print(table)
    for name, m in models.items():
        console.print(f"  {name}: optimised graph has {m['optimized_nodes']}")
    fp32 = models["fp32"]
    matmul_share = sum(fp32["op_ms"].get(op, 0) for op in ("MatMul", "FusedMatMul", "Gemm")) / fp32["kernel_ms"]
    speedups = {name: fp32["p50_ms"] / m["p50_ms"] for name, m in models.items()}
    console.print(f"matmuls are {100 * matmul_share:.0f}% of the fp32 kernel time: even free matmuls give at most "
                  f"{1 / (1 - matmul_share):.2f}x; measured speed-up vs fp32: "
                  + ", ".join(f"{k} {v:.2f}x" for k, v in speedups.items() if k != "fp32"))
    result = {"threads": THREADS, "shape": {"batch": 1, "hist_len": HIST_LEN, "num_candidates": CANDIDATES},
              "cpu_flags": flags, "gemm": gemms, "models": models, "fp32_matmul_share": matmul_share,
              "speedup_vs_fp32": speedups}
    (args.out / "int8_profile.json").write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {args.out / 'int8_profile.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
