"""How the product configures ONNX Runtime on the CPU: one place for the parity runner, the
Triton CPU model and the benchmarks, so what is verified is what is served and measured."""

from __future__ import annotations

import os
from pathlib import Path

# Flush denormals to zero (FTZ/DAZ) on ONNX Runtime's threads. Masked attention scores underflow
# exp() through the denormal range, and each denormal result costs an x86 microcode assist that
# makes ORT's Softmax over masked rows several times slower
# (docs/benchmarks.md#flush-to-zero-in-every-cpu-session). Only magnitudes below 1.2e-38 change,
# so parity does not move.
# ORT applies this to its intra-op pool threads, and to the calling thread only for the first
# session a process creates (a call_once inside ORT): the first session must carry it.
DENORMAL_AS_ZERO = ("session.set_denormal_as_zero", "1")


def default_threads() -> int:
    """Intra-op threads of a product CPU session when the caller names none: every core, at most 8
    (past that a request of this model gains nothing and the threads contend)."""
    return min(os.cpu_count() or 1, 8)


def cpu_session_options(threads: int, *, inter_op_threads: int | None = None, spinning: bool = True):
    """SessionOptions for the product's CPU sessions. `spinning=False`: the intra-op threads sleep as soon
    as a run ends instead of spinning for the next one; for sessions that run back to back (the user-state
    cache's encoder then scorer), where one session's spinning threads take the cores the next one needs."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    if inter_op_threads is not None:
        opts.inter_op_num_threads = inter_op_threads
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    opts.add_session_config_entry(*DENORMAL_AS_ZERO)
    return opts


def cpu_session(model, threads: int, *, inter_op_threads: int | None = None, spinning: bool = True):
    """An ONNX Runtime CPU session for `model` (a path, serialized bytes or a ModelProto) after the exact CPU
    rewrite of export/ort_cpu_graph.py: the one way the product runs a model on the CPU.

    A file already written after the rewrite (the cpu onnx stage's, a CPU repository's) is opened as
    it is, from its path: no copy of its weights in Python, external data read by ONNX Runtime."""
    import onnx
    import onnxruntime as ort

    from onerank_export.export.onnx_files import load_without_tables, session_from_proto
    from onerank_export.export.ort_cpu_graph import REWRITE_KEY, rewrite_for_ort_cpu

    opts = cpu_session_options(threads, inter_op_threads=inter_op_threads, spinning=spinning)
    providers = ["CPUExecutionProvider"]
    if isinstance(model, onnx.ModelProto):
        proto = rewrite_for_ort_cpu(model)  # a copy: the caller keeps its model
        return session_from_proto(proto, opts, providers)
    if isinstance(model, bytes):
        proto = onnx.load_from_string(model)
    else:
        head = onnx.load(str(model), load_external_data=False)
        if any(p.key == REWRITE_KEY for p in head.metadata_props):
            return ort.InferenceSession(str(model), opts, providers=providers)
        del head
        # The rewrite never reads an embedding table: ONNX Runtime reads it from the model's data file.
        proto = rewrite_for_ort_cpu(load_without_tables(model), inplace=True)
        return session_from_proto(proto, opts, providers, keep=False, tables_from=Path(model).parent)
    return session_from_proto(rewrite_for_ort_cpu(proto, inplace=True), opts, providers, keep=False)
