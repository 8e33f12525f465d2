"""Layer 2, outputs: the result store (``results``: results.csv / results.jsonl with
exactly-once rows), the QC picture (``qc``), the archive report (``report``,
``report_html``) and DICOM SEG/SR (``dicom_out``).

May import: ``client.core``, ``client.reading``.
"""
