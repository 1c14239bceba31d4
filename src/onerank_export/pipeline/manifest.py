"""manifest.json: what was built from what, with which tools, and every check's verdict.

Every artifact is listed with its sha256 and size; a stage that did not run is listed as
`skipped: <reason>` and contributes no artifact.
"""

from __future__ import annotations

import datetime as _dt
import platform
from pathlib import Path
from typing import Any

from onerank_export import __version__
from onerank_export.config import OneRankConfig
from onerank_export.io import sha256_file
from onerank_export.pipeline.result import StageResult, Status

MANIFEST_FORMAT = "onerank-manifest/1"
_LIBRARIES = ("torch", "onnx", "onnxruntime", "onnxscript", "numpy", "safetensors", "tritonclient",
              "nvidia-pytriton", "triton", "tensorrt", "protobuf")


def library_versions() -> dict[str, str | None]:
    import importlib.metadata  # only when a manifest is written: a slow import every command would pay

    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def build_manifest(out_dir: Path, config: OneRankConfig, checkpoint: dict[str, Any], options: dict[str, Any],
                   stages: list[StageResult], **blocks: dict[str, Any]) -> dict[str, Any]:
    """The manifest for a build whose files live under `out_dir` (paths recorded relative to it);
    `blocks` are further top-level records (embeddings, memory)."""
    digest = _hasher()
    artifacts = []
    stage_rows = []
    for st in stages:
        rows = []
        for role, path in sorted(st.artifacts.items()):
            path = Path(path)
            if not path.is_file():  # never list what does not exist
                raise AssertionError(f"stage {st.name} lists {path} which does not exist")
            rows.append({"role": role, "path": str(path.relative_to(out_dir)), "sha256": digest(path),
                         "bytes": path.stat().st_size})
        artifacts += [{**r, "stage": st.name} for r in rows]
        stage_rows.append({"name": st.name, "status": st.status.value, "verdict": st.verdict, "detail": st.detail,
                           "seconds": round(st.seconds, 3), "metrics": st.metrics, "artifacts": rows})
    return {
        "format": MANIFEST_FORMAT,
        "tool": {"name": "onerank-export", "version": __version__},
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host": {"platform": platform.platform(), "machine": platform.machine()},
        "versions": library_versions(),
        "checkpoint": checkpoint,
        "config": config.to_dict(),
        "options": options,
        "passed": all(st.status is not Status.FAILED for st in stages),
        "stages": stage_rows,
        "artifacts": artifacts,
        **blocks,
    }


def peak_rss() -> int:
    """This process's peak resident memory so far, in bytes (ru_maxrss: KiB on Linux, bytes on macOS)."""
    import resource
    import sys

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def memory_record(config: OneRankConfig, after_stage: dict[str, int] | None = None) -> dict[str, Any]:
    """Peak resident memory of this process and of its largest child (a compiler, a server), the larger
    of the two as the build's peak, the high-water mark after each stage (the stage that raised it is
    the one to look at), and the big tables' bytes. Not their sum: Linux keeps a process's high-water
    mark across fork and exec, so any child reports at least the build's size when it was started
    (docs/embeddings.md#memory)."""
    import resource
    import sys

    from onerank_export.embeddings.limits import big_tables

    own = peak_rss()
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    return {"peak_rss_bytes": max(own, children), "peak_rss_self_bytes": own, "peak_rss_children_bytes": children,
            "peak_rss_after_stage": dict(after_stage or {}),
            "table_bytes": {t.name: t.bytes for t in big_tables(config)}}


def _hasher():
    """sha256_file, once per file: a repository's hard-linked data file is the same gigabytes as the build's."""
    seen: dict[tuple[int, int, int, int], str] = {}

    def digest(path: Path) -> str:
        st = path.stat()
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if key not in seen:
            seen[key] = sha256_file(path)
        return seen[key]

    return digest
