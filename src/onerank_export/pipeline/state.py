"""What the stages of one build hand to each other: typed fields, filled in pipeline order.

Each stage declares the fields it reads (`requires`) and fills (`provides`); the runner checks
at plan time that every requirement is provided by an earlier stage."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from onerank_export.config import OneRankConfig
from onerank_export.pipeline.options import BuildOptions
from onerank_export.precision import Precision

if TYPE_CHECKING:
    from onerank_export.model.onerank import OneRankModel
    from onerank_export.serving.repository import ModelRepository, UserCacheModels

# The fields of BuildState a stage may name in `requires` / `provides`.
MODEL, ONNX, ENGINES, PLUGIN_LIBRARY = "model", "onnx", "engines", "plugin_library"
ONNX_CPU, REPOSITORY, USER_CACHE = "onnx_cpu", "repository", "user_cache"


@dataclass
class BuildState:
    options: BuildOptions
    checkpoint: Path  # resolved: the user's directory or the cached demo checkpoint
    work: Path  # the temporary build directory, renamed to options.out when the build finishes
    model: OneRankModel | None = None
    checkpoint_sha256: str = ""
    onnx: dict[Precision, Path] = field(default_factory=dict)  # models written so far, by precision
    engines: dict[Precision, Path] = field(default_factory=dict)  # TensorRT plans, by precision
    plugin_library: Path | None = None
    onnx_cpu: dict[Precision, Path] = field(default_factory=dict)  # after the exact CPU rewrite (cpu target)
    repository: ModelRepository | None = None  # the Triton model repository, once written
    user_cache: UserCacheModels | None = None  # the user encoder and candidate scorer (build --user-cache)

    @property
    def config(self) -> OneRankConfig:
        if self.model is None:
            raise RuntimeError("no model loaded yet: the checkpoint stage runs first")
        return self.model.cfg
