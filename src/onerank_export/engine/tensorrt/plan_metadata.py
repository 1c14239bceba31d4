"""What an engine was built from and for: the optimisation profile and the `<plan>.json` beside it.

Pure functions (no TensorRT): the profile comes from the serving spec, so the engine accepts
exactly the shapes the ONNX export, Triton and request validation accept; the metadata records
what a plan is only valid for (TensorRT version, GPU compute capability, plugin library).
"""

from __future__ import annotations

import ctypes
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from onerank_export.engine.tensorrt.profile import ROLES, SERVING, ProfileShapes, optimization_profile
from onerank_export.errors import StageError
from onerank_export.io import sha256_file, write_json
from onerank_export.precision import Precision

PLAN_META_FORMAT = "onerank-plan-meta/1"

_REQUIRED = ("format", "plan", "plan_sha256", "precision", "tensorrt_version", "gpu", "profile", "onnx",
             "plugin_library", "build_seconds")


# Re-exported: callers read the profile and the roles from here.
__all__ = ["ROLES", "SERVING", "ProfileShapes", "optimization_profile"]


def plan_file_name(precision: str, role: str = SERVING) -> str:
    """`onerank.<p>.plan` for the single graph, `onerank.<role>.<p>.plan` for a half of it or for split
    mode's dense graph (`onerank.dense.<p>.plan`)."""
    if role not in ROLES:
        raise StageError(f"unknown engine role {role!r} (known: {', '.join(ROLES)})")
    try:
        p = Precision(precision).value
    except ValueError:
        raise StageError(f"unknown engine precision {precision!r} (known: {', '.join(p.value for p in Precision)})"
                         ) from None
    return f"onerank.{p}.plan" if role == SERVING else f"onerank.{role}.{p}.plan"


def metadata_path(plan: Path) -> Path:
    return plan.with_name(plan.name + ".json")


def plan_metadata(*, plan: Path, precision: str, tensorrt_version: str, gpu_name: str, compute_capability: str,
                  profile: ProfileShapes, onnx: Path, plugin_library: Path | None, build_seconds: float,
                  role: str = SERVING, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The metadata of a built plan, hashing the files it was built from."""
    return {
        "format": PLAN_META_FORMAT,
        "plan": plan.name,
        "plan_sha256": sha256_file(plan),
        "plan_bytes": plan.stat().st_size,
        "precision": Precision(precision).value,
        "role": role,
        "tensorrt_version": tensorrt_version,
        "gpu": {"name": gpu_name, "compute_capability": compute_capability},
        "profile": {name: {"min": list(mn), "opt": list(opt), "max": list(mx)}
                    for name, (mn, opt, mx) in profile.items()},
        "onnx": {"file": onnx.name, "sha256": sha256_file(onnx)},
        "plugin_library": None if plugin_library is None else {"file": plugin_library.name,
                                                               "sha256": sha256_file(plugin_library)},
        "build_seconds": round(float(build_seconds), 3),
        **dict(extra or {}),
    }


def write_plan_metadata(path: Path, meta: Mapping[str, Any]) -> Path:
    missing = [k for k in (*_REQUIRED, "role") if k not in meta]
    if missing:
        raise ValueError(f"plan metadata lacks {missing}")
    return write_json(path, meta, sort_keys=True)


def read_plan_metadata(path: Path) -> dict[str, Any]:
    """Read and check a `<plan>.json`; a one-line StageError if it is not one."""
    try:
        meta = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise StageError(f"{path}: not readable plan metadata ({str(exc).splitlines()[0]})") from None
    if not isinstance(meta, dict) or meta.get("format") != PLAN_META_FORMAT:
        raise StageError(f"{path}: not plan metadata (format should be {PLAN_META_FORMAT!r})")
    missing = [k for k in _REQUIRED if k not in meta]
    if missing:
        raise StageError(f"{path}: plan metadata lacks '{missing[0]}'")
    return meta


def plan_role(meta: Mapping[str, Any]) -> str:
    """The graph a plan was built from; plans written before the user-state cache are the single graph."""
    return str(meta.get("role", SERVING))


def profile_from_metadata(meta: Mapping[str, Any]) -> ProfileShapes:
    return {name: (tuple(r["min"]), tuple(r["opt"]), tuple(r["max"])) for name, r in meta["profile"].items()}


# CUdevice_attribute values from cuda.h (stable since CUDA 2.x).
_CU_COMPUTE_CAPABILITY_MAJOR = 75
_CU_COMPUTE_CAPABILITY_MINOR = 76


def cuda_device_identity(ordinal: int = 0) -> tuple[str, str]:
    """(name, "major.minor") of a CUDA device, through the driver API: TensorRT has no call for it."""
    from onerank_export.host import load_libcuda

    cuda = load_libcuda()
    if cuda is None:
        raise StageError("libcuda.so.1 not found: no NVIDIA driver on this host")
    device, major, minor = ctypes.c_int(0), ctypes.c_int(0), ctypes.c_int(0)
    name = ctypes.create_string_buffer(256)
    calls = [("cuInit", cuda.cuInit(0)),
             ("cuDeviceGet", cuda.cuDeviceGet(ctypes.byref(device), ordinal)),
             ("cuDeviceGetName", cuda.cuDeviceGetName(name, len(name), device)),
             ("cuDeviceGetAttribute", cuda.cuDeviceGetAttribute(ctypes.byref(major), _CU_COMPUTE_CAPABILITY_MAJOR,
                                                                device)),
             ("cuDeviceGetAttribute", cuda.cuDeviceGetAttribute(ctypes.byref(minor), _CU_COMPUTE_CAPABILITY_MINOR,
                                                                device))]
    for call, status in calls:
        if status != 0:
            raise StageError(f"CUDA driver call {call} failed with CUresult {status} for device {ordinal}")
    return name.value.decode(errors="replace"), f"{major.value}.{minor.value}"
