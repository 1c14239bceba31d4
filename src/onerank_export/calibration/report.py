"""reports/calibration.json and reports/calibration.png.

One JSON for every precision calibrated from the same fp32 model (build runs fp16 then int8;
each run adds its entry); a report from another fp32 model is replaced, not merged. Both files
are written atomically (onerank_export.io), so a reader never sees half a report. The plot draws
the JSON as written, earlier runs' entries included, so it reads plain dicts.
"""

from __future__ import annotations

import json
from pathlib import Path

from onerank_export.calibration.result import CalibrationEntry, ReportHeader
from onerank_export.io import write_bytes, write_json

REPORT_FORMAT = "onerank-calibration/1"
JSON_NAME, PLOT_NAME = "calibration.json", "calibration.png"
COLORS = {"fp16": "tab:blue", "int8": "tab:orange"}


def write_report(report_dir: Path, header: ReportHeader, entry: CalibrationEntry) -> tuple[Path, Path]:
    """Add `entry` to report_dir/calibration.json (and redraw the plot); (json path, plot path)."""
    report_dir.mkdir(parents=True, exist_ok=True)
    path = report_dir / JSON_NAME
    report = {"format": REPORT_FORMAT, **header.to_dict(), "precisions": {}}
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            old = {}
        if old.get("format") == REPORT_FORMAT and old.get("fp32_onnx_sha256") == header.fp32_onnx_sha256:
            report["precisions"].update(old.get("precisions", {}))
    report["precisions"][entry.precision.value] = entry.to_dict()
    report["passed"] = all(e["passed"] for e in report["precisions"].values())
    write_json(path, report, allow_nan=False)
    plot_path = write_bytes(report_dir / PLOT_NAME, plot(report))
    return path, plot_path


def plot(report: dict) -> bytes:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = report["precisions"]
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    err_ax, auc_ax, overlap_ax, loc_ax = axes.ravel()
    tasks = list(next(iter(entries.values()))["accuracy"]["tasks"])
    width = 0.8 / max(1, len(entries))
    for i, (precision, e) in enumerate(sorted(entries.items())):
        acc, color = e["accuracy"], COLORS.get(precision)
        curve = acc["score_abs_error_curve"]
        err_ax.plot([max(v, 1e-9) for v in curve["values"]], curve["quantiles"], color=color, label=precision)
        changes = [acc["tasks"][t]["auc_change"] or 0.0 for t in tasks]
        auc_ax.bar([k + i * width for k in range(len(tasks))], changes, width, color=color, label=precision)
        hist = acc["topk_overlap_histogram"]
        total = max(1, sum(hist["counts"]))
        overlap_ax.bar([k + i * width for k in range(len(hist["labels"]))], [c / total for c in hist["counts"]],
                       width, color=color, label=f"{precision} (mean {acc['topk_overlap']['mean']:.3f})")
        overlap_ax.set_xticks([k + width * (len(entries) - 1) / 2 for k in range(len(hist["labels"]))],
                              hist["labels"])
    gates = next(iter(entries.values()))["gates_config"]
    if "fp16" in entries:
        err_ax.axvline(gates["max_fp16_abs_error"], color=COLORS["fp16"], ls="--", lw=1, label="fp16 gate")
    err_ax.set(xscale="log", xlabel="|score - fp32 eager score|", ylabel="fraction of real candidates below",
               title="score error (held-out requests)")
    auc_ax.axhspan(-gates["max_auc_change"], gates["max_auc_change"], color="green", alpha=0.1, label="gate")
    auc_ax.set_xticks([k + width * (len(entries) - 1) / 2 for k in range(len(tasks))], tasks)
    auc_ax.set(ylabel="AUC change vs fp32 eager", title="per-task AUC change")
    overlap_ax.set(xlabel=f"per-request top-{gates['topk']} overlap", ylabel="fraction of (request, task)",
                   title=f"ranking agreement (gate: mean >= {gates['min_topk_overlap']:g})")
    _plot_localization(loc_ax, entries.get("int8"))
    for ax in (err_ax, auc_ax, overlap_ax):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("OneRank reduced precision vs fp32 eager")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def _plot_localization(ax, entry: dict | None) -> None:
    rows = (entry or {}).get("localization", {}).get("nodes", [])[:12]
    if not rows:
        ax.axis("off")
        ax.text(0.5, 0.5, "INT8 error localisation: no INT8 run in this report", ha="center", va="center")
        return
    names = [r["node"].split("/")[0] + "/" + r["node"].split("/")[1] for r in rows][::-1]
    ax.barh(names, [r["mean_abs_error"] for r in rows][::-1], color=COLORS["int8"])
    ax.tick_params(axis="y", labelsize=7)
    ax.set(xlabel="mean |score error| with only this node in int8",
           title="INT8 error by node (candidates for --keep-float)")
    ax.grid(True, axis="x", alpha=0.3)

