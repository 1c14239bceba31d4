"""What a calibration run is asked to do: data sizes, the INT8 method, node overrides, accuracy gates.

Defaults are sized for the demo checkpoint inside `build`, to keep each precision quick there
(timings: docs/precision.md#time-in-build); `onerank-export calibrate` exposes every field as an option.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from onerank_export.errors import ConfigError
from onerank_export.precision import REDUCED, Precision

METHODS = ("minmax", "entropy", "percentile")


@dataclass(frozen=True)
class AccuracyGates:
    """Limits on the reduced-precision model against fp32 eager on held-out requests.

    A gate that fails makes the run fail (exit 1, stage FAILED); it is never a warning.
    """

    max_auc_change: float = 0.002  # |AUC(precision) - AUC(fp32 eager)|, every task
    min_topk_overlap: float = 0.95  # mean per-request top-k overlap, over requests and tasks
    topk: int = 10
    max_fp16_abs_error: float = 5e-3  # max |score error| over real candidates, fp16 only
    max_gauc_change: float | None = None  # optional: |GAUC change|, every task

    def __post_init__(self) -> None:
        for name in ("max_auc_change", "max_fp16_abs_error", "max_gauc_change"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"gate {name} must be a finite number >= 0, got {value}")
        if not 0 <= self.min_topk_overlap <= 1:
            raise ConfigError(f"gate min_topk_overlap must be in [0, 1], got {self.min_topk_overlap}")
        if self.topk < 1:
            raise ConfigError(f"gate topk must be >= 1, got {self.topk}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class CalibrationSettings:
    precision: Precision  # one of precision.REDUCED; the text ("int8") is accepted and converted
    method: str = "minmax"  # INT8 activation calibration; ignored for fp16
    num_requests: int = 256  # calibration requests
    eval_requests: int = 1000  # held-out requests for the accuracy report (disjoint from calibration)
    localize_requests: int = 128  # held-out requests for the INT8 per-node error localisation
    batch_size: int = 32
    seed: int = 0
    keep_float: tuple[str, ...] = ()  # node names, globs or op types kept in float on top of the defaults
    force_low_precision: tuple[str, ...] = ()  # selectors removed from the default keep-float rules
    fp16_data_max: float = 512.0  # |activation| above this on calibration data keeps a node in fp32
    gates: AccuracyGates = field(default_factory=AccuracyGates)

    def __post_init__(self) -> None:
        if self.precision not in {p.value for p in REDUCED}:
            raise ConfigError(f"precision {str(self.precision)!r} is not one of {', '.join(p.value for p in REDUCED)}")
        object.__setattr__(self, "precision", Precision(self.precision))
        if self.method not in METHODS:
            raise ConfigError(f"calibration method {self.method!r} is not one of {', '.join(METHODS)}")
        for name in ("num_requests", "eval_requests", "localize_requests", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not (math.isfinite(self.fp16_data_max) and 0 < self.fp16_data_max <= 65504):
            raise ConfigError(f"fp16 data max must be in (0, 65504], got {self.fp16_data_max}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["precision"] = self.precision.value
        d["keep_float"], d["force_low_precision"] = list(self.keep_float), list(self.force_low_precision)
        return d
