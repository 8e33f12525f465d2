"""Quality-control pictures and the HTML report of a batch run (the stable front door).

``qc_png`` (:mod:`client.outputs.qc`) draws one scan's QC picture; ``write_report``
(:mod:`client.outputs.report_html`) renders ``report.html`` from the result rows. Neither
contains patient identifiers: only case_ids and measurements.
"""

from __future__ import annotations

from client.outputs.qc import COLOURS, WINDOW, caption_lines, qc_png
from client.outputs.report_html import flag_glossary, thresholds_text, write_report

__all__ = [
    "COLOURS",
    "WINDOW",
    "caption_lines",
    "flag_glossary",
    "qc_png",
    "thresholds_text",
    "write_report",
]
