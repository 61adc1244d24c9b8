"""Benchmark reports, one module per output: ``document`` (report.json, history.jsonl), ``markdown``
(report.md), ``plots`` (PNG)."""

from __future__ import annotations

from mobileclip_export.benchmarks.report.document import (
    GATE_METRIC,
    SCHEMA,
    append_history,
    build_document,
    estimate_records,
    records_from_rows,
    row_key,
    utc_now,
    validate_document,
    write_json,
)
from mobileclip_export.benchmarks.report.markdown import markdown
from mobileclip_export.benchmarks.report.plots import plots

__all__ = [
    "GATE_METRIC",
    "SCHEMA",
    "append_history",
    "build_document",
    "estimate_records",
    "markdown",
    "plots",
    "records_from_rows",
    "row_key",
    "utc_now",
    "validate_document",
    "write_json",
]
