"""`build --embeddings inline|split|auto`: which mode a build runs in, decided in preflight from
config.json alone (embeddings/limits.py), and the one-line refusals of an inline build past a limit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from onerank_export.config import OneRankConfig
from onerank_export.embeddings.limits import big_tables, gib, inline_problems, needs_split
from onerank_export.errors import ConfigError
from onerank_export.pipeline.options import BuildOptions


@dataclass(frozen=True)
class EmbeddingPlan:
    mode: str  # "inline" | "split"
    reason: str  # why: the option, or auto's decision
    config: OneRankConfig

    def describe(self) -> dict[str, Any]:
        """The manifest's `embeddings` record."""
        return {"mode": self.mode, "reason": self.reason,
                "tables": {t.name: t.to_dict() for t in big_tables(self.config)}}


def plan_embeddings(options: BuildOptions, config: OneRankConfig) -> EmbeddingPlan:
    """The mode of this build, or a one-line ConfigError before any slow work."""
    mode, reason = options.embeddings, f"--embeddings {options.embeddings}"
    if mode == "auto":
        why = needs_split(config, options.split_threshold)
        mode = "split" if why else "inline"
        reason = f"auto: {why}" if why else \
            f"auto: every table under the split threshold of {gib(options.split_threshold)}"
    if mode == "inline":
        problems = inline_problems(config, tuple(p.value for p in options.precisions))
        if problems:
            raise ConfigError(problems[0])
    return EmbeddingPlan(mode, reason, config)
