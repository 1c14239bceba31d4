"""The `onerank::MatchingScore` kernel (Triton language), its launch configurations and a torch launcher.

    scores[b, n, k] = valid[b, n] != 0 ? sigmoid(scale * sum_d z[b, k, d] * r[b, n, k, d]) : 0

One flat "row" is one (b, n, k): row = (b * N + n) * K + k, so r viewed as [B*N*K, D] and the
output viewed as [B*N*K] are indexed by the row directly, valid by row // K and z by
(row // (N*K)) * K + row % K. Each program scores BLOCK_ROWS rows, walking D in BLOCK_D chunks
with an fp32 accumulator (fp16 inputs are widened on load), then applies scale, sigmoid and the
padding mask in registers: one read of r, one write of scores, no intermediate tensor.
A padded candidate's r row is never read (its loads are masked off).

The same source is executed on the CPU by Triton's interpreter (tests) and compiled ahead of
time to cubins for the TensorRT plugin (`engine/kernel/aot.py`). `LAUNCH_CONFIGS` is the one definition
of block sizes and warps that the AOT compiler, the plugin's generated header and the tests use.
"""

from __future__ import annotations

from dataclasses import dataclass

import triton
import triton.language as tl

MAX_ROWS = 2**31 - 1  # row indices are int32 (element offsets are int64)
ALIGNMENT_BYTES = 16  # what the "vec16" configuration assumes of every pointer


@dataclass(frozen=True)
class LaunchConfig:
    """One compiled flavour of the kernel."""

    name: str
    block_rows: int  # (b, n, k) rows per program
    block_d: int  # d_model chunk per loop step
    num_warps: int
    num_stages: int
    aligned: bool  # compiled assuming 16-byte-aligned pointers and d_model % 16 == 0 (vector loads)

    def accepts(self, d_model: int, pointers: tuple[int, ...]) -> bool:
        if not self.aligned:
            return True
        return d_model % 16 == 0 and all(p % ALIGNMENT_BYTES == 0 for p in pointers)


# The aligned flavour gets 128-bit loads; without the alignment hints every element is its own load, so the
# generic flavour halves the rows to keep its register count down (counts: docs/plugin.md#kernel-design).
LAUNCH_CONFIGS = (
    LaunchConfig("vec16", block_rows=32, block_d=64, num_warps=4, num_stages=2, aligned=True),
    LaunchConfig("generic", block_rows=16, block_d=64, num_warps=4, num_stages=2, aligned=False),
)


def select_config(d_model: int, pointers: tuple[int, ...]) -> LaunchConfig:
    """The first configuration whose assumptions hold; the plugin applies the same rule in C++."""
    return next(c for c in LAUNCH_CONFIGS if c.accepts(d_model, pointers))


@triton.jit
def matching_score_kernel(
    z_ptr,  # [B, K, D] fp32 | fp16
    r_ptr,  # [B, N, K, D] same type as z
    valid_ptr,  # [B, N] int32, nonzero = valid (the op's contract: export/custom_op.py)
    out_ptr,  # [B, N, K] fp32
    num_rows,  # B * N * K
    num_tasks,  # K
    rows_per_batch,  # N * K
    d_model,  # D
    scale,  # fp32
    BLOCK_ROWS: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    in_range = rows < num_rows
    is_valid = tl.load(valid_ptr + rows // num_tasks, mask=in_range, other=0) != 0
    z_rows = (rows // rows_per_batch) * num_tasks + rows % num_tasks
    # int64 element offsets: B*N*K*D can pass 2**31 at large N even when the row count does not.
    r_base = rows.to(tl.int64) * d_model
    z_base = z_rows.to(tl.int64) * d_model
    acc = tl.zeros([BLOCK_ROWS, BLOCK_D], dtype=tl.float32)
    for d0 in range(0, d_model, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        load_mask = is_valid[:, None] & (cols[None, :] < d_model)
        r = tl.load(r_ptr + r_base[:, None] + cols[None, :], mask=load_mask, other=0.0)
        z = tl.load(z_ptr + z_base[:, None] + cols[None, :], mask=load_mask, other=0.0)
        acc += r.to(tl.float32) * z.to(tl.float32)  # fp32 accumulation whatever the input type
    logit = tl.sum(acc, axis=1) * scale
    prob = 1.0 / (1.0 + tl.exp(-logit))
    tl.store(out_ptr + rows, tl.where(is_valid, prob, 0.0), mask=in_range)


def grid_size(num_rows: int, config: LaunchConfig) -> int:
    """Programs along grid x; the plugin computes the same."""
    return triton.cdiv(num_rows, config.block_rows)


def interpreter_active() -> bool:
    """True when TRITON_INTERPRET=1 was set before triton was imported (so triton.language runs on numpy)."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(tl.zeros, InterpretedFunction) and isinstance(matching_score_kernel, InterpretedFunction)


def jit_kernel() -> triton.runtime.JITFunction:
    """The kernel as a compilable JITFunction, even if TRITON_INTERPRET=1 made the decorator interpret."""
    if isinstance(matching_score_kernel, triton.runtime.JITFunction):
        return matching_score_kernel
    return triton.runtime.JITFunction(matching_score_kernel.fn)


def matching_score(z, r, valid, scale: float, *, config: LaunchConfig | None = None):
    """Launch the kernel on torch tensors: z [B,K,D], r [B,N,K,D] (fp32|fp16), valid [B,N] -> [B,N,K] fp32.

    `valid` is int32 (nonzero = valid, the op's contract) or bool (passed as 0/1 int32).

    CUDA tensors are compiled and launched by Triton. CPU tensors run through Triton's interpreter,
    which must have been enabled (TRITON_INTERPRET=1) before triton was first imported; from a
    process where it was not, use `engine.kernel.interpreter.run_interpreted`, which starts one that is.
    `config=None` picks the configuration the plugin would pick for these pointers and D.
    """
    import torch

    from onerank_export.errors import RequestError, StageError

    if z.dim() != 3 or r.dim() != 4 or valid.dim() != 2:
        raise RequestError(f"matching_score expects z [B,K,D], r [B,N,K,D], valid [B,N]; got "
                           f"{tuple(z.shape)}, {tuple(r.shape)}, {tuple(valid.shape)}")
    b, n, k, d = r.shape
    if tuple(z.shape) != (b, k, d) or tuple(valid.shape) != (b, n):
        raise RequestError(f"matching_score shapes disagree: z {tuple(z.shape)}, r {tuple(r.shape)}, "
                           f"valid {tuple(valid.shape)}")
    if z.dtype != r.dtype or z.dtype not in (torch.float32, torch.float16):
        raise RequestError(f"matching_score needs z and r both float32 or both float16; got {z.dtype}, {r.dtype}")
    if valid.dtype not in (torch.int32, torch.bool):
        raise RequestError(f"matching_score needs valid as int32 (nonzero = valid) or bool; got {valid.dtype}")
    if b * n * k > MAX_ROWS:
        raise RequestError(f"matching_score supports at most {MAX_ROWS} (b, n, k) rows; got {b * n * k}")
    on_cpu = r.device.type == "cpu"
    if on_cpu and not interpreter_active():
        raise StageError("the MatchingScore kernel runs on CPU tensors only under Triton's interpreter: set "
                         "TRITON_INTERPRET=1 before triton is imported, or use "
                         "engine.kernel.interpreter.run_interpreted")
    z, r = z.contiguous(), r.contiguous()
    valid_i32 = valid.to(torch.int32).contiguous()
    out = torch.empty((b, n, k), dtype=torch.float32, device=r.device)
    if out.numel() == 0:
        return out
    pointers = (z.data_ptr(), r.data_ptr(), valid_i32.data_ptr(), out.data_ptr())
    chosen = config or select_config(d, pointers)
    if not chosen.accepts(d, pointers):
        raise RequestError(f"launch configuration {chosen.name} needs d_model % 16 == 0 and 16-byte-aligned "
                           f"pointers; got d_model={d}")
    kernel = matching_score_kernel if on_cpu else jit_kernel()
    kernel[(grid_size(b * n * k, chosen),)](
        z, r, valid_i32, out, b * n * k, k, n * k, d, float(scale),
        BLOCK_ROWS=chosen.block_rows, BLOCK_D=chosen.block_d, num_warps=chosen.num_warps,
        num_stages=chosen.num_stages,
    )
    return out
