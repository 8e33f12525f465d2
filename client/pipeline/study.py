"""Studies, not just series: the series of one study screened and answered together.

A study is every volume series that shares a DICOM StudyInstanceUID, wherever it lies
under the INPUTs; an image file (NIfTI/NRRD/MHA) is a study of its own. Rows stay one
per series (``results.csv``); the study table (``studies.csv`` / ``studies.jsonl``)
has one row per study, derived from the series rows by :func:`study_answer`, so
``--resume``, ``--shard`` (a study's series share a shard), ``merge`` and Ray all
work on it unchanged: it is rebuilt from the rows whenever they change.

The study's answer, in order (docs/phase.md):

1. an unenhanced series graded by the liver/spleen ratio (the seed's criterion);
2. otherwise a portal-venous series' liver-attenuation assessment (Pickhardt 2024),
   the study grade staying ``indeterminate``;
3. otherwise ``indeterminate``, with each series' reason.

``--series best`` (the default) screens a study's series in :func:`series_order`
(header says unenhanced first, then no contrast tag, then series number) and stops
once one answers by rule 1: multi-phase studies put the unenhanced series first, so
an archive costs about one series per study. ``--series all`` screens every series.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from client.core import contract
from client.core.atomic import atomic_path
from client.outputs.results import STUDIES_CSV, STUDIES_JSONL

SERIES_MODES = ("best", "all")

# One row per study: every writer reads this (name, unit, meaning).
STUDY_SCHEMA: tuple[contract.Column, ...] = (
    contract.Column("study_id", "", "hash of the StudyInstanceUID (results.csv's study_id)"),
    contract.Column("grade", "", "the study's grade: from its answering unenhanced series, else indeterminate"),
    contract.Column("criterion", "", "liver_spleen_ratio | portal_venous_liver_hu | none"),
    contract.Column("answer_case_id", "", "the series (case_id in results.csv) that answered; empty when none"),
    contract.Column("phase", "", "the answering series' contrast phase"),
    contract.Column("ratio", "1", "liver/spleen ratio of the answering series (ratio criterion only)"),
    contract.Column("liver_hu", "HU", "liver attenuation of the answering series"),
    contract.Column("pdff_estimate_pct", "%", "PDFF equivalent of the answering unenhanced series"),
    contract.Column("pv_assessment", "", "portal-venous liver-attenuation assessment (rule 2)"),
    contract.Column("n_series", "", "volume series of the study found"),
    contract.Column("n_screened", "", "series screened (a row in results.csv)"),
    contract.Column("series", "", "';'-separated case_id=phase/criterion/grade of every screened series"),
    contract.Column("notes", "", "why the study has no answer, or where its series disagree"),
)  # fmt: skip
STUDY_COLUMNS = tuple(c.name for c in STUDY_SCHEMA)


def header_rank(source) -> tuple:
    """Sort key of a series within its study: most likely unenhanced first.

    The header's word (:func:`postprocess.phase.tag_phase` of the contrast agent and
    the series description) ranks unenhanced < nothing said < enhanced; then the
    series number (the unenhanced acquisition comes first on scanners), then case_id.
    """
    from postprocess.phase import tag_phase

    said = tag_phase(
        getattr(source, "contrast_agent", ""), getattr(source, "series_description", "")
    )
    rank = {"unenhanced": 0, None: 1}.get(said, 2)
    return (rank, int(getattr(source, "series_number", 0) or 0), source.case_id)


def group(sources) -> dict[str, list]:
    """``{study_id: [sources in series_order]}``, studies in first-seen order."""
    out: dict[str, list] = {}
    for s in sources:
        out.setdefault(s.study_id, []).append(s)
    return {k: sorted(v, key=header_rank) for k, v in out.items()}


def answers_by_ratio(row: dict | None) -> bool:
    """Whether a series row answers its study by rule 1 (unenhanced, ratio-graded)."""
    return bool(
        row
        and row.get("status") != contract.STATUS_ERROR
        and row.get("phase") == "unenhanced"
        and row.get("criterion") == contract.CRITERION_RATIO
        and row.get("grade") in contract.GRADES[:4]
    )


def next_round(sources, rows: dict, attempted: set, fingerprints: dict | None = None) -> list:
    """The series to screen next under ``--series best``: per study, the first series in
    order that has no usable row yet, unless a row already answers the study by rule 1.

    Parameters
    ----------
    sources : list of ScanSource
    rows : dict
        ``{case_id: row}`` of the rows written so far (this run and earlier ones).
    attempted : set
        case_ids screened in this run (an error row is not retried within the run).
    fingerprints : dict, optional
        ``{case_id: fingerprint}`` kept across the rounds of one run, so that each
        series' files are stat'ed once per run, not once per round.
    """
    fps = {} if fingerprints is None else fingerprints
    todo = []
    for series in group(sources).values():
        for s in series:
            row = rows.get(s.case_id)
            if row is not None and s.case_id not in fps:
                fps[s.case_id] = s.fingerprint()
            fp = fps.get(s.case_id)
            if answers_by_ratio(row) and row.get("source_fingerprint") == fp:
                break
            done = (
                row is not None
                and row.get("source_fingerprint") == fp
                and (row.get("status") != contract.STATUS_ERROR or s.case_id in attempted)
            )
            if not done:
                todo.append(s)
                break
    return todo


def rounds(first: list, sources, rows: dict, series: str = "best"):
    """The batches of one run: ``first`` alone under ``--series all``; under ``best``,
    ``first`` then each :func:`next_round` until none is left.

    Parameters
    ----------
    first : list of ScanSource
        The first batch (:func:`next_round` of no attempts, or every scan not done).
    sources : list of ScanSource
        Every series found (the studies' other series).
    rows : dict
        ``{case_id: row}``, kept up to date by the caller as rows are written (the
        results store's ``rows``): each round is computed after the previous one's rows.
    series : str
        ``best`` or ``all`` (:data:`SERIES_MODES`).
    """
    if series == "all":
        if first:
            yield first
        return
    attempted: set = set()
    fingerprints: dict = {}  # each series' files stat'ed once per run, not per round
    batch = first
    while batch:
        yield batch
        attempted |= {s.case_id for s in batch}
        batch = next_round(sources, rows, attempted, fingerprints)


def not_needed(sources, rows: dict) -> list[dict]:
    """Series left unscreened by ``--series best``, each with the reason (run.json)."""
    out = []
    for series in group(sources).values():
        answer = next((s for s in series if answers_by_ratio(rows.get(s.case_id))), None)
        if answer is None:
            continue
        for s in series:
            if s.case_id not in rows:
                out.append({
                    "path": str(s.path), "case_id": s.case_id,
                    "reason": f"study answered by {answer.case_id} (unenhanced, --series best)",
                })  # fmt: skip
    return out


def _series_word(r: dict) -> str:
    if r.get("status") == contract.STATUS_ERROR:
        return f"{r['case_id']}=error"
    return f"{r['case_id']}={r.get('phase') or 'unknown'}/{r.get('criterion') or 'none'}/{r.get('grade')}"


def study_answer(study_id: str, rows: list[dict], n_series: int | None = None) -> dict:
    """One study row from its series rows (rules in the module docstring)."""
    rows = sorted(rows, key=lambda r: r["case_id"])
    out = dict.fromkeys(STUDY_COLUMNS)
    out.update(
        study_id=study_id,
        grade=contract.GRADE_INDETERMINATE,
        criterion=contract.CRITERION_NONE,
        n_series=n_series if n_series is not None else len(rows),
        n_screened=len(rows),
        series=";".join(_series_word(r) for r in rows),
        answer_case_id="",
        notes="",
    )
    ratio_rows = [r for r in rows if answers_by_ratio(r)]
    pv_rows = [
        r for r in rows
        if r.get("status") != contract.STATUS_ERROR and r.get("phase") == "portal_venous"
        and r.get("pv_assessment")
    ]  # fmt: skip
    notes = []
    if ratio_rows:
        best = ratio_rows[0]
        grades = {r["grade"] for r in ratio_rows}
        if len(grades) > 1:
            notes.append("unenhanced series disagree: " + ", ".join(
                f"{r['case_id']} {r['grade']}" for r in ratio_rows))  # fmt: skip
        out.update(
            grade=best["grade"], criterion=contract.CRITERION_RATIO, answer_case_id=best["case_id"],
            phase=best.get("phase"), ratio=best.get("ratio"), liver_hu=best.get("liver_hu"),
            pdff_estimate_pct=best.get("pdff_estimate_pct"),
        )  # fmt: skip
    elif pv_rows:
        best = pv_rows[0]
        out.update(
            criterion=contract.CRITERION_PV_LIVER_HU, answer_case_id=best["case_id"],
            phase="portal_venous", liver_hu=best.get("liver_hu"),
            pv_assessment=best.get("pv_assessment"),
        )  # fmt: skip
        notes.append(
            "no unenhanced series graded: answered by liver attenuation on portal-venous CT"
        )
    else:
        why = []
        for r in rows:
            if r.get("status") == contract.STATUS_ERROR:
                why.append(f"{r['case_id']}: error")
            else:
                why.append(f"{r['case_id']}: {r.get('phase') or 'unknown'} phase"
                           + (f" ({r['flags']})" if r.get("flags") else ""))  # fmt: skip
        notes.append("no series answered: " + "; ".join(why) if why else "no series screened")
    out["notes"] = "; ".join(notes)
    return out


def study_table(rows: list[dict], n_series: dict | None = None) -> list[dict]:
    """Every study's row from all series rows (``n_series``: series found per study)."""
    by: dict[str, list] = {}
    for r in rows:
        by.setdefault(r.get("study_id") or r.get("source_id") or r["case_id"], []).append(r)
    ids = list(by)
    for sid in n_series or {}:
        if sid not in by:
            by[sid] = []
            ids.append(sid)
    return [study_answer(s, by[s], (n_series or {}).get(s)) for s in ids]


def write_studies(out: Path, rows: list[dict], n_series: dict | None = None) -> list[dict]:
    """Write ``studies.csv`` and ``studies.jsonl`` in ``out`` atomically; returns the rows."""
    table = study_table(rows, n_series)
    out = Path(out)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=STUDY_COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in table:
        w.writerow({k: ("" if r.get(k) is None else r[k]) for k in STUDY_COLUMNS})
    for name, text in (
        (STUDIES_CSV, buf.getvalue()),
        (STUDIES_JSONL, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in table)),
    ):
        with atomic_path(out / name, Path(name).suffix) as tmp:
            Path(tmp).write_text(text, encoding="utf-8")
    return table


@dataclass
class StudyResult:
    """Outcome of :func:`screen_study`: the series results and the study's answer."""

    study_id: str
    series: list = field(default_factory=list)  # ScanResult, in the order screened
    row: dict = field(default_factory=dict)
    not_screened: list = field(default_factory=list)  # case_ids left out by series="best"

    @property
    def grade(self) -> str:
        return self.row.get("grade")


def screen_study(source, segmenter, config=None, series: str = "best") -> list[StudyResult]:
    """Screen the studies under a folder (or one file): every volume series grouped by
    study, screened in :func:`header_rank` order, each study answered by
    :func:`study_answer`. Never raises for a bad scan (its row says why).

    Parameters
    ----------
    source : str or Path
        A study folder, a folder of studies, or an image file.
    segmenter : client.pipeline.segmenters.Segmenter
    config : client.pipeline.screen.ScreenConfig, optional
    series : {"best", "all"}
        ``best``: stop a study at its first ratio-graded unenhanced series.

    Returns
    -------
    list of StudyResult
    """
    from client.core.errors import ConfigError
    from client.pipeline.screen import screen_scan
    from client.reading.discover import discover

    if series not in SERIES_MODES:
        raise ConfigError(f"series must be one of {', '.join(SERIES_MODES)}, got {series!r}")
    found = discover([str(source)])
    out = []
    for sid, members in group(found.sources).items():
        res = StudyResult(sid)
        for s in members:
            r = screen_scan(s, segmenter, config)
            res.series.append(r)
            if series == "best" and answers_by_ratio(r.row):
                break
        screened = {r.case_id for r in res.series}
        res.not_screened = [s.case_id for s in members if s.case_id not in screened]
        res.row = study_answer(sid, [r.row for r in res.series], len(members))
        out.append(res)
    return out


__all__ = [
    "SERIES_MODES",
    "STUDY_COLUMNS",
    "STUDY_SCHEMA",
    "StudyResult",
    "answers_by_ratio",
    "group",
    "header_rank",
    "next_round",
    "not_needed",
    "rounds",
    "screen_study",
    "study_answer",
    "study_table",
    "write_studies",
]
