"""What a build is asked to do: the options of `onerank-export build`, typed."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onerank_export.calibration.settings import METHODS
from onerank_export.embeddings.limits import MODES as EMBEDDING_MODES
from onerank_export.embeddings.limits import SPLIT_THRESHOLD_BYTES
from onerank_export.errors import ConfigError, StageError
from onerank_export.precision import REDUCED, Precision, Tolerance


class EngineMode(str, enum.Enum):
    """TensorRT engines: AUTO builds where CUDA + TensorRT exist (else the stage is skipped with the
    reason), REQUIRE fails the build up front where they are missing, SKIP never builds."""

    AUTO = "auto"
    REQUIRE = "require"
    SKIP = "skip"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, text: EngineMode | str) -> EngineMode:
        try:
            return cls(text)
        except ValueError:
            raise StageError(f"--engine {text!r}: expected one of {', '.join(m.value for m in cls)}") from None


@dataclass(frozen=True)
class BuildOptions:
    out: Path
    checkpoint: Path | None = None  # None: the bundled demo checkpoint (trained and cached on first use)
    precisions: tuple[Precision, ...] = REDUCED
    engine: EngineMode = EngineMode.AUTO
    plugin_library: Path | None = None  # a prebuilt libonerank_plugins.so; None: build it with CMake
    triton: bool = True
    calibration_method: str = "minmax"
    calibration_data: Path | None = None  # .npz / .parquet requests; None: the demo generator
    tolerances: dict[Precision, Tolerance] = field(default_factory=dict)
    force: bool = False
    seed: int = 0
    target: str = "auto"  # gpu | cpu | auto (what this host has): the hardware of the Triton repository
    serving_profile: str = "latency"  # latency | throughput: instances, threads and batching delay
    instances: int | None = None  # override the profile's instance count per model
    threads: int | None = None  # override the profile's ONNX Runtime threads per CPU instance
    # The cross-request user-state cache (docs/user-cache.md): export the user encoder and the candidate
    # scorer, check them, and serve the `onerank` model through the cache.
    user_cache: bool = False
    user_cache_bytes: int = 512 << 20  # the in-process tier's budget per model instance
    user_cache_redis: str | None = None  # redis:// URL of the shared tier, written into the model config
    # Where the item table lives (docs/embeddings.md): inline in the graph, split out into an embedding
    # store + a dense graph taking looked-up rows, or auto (split when embeddings/limits.py needs_split says so).
    embeddings: str = "auto"
    split_threshold: int = SPLIT_THRESHOLD_BYTES
    embedding_dtype: str = "fp32"  # split mode: the store's row storage, fp32 | fp16 | int8 (row-wise)
    embedding_oov: str = "pad"  # split mode: ids outside the table -> the pad row, or an error
    # split mode: where the served lookup reads rows: the memory-mapped store (mmap), or Redis (redis: the store
    # pushed there with `onerank-export embeddings push`; the build's own checks read the store)
    embedding_backend: str = "mmap"
    embedding_redis: str | None = None

    def __post_init__(self) -> None:
        # Accept the option strings too ("fp16", "auto"): Python callers need not import the enums.
        object.__setattr__(self, "precisions", tuple(Precision.parse(p) for p in self.precisions))
        object.__setattr__(self, "engine", EngineMode.parse(self.engine))
        object.__setattr__(self, "tolerances", {Precision.parse(p): t for p, t in self.tolerances.items()})
        for name, value, allowed in (("--embeddings", self.embeddings, EMBEDDING_MODES),
                                     ("--embedding-dtype", self.embedding_dtype, ("fp32", "fp16", "int8")),
                                     ("--embedding-oov", self.embedding_oov, ("pad", "error")),
                                     ("--embedding-backend", self.embedding_backend, ("mmap", "redis"))):
            if value not in allowed:
                raise ConfigError(f"{name} {value!r}: expected one of {', '.join(allowed)}")
        if (self.embedding_backend == "redis") != bool(self.embedding_redis):
            raise ConfigError("--embedding-backend redis and --embedding-redis URL go together: give both (the "
                              "URL of the Redis the store is pushed to), or neither for the memory-mapped store")
        if self.calibration_method not in METHODS:
            raise ConfigError(f"calibration method {self.calibration_method!r} is not one of {', '.join(METHODS)}")

    @property
    def checkpoint_source(self) -> str:
        return "demo" if self.checkpoint is None else "user"

    def describe(self) -> dict[str, Any]:
        """The manifest's `options` record."""
        return {"precisions": [p.value for p in self.precisions], "engine": self.engine.value,
                "triton": self.triton, "calibration_method": self.calibration_method, "seed": self.seed,
                "calibration_data": str(self.calibration_data) if self.calibration_data else None,
                "plugin_library": str(self.plugin_library) if self.plugin_library else None,
                "tolerances": {p.value: t.to_dict() for p, t in self.tolerances.items()},
                "target": self.target, "serving_profile": self.serving_profile, "instances": self.instances,
                "threads": self.threads, "user_cache": self.user_cache,
                "user_cache_bytes": self.user_cache_bytes if self.user_cache else None,
                "user_cache_redis": _without_password(self.user_cache_redis) if self.user_cache else None,
                "embeddings": self.embeddings, "split_threshold": self.split_threshold,
                "embedding_dtype": self.embedding_dtype,
                "embedding_oov": self.embedding_oov, "embedding_backend": self.embedding_backend,
                "embedding_redis": _without_password(self.embedding_redis)}


def _without_password(url: str | None) -> str | None:
    """The manifest is shared with people who must not read the Redis password."""
    if not url or "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
