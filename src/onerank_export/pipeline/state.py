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
    from onerank_export.serving.repository import ModelRepository, SplitModels, UserCacheModels

# The fields of BuildState a stage may name in `requires` / `provides`.
MODEL, ONNX, ENGINES, PLUGIN_LIBRARY = "model", "onnx", "engines", "plugin_library"
ONNX_CPU, REPOSITORY, USER_CACHE = "onnx_cpu", "repository", "user_cache"
EMBEDDINGS = "split"
USER_CACHE_VARIANTS = "user_cache_variants"
SPLIT_VARIANTS, SPLIT_ENGINES = "split_variants", "split_engines"


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
    # split mode: the embedding store + the dense ONNX taking looked-up rows; `onnx` then stays empty
    # (every runner of an `onnx` model feeds the five contract tensors only)
    split: SplitModels | None = None
    split_variants: dict[Precision, Path] = field(default_factory=dict)  # dense ONNX of fp16 / int8 (split mode)
    split_engines: dict[Precision, Path] = field(default_factory=dict)  # TensorRT plans of the dense graphs
    # (user encoder, candidate scorer) ONNX of the other precisions (fp16 / int8 halves), by precision;
    # the fp32 pair is `user_cache`. The engine stage builds a plan pair for every precision of either.
    user_cache_variants: dict[Precision, tuple[Path, Path]] = field(default_factory=dict)
    user_cache_engines: dict[Precision, tuple[Path, Path]] = field(default_factory=dict)  # their TensorRT plans

    def user_cache_halves(self) -> dict[Precision, tuple[Path, Path]]:
        """Every precision's (user encoder, candidate scorer) ONNX this build has, fp32 first."""
        fp32 = {Precision.FP32: (self.user_cache.encoder, self.user_cache.scorer)} if self.user_cache else {}
        return {**fp32, **self.user_cache_variants}

    def split_dense(self) -> dict[Precision, Path]:
        """Every precision's split dense ONNX this build has, fp32 first (empty outside split mode)."""
        fp32 = {Precision.FP32: self.split.dense} if self.split else {}
        return {**fp32, **self.split_variants}

    @property
    def config(self) -> OneRankConfig:
        if self.model is None:
            raise RuntimeError("no model loaded yet: the checkpoint stage runs first")
        return self.model.cfg
