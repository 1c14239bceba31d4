"""Precisions and their parity tolerances: the one definition the CLI, the pipeline, calibration,
parity, engines and Triton configs read."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Precision(str, enum.Enum):
    """What a model computes in. The value is what files, metadata and options say ("fp16")."""

    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, text: str, *, what: str = "precision") -> Precision:
        from onerank_export.errors import ConfigError

        try:
            return cls(text)
        except ValueError:
            raise ConfigError(f"{what} {text!r} is not one of {', '.join(p.value for p in cls)}") from None


# The reduced precisions `build` derives from the fp32 export, in build order.
REDUCED: tuple[Precision, ...] = (Precision.FP16, Precision.INT8)


@dataclass(frozen=True)
class Tolerance:
    """Elementwise parity limit: |out - ref| <= atol + rtol * |ref|."""

    atol: float
    rtol: float = 0.0

    def __str__(self) -> str:
        return f"atol={self.atol:g}" + (f" rtol={self.rtol:g}" if self.rtol else "")

    def to_dict(self) -> dict[str, float]:
        return {"atol": self.atol, "rtol": self.rtol}


# Scores are probabilities in [0, 1]. fp32 allows accumulation-order differences; fp16 and int8 the
# rounding measured on the demo checkpoint with headroom (docs/precision.md).
DEFAULT_TOLERANCES: dict[Precision, Tolerance] = {
    Precision.FP32: Tolerance(atol=1e-5),
    Precision.FP16: Tolerance(atol=5e-3),
    Precision.INT8: Tolerance(atol=5e-2),
}
