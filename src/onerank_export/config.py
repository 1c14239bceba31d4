"""The one OneRank configuration: model dimensions, vocabularies, limits, training and serving ranges.

It serialises to `config.json` inside a checkpoint. Loading is strict: an unknown field, a
wrong type or an inconsistent value is a one-line `ConfigError` naming the field.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onerank_export.errors import ConfigError

CONFIG_FORMAT = "onerank-config/1"
MASK_MODES = ("parallel", "null", "cascade", "hybrid")


@dataclass(frozen=True)
class ServingConfig:
    """Ranges of the dynamic axes for TensorRT optimisation profiles and Triton.

    Minimums are 1; maximums of L and N come from the model config. `opt_*` are the shapes
    TensorRT tunes for and Triton warms up with.
    """

    max_batch_size: int = 8
    opt_batch_size: int = 1
    opt_hist_len: int = 256
    opt_candidates: int = 512


@dataclass(frozen=True)
class OneRankConfig:
    tasks: tuple[str, ...] = ("click", "cart", "order")
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    d_ff: int = 256
    item_vocab_size: int = 10_000
    action_vocab_size: int = 5
    context_vocab_size: int = 512
    num_context_fields: int = 4
    num_cand_features: int = 8
    max_hist_len: int = 256
    max_candidates: int = 512
    num_anchor_tokens: int = 2
    # Cross-task interaction: parallel | null | cascade | hybrid (then hybrid_mask, K x K, 1 = visible).
    mask_mode: str = "cascade"
    hybrid_mask: tuple[tuple[int, ...], ...] | None = None
    detach_cross_task: bool = True
    # Matching scorer: logit = score_scale * <z_k, r_k^i>; None means 1/sqrt(d_model).
    score_scale: float | None = None
    temperature: float = 0.5
    infonce_weight: float = 1.0
    bce_weight: float = 1.0
    layer_norm_eps: float = 1e-5
    serving: ServingConfig = field(default_factory=ServingConfig)

    def __post_init__(self) -> None:
        self.validate()

    # ----- derived -------------------------------------------------------------------------
    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    @property
    def scale(self) -> float:
        return float(self.score_scale) if self.score_scale is not None else 1.0 / math.sqrt(self.d_model)

    def task_visibility(self) -> list[list[bool]]:
        """K x K matrix: entry [k][j] says whether task k's query may read task j in the interaction."""
        k = self.num_tasks
        if self.mask_mode == "parallel":
            return [[i == j for j in range(k)] for i in range(k)]
        if self.mask_mode == "null":
            return [[True] * k for _ in range(k)]
        if self.mask_mode == "cascade":
            return [[j <= i for j in range(k)] for i in range(k)]
        assert self.hybrid_mask is not None
        return [[bool(v) or i == j for j, v in enumerate(row)] for i, row in enumerate(self.hybrid_mask)]

    # ----- (de)serialisation ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["tasks"] = list(self.tasks)
        if self.hybrid_mask is not None:
            d["hybrid_mask"] = [list(r) for r in self.hybrid_mask]
        return {"format": CONFIG_FORMAT, **d}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config") -> OneRankConfig:
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: expected a JSON object, got {type(raw).__name__}")
        raw = dict(raw)
        fmt = raw.pop("format", CONFIG_FORMAT)
        if fmt != CONFIG_FORMAT:
            raise ConfigError(f"{source}: format {fmt!r} is not supported (expected {CONFIG_FORMAT!r})")
        serving_raw = raw.pop("serving", {})
        kwargs = _typed_fields(cls, raw, source)
        kwargs["serving"] = ServingConfig(**_typed_fields(ServingConfig, serving_raw, f"{source}: serving"))
        if "tasks" in kwargs:
            kwargs["tasks"] = tuple(kwargs["tasks"])
        if kwargs.get("hybrid_mask") is not None:
            kwargs["hybrid_mask"] = tuple(tuple(int(v) for v in row) for row in kwargs["hybrid_mask"])
        try:
            return cls(**kwargs)
        except ConfigError as exc:  # name the file, not just "config"
            raise ConfigError(str(exc).replace("config:", f"{source}:", 1)) from None

    @classmethod
    def load(cls, path: str | Path) -> OneRankConfig:
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: not found; a checkpoint needs config.json beside model.safetensors") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
        return cls.from_dict(raw, source=str(path))

    def replace(self, **changes: Any) -> OneRankConfig:
        return dataclasses.replace(self, **changes)

    # ----- validation ----------------------------------------------------------------------
    def validate(self, source: str = "config") -> None:
        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"{source}: field '{name}' {why}")

        positive = ("d_model", "n_layers", "n_heads", "d_ff", "item_vocab_size", "action_vocab_size",
                    "context_vocab_size", "num_context_fields", "num_cand_features", "max_hist_len",
                    "max_candidates")
        for name in positive:
            if getattr(self, name) < 1:
                raise bad(name, f"must be >= 1, got {getattr(self, name)}")
        if self.num_anchor_tokens < 0:
            raise bad("num_anchor_tokens", f"must be >= 0, got {self.num_anchor_tokens}")
        if self.d_model % self.n_heads:
            raise bad("n_heads", f"must divide d_model={self.d_model}, got {self.n_heads}")
        if not self.tasks or len(set(self.tasks)) != len(self.tasks) or not all(
            isinstance(t, str) and t.isidentifier() for t in self.tasks
        ):
            raise bad("tasks", f"must be unique identifiers, got {list(self.tasks)}")
        for name in ("item_vocab_size", "action_vocab_size", "context_vocab_size"):
            if getattr(self, name) < 2:
                raise bad(name, "must be >= 2 (id 0 is padding)")
        if self.mask_mode not in MASK_MODES:
            raise bad("mask_mode", f"must be one of {', '.join(MASK_MODES)}, got {self.mask_mode!r}")
        k = self.num_tasks
        if self.mask_mode == "hybrid":
            m = self.hybrid_mask
            if m is None or len(m) != k or any(len(r) != k or any(v not in (0, 1) for v in r) for r in m):
                raise bad("hybrid_mask", f"must be a {k}x{k} matrix of 0/1 when mask_mode is 'hybrid'")
        elif self.hybrid_mask is not None:
            raise bad("hybrid_mask", f"is only allowed with mask_mode 'hybrid', not {self.mask_mode!r}")
        if self.score_scale is not None and not (self.score_scale > 0 and math.isfinite(self.score_scale)):
            raise bad("score_scale", f"must be a positive finite number, got {self.score_scale}")
        if not self.temperature > 0:
            raise bad("temperature", f"must be > 0, got {self.temperature}")
        if self.infonce_weight < 0 or self.bce_weight < 0 or self.infonce_weight + self.bce_weight == 0:
            raise bad("infonce_weight", "and bce_weight must be >= 0 and not both 0")
        if not 0 < self.layer_norm_eps < 1:
            raise bad("layer_norm_eps", f"must be in (0, 1), got {self.layer_norm_eps}")
        s = self.serving
        if not 1 <= s.opt_batch_size <= s.max_batch_size:
            raise bad("serving.opt_batch_size", f"must be in [1, max_batch_size={s.max_batch_size}]")
        if not 1 <= s.opt_hist_len <= self.max_hist_len:
            raise bad("serving.opt_hist_len", f"must be in [1, max_hist_len={self.max_hist_len}]")
        if not 1 <= s.opt_candidates <= self.max_candidates:
            raise bad("serving.opt_candidates", f"must be in [1, max_candidates={self.max_candidates}]")


def _typed_fields(cls: type, raw: Any, source: str) -> dict[str, Any]:
    """Check names and JSON types of `raw` against the dataclass `cls`; return kwargs."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a JSON object, got {type(raw).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls) if f.name != "serving"}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ConfigError(f"{source}: unknown field '{unknown[0]}' (known fields: {', '.join(sorted(known))})")
    defaults = cls()
    out: dict[str, Any] = {}
    for name, value in raw.items():
        expected = type(getattr(defaults, name))
        if name in ("score_scale", "hybrid_mask") and value is None:
            out[name] = None
            continue
        if name == "score_scale":
            expected = float
        if name == "hybrid_mask":
            expected = tuple
        ok = (
            isinstance(value, bool) if expected is bool
            else isinstance(value, int) and not isinstance(value, bool) if expected is int
            else isinstance(value, (int, float)) and not isinstance(value, bool) if expected is float
            else isinstance(value, list) if expected is tuple
            else isinstance(value, expected)
        )
        if not ok:
            want = {tuple: "a list", float: "a number", int: "an integer", bool: "true or false", str: "a string"}
            raise ConfigError(f"{source}: field '{name}' must be {want[expected]}, got {json.dumps(value)}")
        out[name] = float(value) if expected is float else value
    return out
