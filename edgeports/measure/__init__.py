"""Measurement, identical for every backend: timing (timing.py), memory (memory.py), one cell's
measurement loop (cell.py), parity against eager (parity.py) and the result Row (row.py)."""

from edgeports.measure.cell import Plan, measure, prompt_ids
from edgeports.measure.memory import format_bytes, is_oom, parse_bytes
from edgeports.measure.row import STATUSES, Row
from edgeports.measure.timing import Summary, summarize

__all__ = ["STATUSES", "Plan", "Row", "Summary", "format_bytes", "is_oom", "measure", "parse_bytes", "prompt_ids",
           "summarize"]
