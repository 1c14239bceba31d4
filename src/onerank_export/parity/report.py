"""Parity report renderers: parity.json + JUnit XML for CI, and a console table."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path

from rich.table import Table

from onerank_export.io import atomic_path
from onerank_export.parity.suite import ParityReport
from onerank_export.verdict import Outcome


def write_reports(report: ParityReport, directory: Path) -> tuple[Path, Path]:
    """`directory`/parity.json and `directory`/junit.xml, the files `build` and `verify` leave."""
    return report.write_json(directory / "parity.json"), write_junit(report, directory / "junit.xml")


def write_junit(report: ParityReport, path: Path) -> Path:
    counts = report.counts()
    suite = ET.Element("testsuite", name="onerank-parity", tests=str(sum(counts.values())),
                       failures=str(counts["failed"]), skipped=str(counts["skipped"]), errors="0")
    for c in report.cases:
        case = ET.SubElement(suite, "testcase", classname=f"parity.{c.runner}", name=f"{c.precision}:{c.case}")
        if c.status is Outcome.SKIPPED:
            ET.SubElement(case, "skipped", message=c.reason)
        elif c.status is Outcome.FAILED:
            bad = [o for o in c.outputs if not o.passed]
            msg = "; ".join(f"{o.output}: {o.summary} (tolerance atol={o.atol:g} rtol={o.rtol:g})" for o in bad)
            ET.SubElement(case, "failure", message=msg, type="ParityMismatch")
    for inv in report.invariances:
        case = ET.SubElement(suite, "testcase", classname=f"invariance.{inv.runner}", name=inv.check)
        if inv.status is Outcome.FAILED:
            ET.SubElement(case, "failure", type="InvarianceViolation",
                          message=inv.reason or f"max_abs={inv.max_abs:.3g} > atol={inv.atol:g}")
        elif inv.status is Outcome.SKIPPED:
            ET.SubElement(case, "skipped", message=inv.reason)
    with atomic_path(path) as tmp:
        ET.ElementTree(suite).write(tmp, encoding="utf-8", xml_declaration=True)
    return path


def parity_table(report: ParityReport) -> Table:
    table = Table(title=f"parity vs {report.reference}", show_lines=False)
    for col in ("runner", "precision", "case", "verdict", "max abs", "p99 abs", "mean abs", "max rel", "tolerance"):
        table.add_column(col, justify="right" if col in ("max abs", "p99 abs", "mean abs", "max rel") else "left")
    for c in report.cases:
        if c.status is Outcome.SKIPPED:
            table.add_row(c.runner, c.precision, c.case, f"skipped: {c.reason}", "", "", "", "", "")
            continue
        for o in c.outputs:
            verdict = "[green]pass[/]" if o.passed else f"[red]FAIL[/] (needs atol {_fmt(o.required_atol)})"
            if o.problem:
                verdict = f"[red]FAIL[/] {o.problem}"
            table.add_row(c.runner, c.precision, c.case, verdict, _fmt(o.max_abs), _fmt(o.p99_abs),
                          _fmt(o.mean_abs), _fmt(o.max_rel), f"{o.atol:g}")
    for inv in report.invariances:
        verdict = {Outcome.PASSED: "[green]pass[/]", Outcome.FAILED: f"[red]FAIL[/] {inv.reason}".rstrip(),
                   Outcome.SKIPPED: f"skipped: {inv.reason}"}[inv.status]
        table.add_row(inv.runner, "", f"invariance: {inv.check}", verdict, _fmt(inv.max_abs), "", "", "",
                      f"{inv.atol:g}")
    return table


def _fmt(x: float) -> str:
    return "inf" if math.isinf(x) else ("nan" if math.isnan(x) else f"{x:.2e}")
