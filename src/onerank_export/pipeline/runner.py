"""`build`: checkpoint -> ONNX fp32 -> fp16 / int8 -> parity -> TensorRT engines -> Triton repository.

Each stage is a function of the typed `BuildState` that returns a `StageResult`; `build` runs
them in order into a temporary directory next to `--out` and renames it into place at the
end, so `--out` holds either a complete build (with manifest.json) or what was there before.
A failed check still produces a complete output (its report is what the user needs) and a
non-zero exit; an error that stops the build leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from onerank_export.config import OneRankConfig
from onerank_export.errors import OneRankError
from onerank_export.model.checkpoint import checkpoint_digest, load_checkpoint
from onerank_export.model.onerank import OneRankModel
from onerank_export.parity.compare import Tolerance
from onerank_export.pipeline.manifest import build_manifest, write_manifest
from onerank_export.pipeline.result import StageResult, Status

PRECISIONS = ("fp16", "int8")
ENGINE_MODES = ("auto", "require", "skip")


@dataclass
class BuildOptions:
    checkpoint: Path
    out: Path
    checkpoint_source: str = "user"  # "user" | "demo"
    precisions: tuple[str, ...] = PRECISIONS
    engine: str = "auto"
    plugin_library: Path | None = None
    triton: bool = True
    calibration_method: str = "minmax"
    calibration_data: Path | None = None  # .npz / .parquet requests; None = the demo generator
    tolerances: dict[str, Tolerance] = field(default_factory=dict)
    force: bool = False
    seed: int = 0

    def describe(self) -> dict:
        return {"precisions": list(self.precisions), "engine": self.engine, "triton": self.triton,
                "calibration_method": self.calibration_method, "seed": self.seed,
                "calibration_data": str(self.calibration_data) if self.calibration_data else None,
                "plugin_library": str(self.plugin_library) if self.plugin_library else None,
                "tolerances": {p: {"atol": t.atol, "rtol": t.rtol} for p, t in self.tolerances.items()}}


@dataclass
class BuildState:
    """What stages hand to each other: typed fields, filled in pipeline order."""

    options: BuildOptions
    work: Path  # temporary output directory, renamed to options.out at the end
    model: OneRankModel | None = None
    checkpoint_sha256: str = ""
    onnx: dict[str, Path] = field(default_factory=dict)  # precision -> ONNX file
    engines: dict[str, Path] = field(default_factory=dict)  # precision -> plan
    plugin_library: Path | None = None

    @property
    def config(self) -> OneRankConfig:
        assert self.model is not None
        return self.model.cfg


class BuildUI(Protocol):
    def stage_started(self, index: int, total: int, name: str) -> None: ...
    def stage_finished(self, result: StageResult) -> None: ...


@dataclass
class BuildOutcome:
    out: Path
    stages: list[StageResult]
    manifest: dict

    @property
    def passed(self) -> bool:
        return all(s.status is not Status.FAILED for s in self.stages)


Stage = tuple[str, Callable[[BuildState], StageResult]]


def plan_stages(options: BuildOptions) -> list[Stage]:
    from onerank_export.pipeline.stages.legacy import (
        checkpoint_stage,
        engine_stage,
        export_stage,
        parity_stage,
        precision_stage,
        triton_stage,
    )

    stages: list[Stage] = [("checkpoint", checkpoint_stage), ("export fp32", export_stage)]
    stages += [(f"precision {p}", precision_stage(p)) for p in options.precisions]
    stages += [("parity", parity_stage), ("engine", engine_stage)]
    if options.triton:
        stages.append(("triton", triton_stage))
    return stages


def build(options: BuildOptions, ui: BuildUI) -> BuildOutcome:
    check_output_dir(options.out, options.force)
    out = options.out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    try:
        state = BuildState(options, work)
        results = []
        stages = plan_stages(options)
        for i, (name, run) in enumerate(stages, start=1):
            ui.stage_started(i, len(stages), name)
            t0 = time.perf_counter()
            result = run(state)
            result.seconds = time.perf_counter() - t0
            results.append(result)
            ui.stage_finished(result)
        checkpoint = {"path": str(options.checkpoint), "source": options.checkpoint_source,
                      "sha256": state.checkpoint_sha256}
        manifest = build_manifest(work, state.config, checkpoint, options.describe(), results)
        write_manifest(work / "manifest.json", manifest)
        _swap_into_place(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return BuildOutcome(out, results, manifest)


def check_output_dir(out: Path, force: bool) -> None:
    """Refuse to replace a directory that is not an earlier build unless --force is given."""
    if not out.exists():
        return
    if not out.is_dir():
        raise OneRankError(f"--out {out}: exists and is a file; choose a directory path")
    if force or not any(out.iterdir()) or (out / "manifest.json").is_file():
        return
    raise OneRankError(f"--out {out}: directory exists, is not empty and holds no onerank-export build "
                       "(no manifest.json); choose another directory or pass --force to replace it")


def _swap_into_place(work: Path, out: Path) -> None:
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(old)
    work.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def load_model(state: BuildState) -> tuple[OneRankModel, str]:
    return load_checkpoint(state.options.checkpoint), checkpoint_digest(state.options.checkpoint)
