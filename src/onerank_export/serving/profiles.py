"""Where a repository runs and how its models share the host: targets and serving profiles.

A target says which hardware every model of a repository runs on (`gpu`: KIND_GPU instance
groups only; `cpu`: KIND_CPU only): a model never mixes the two, because Triton refuses a
KIND_GPU group on a host without a GPU and, on a host with one, spreads requests over both
groups, so the CPU instance sets the tail latency.

A profile says how the models use the host's cores (CPU) or the device (GPU):
  latency     one instance per model with every core in its intra-op pool, no batching delay:
              one request uses the whole host, the fastest a request at low load gets through Triton.
  throughput  several instances, each with its share of the cores, and a short batching delay:
              requests run side by side and the host stays busy under load.
The numbers behind the CPU defaults: docs/benchmarks.md ("Through Triton"), reproduced by
tools/bench/bench_triton.py. The GPU instance counts are not measured (no GPU here). Thread counts
are the build host's usable cores: build on (or pass --threads for) the host that serves.
"""

from __future__ import annotations

import enum
import os
from dataclasses import asdict, dataclass
from typing import Any

from onerank_export.errors import ConfigError


class Target(str, enum.Enum):
    GPU = "gpu"
    CPU = "cpu"

    def __str__(self) -> str:
        return self.value


TARGET_CHOICES = ("gpu", "cpu", "auto")
PROFILES = ("latency", "throughput")
# Dynamic batching delay of the throughput profile: long enough for concurrent requests of one shape to meet,
# short against a request's own compute (milliseconds).
THROUGHPUT_QUEUE_DELAY_US = 200
GPU_THROUGHPUT_INSTANCES = 2  # two execution contexts overlap one request's copies with another's compute


@dataclass(frozen=True)
class ServingPlan:
    """What every model of one repository gets."""

    target: Target
    target_reason: str  # why this target (auto: what the host has)
    profile: str
    instances: int  # instance count of each model
    threads: int  # ONNX Runtime intra-op threads of each CPU instance (0 on GPU: the device computes)
    queue_delay_us: int  # dynamic batching max_queue_delay_microseconds

    def describe(self) -> dict[str, Any]:
        out = asdict(self)
        out["target"] = self.target.value
        return out


def usable_cores() -> int:
    """The CPUs this process may run on (affinity and cpusets included), which os.cpu_count() ignores."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def choose_target(requested: str, cuda_device: bool | None = None) -> tuple[Target, str]:
    """(target, why). `auto` picks what this host has: a CUDA device -> gpu, else cpu."""
    if requested not in TARGET_CHOICES:
        raise ConfigError(f"--target {requested!r}: expected one of {', '.join(TARGET_CHOICES)}")
    if requested != "auto":
        return Target(requested), f"--target {requested}"
    if cuda_device is None:
        from onerank_export.host import cuda_device_present

        cuda_device = cuda_device_present()
    if cuda_device:
        return Target.GPU, "--target auto: this host has a CUDA device"
    return Target.CPU, "--target auto: this host has no CUDA device"


def serving_plan(target: Target, target_reason: str, profile: str, *, instances: int | None = None,
                 threads: int | None = None, cores: int | None = None) -> ServingPlan:
    """The instances, threads and batching delay of `profile` on `target`; explicit counts override."""
    if profile not in PROFILES:
        raise ConfigError(f"--serving-profile {profile!r}: expected one of {', '.join(PROFILES)}")
    for name, value in (("--instances", instances), ("--threads", threads)):
        if value is not None and value < 1:
            raise ConfigError(f"{name} {value}: must be >= 1")
    cores = cores or usable_cores()
    if target is Target.GPU:
        count = instances or (1 if profile == "latency" else GPU_THROUGHPUT_INSTANCES)
        if threads is not None:
            raise ConfigError("--threads applies to CPU models only; a gpu-target repository computes on the device")
        return ServingPlan(target, target_reason, profile, count, 0,
                           0 if profile == "latency" else THROUGHPUT_QUEUE_DELAY_US)
    if profile == "latency":
        count = instances or 1
        per_instance = threads or max(1, cores // count)
        delay = 0
    else:
        count = instances or max(1, min(2, cores))
        per_instance = threads or max(1, cores // count)
        delay = THROUGHPUT_QUEUE_DELAY_US
    return ServingPlan(target, target_reason, profile, count, per_instance, delay)
