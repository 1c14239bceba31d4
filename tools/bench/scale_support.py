"""bench_scale.py's helpers: a synthetic big checkpoint written without holding the table, and one build
run under /usr/bin/time -v (not a test; docs/benchmarks.md "Embedding tables at scale")."""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import time
from pathlib import Path

import numpy as np
from safetensors import safe_open

DEMO_ROWS_STD = 0.087  # the demo checkpoint's item table std: random rows of the same scale
LOCK = "/tmp/onerank-big-run.lock"  # one >1 GB job at a time on the shared machine


def make_checkpoint(demo: Path, out: Path, rows: int, chunk_rows: int = 1 << 20) -> Path:
    """The demo checkpoint with its item table grown to `rows`: the demo's rows first, then random rows.

    model.safetensors is written by hand (8-byte header length, JSON header, raw data) so the table is
    streamed in chunks: safetensors' save_file would need the whole table as one array."""
    out.mkdir(parents=True, exist_ok=True)
    config = json.loads((demo / "config.json").read_text())
    config["item_vocab_size"] = rows
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    small = safe_open(str(demo / "model.safetensors"), framework="numpy")
    names = sorted(k for k in small.keys() if k != "item_emb.weight")  # noqa: SIM118 (safe_open is not iterable)
    demo_table = small.get_tensor("item_emb.weight")
    dim = demo_table.shape[1]
    header, offset, blobs = {}, 0, []
    for name in names:
        array = np.ascontiguousarray(small.get_tensor(name))
        assert array.dtype == np.float32, name
        header[name] = {"dtype": "F32", "shape": list(array.shape), "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
        blobs.append(array)
    table_bytes = rows * dim * 4
    header["item_emb.weight"] = {"dtype": "F32", "shape": [rows, dim], "data_offsets": [offset, offset + table_bytes]}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    rng = np.random.default_rng(0)
    tmp = out / "model.safetensors.tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for array in blobs:
            f.write(array.tobytes())
        f.write(demo_table[: min(rows, len(demo_table))].tobytes())
        done = min(rows, len(demo_table))
        while done < rows:
            n = min(chunk_rows, rows - done)
            block = rng.standard_normal((n, dim), dtype=np.float32)
            block *= DEMO_ROWS_STD
            f.write(block.tobytes())
            done += n
    tmp.rename(out / "model.safetensors")
    return out


TIME_V = {"wall": r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)",
          "max_rss_kb": r"Maximum resident set size \(kbytes\): (\d+)"}


def _wall_seconds(text: str) -> float:
    parts = [float(p) for p in text.split(":")]
    return sum(p * 60 ** i for i, p in enumerate(reversed(parts)))


def run_build(checkpoint: Path, out: Path, extra: list[str], log: Path) -> dict:
    """`onerank-export build` under flock + /usr/bin/time -v; wall time, peak RSS, output size, big files."""
    cmd = ["flock", LOCK, "/usr/bin/time", "-v", "onerank-export", "build", "--checkpoint", str(checkpoint),
           "--target", "cpu", "--engine", "skip", "--out", str(out), "--force", *extra]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    log.write_text(proc.stdout + "\n---stderr---\n" + proc.stderr)
    result = {"cmd": " ".join(cmd[3:]), "rc": proc.returncode, "seconds_incl_lock": time.perf_counter() - start}
    m = re.search(TIME_V["wall"], proc.stderr)
    result["wall_s"] = _wall_seconds(m.group(1)) if m else None
    m = re.search(TIME_V["max_rss_kb"], proc.stderr)
    result["time_v_peak_rss_bytes"] = int(m.group(1)) * 1024 if m else None
    if proc.returncode != 0:
        tail = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
        result["error"] = tail[-1] if tail else proc.stderr.strip().splitlines()[-1:]
        return result
    manifest = json.loads((out / "manifest.json").read_text())
    result["memory"] = manifest.get("memory")
    result["du_bytes"] = int(subprocess.run(["du", "-sb", str(out)], capture_output=True, text=True)
                             .stdout.split()[0])
    seen, big = set(), []
    for path in sorted(out.rglob("*")):
        if path.is_file() and path.stat().st_size > 100 * 2**20:
            key = (path.stat().st_dev, path.stat().st_ino)
            big.append({"path": str(path.relative_to(out)), "bytes": path.stat().st_size,
                        "hard_link_of_earlier": key in seen})
            seen.add(key)
    result["files_over_100MB"] = big
    return result


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())
