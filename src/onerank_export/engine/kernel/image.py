"""What one ahead-of-time compile of the MatchingScore kernel produces: the data `aot` makes and
`header` renders.

Its own module so the dependency runs one way (aot -> header -> image, aot -> image): the header
renderer needs these types, not the compiler that makes them (docs/benchmarks.md#kernel-image-module).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotation only: this module is plain data and needs no triton at import
    from onerank_export.engine.kernel.matching_score import LaunchConfig

# The GPU architectures (compute capability x10) the plugin embeds a cubin and PTX for: Turing (T4, sm_75)
# to Hopper. An older GPU has no image; the engine stage refuses it before building anything.
ARCHS = (75, 80, 86, 89, 90)


@dataclass(frozen=True)
class KernelParam:
    name: str
    ptx_type: str  # u64 (pointer), u32, f32
    role: str  # "kernel" | "scratch"


@dataclass(frozen=True)
class ResourceUsage:
    registers: int
    stack_bytes: int
    static_shared_bytes: int
    local_bytes: int  # per thread; register spills land here
    constant_bytes: int


@dataclass(frozen=True)
class KernelImage:
    arch: int
    dtype: str
    config: LaunchConfig
    elf_sm: str  # from the cubin's ELF header, e.g. "80", "90a"
    cubin: bytes
    ptx: str
    entry: str
    launch_shared_bytes: int  # dynamic shared memory to request at launch (Triton's metadata.shared)
    params: tuple[KernelParam, ...]
    resources: ResourceUsage
    ptx_isa: str
    ptxas_version: str

    @property
    def stem(self) -> str:
        return f"matching_score.sm{self.arch}.{self.dtype}.{self.config.name}"

    @property
    def arch_specific(self) -> bool:
        """sm_90a cubins and PTX run only on exactly compute capability 9.0."""
        return self.elf_sm.endswith("a")
