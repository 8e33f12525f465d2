"""``hepascreen merge OUT... -o MERGED``: join the OUT folders of shards (or of any runs).

* **Rows**: exactly one row per case_id in MERGED/results.csv and results.jsonl.
  Where several OUTs hold a row for the same case_id, the latest attempt wins (the
  row's ``finished_at``; within the same second, the OUT whose results.jsonl was
  written last); the others go to
  MERGED/attempts.jsonl with every OUT's own attempts. Each such case is reported
  as a conflict (on stderr and in run.json ``conflicts``) naming both OUTs and
  whether they screened the same source (``source_id``) and got the same result.
* **Per-scan files** of the winning rows (``masks/``, ``qc/``, ``dicom/``) are
  hard-linked into MERGED (copied across file systems), so the report's QC links work.
* **run.json**: counts and failures of the merged rows, the shards' own manifests
  summarised under ``merged_from`` (run_id, status, shard, counts, timings), the
  conflicts; ``status`` is ``finished`` only when every shard finished.
* **report.html** regenerated from the merged rows (:func:`client.outputs.report.write_report`).
* **studies.csv / studies.jsonl** rebuilt from the merged rows (:mod:`client.pipeline.study`;
  ``--shard`` keeps a study's series in one shard).

Exit status: 0 merged, every row ok or flagged; 1 merged, some rows are errors (or
a shard did not finish); 2 usage error (an OUT without results, MERGED not empty).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from client.core import contract
from client.core.errors import ConfigError
from client.outputs import results

_RESULT_KEYS = ("status", "grade", "ratio", "flags", "error")


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".tmp-merge-{os.getpid()}-{dst.name}")
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copy2(src, tmp)
    os.replace(tmp, dst)


def _case_files(out: Path, case_id: str) -> list[Path]:
    """Per-scan files of ``case_id`` in ``out`` (mask + its label files, QC, DICOM SEG/SR)."""
    return [p for p in results.case_files(out, case_id).screen_outputs() if p.is_file()]


def _age(row: dict, out: Path) -> tuple:
    """Sort key of "latest": the row's ``finished_at`` (whole seconds), then when its
    OUT's results.jsonl was last written (rows finished within the same second)."""
    try:
        mtime = (out / results.RESULTS_JSONL).stat().st_mtime_ns
    except OSError:
        mtime = 0
    return (row.get("finished_at") or "", mtime)


def merge(outs, dest: Path | str, *, link_files: bool = True) -> dict:
    """Merge the results of several OUT folders into ``dest``.

    Parameters
    ----------
    outs : list of Path
        OUT folders of ``hepascreen screen`` runs (e.g. the shards of ``--shard K/N``).
    dest : Path
        MERGED folder: new or empty.
    link_files : bool
        Hard-link (or copy) the winning rows' masks, QC pictures and DICOM files.

    Returns
    -------
    dict
        The merged manifest (also written to ``dest/run.json``).

    Raises
    ------
    ConfigError
        An OUT without results.jsonl, the same folder twice, ``dest`` among the
        OUTs, or ``dest`` not empty.
    """
    outs = [Path(o) for o in outs]
    dest = Path(dest)
    _check_folders(outs, dest)
    winner, losers, conflicts, attempts, shards = _collect(outs)
    dest.mkdir(parents=True, exist_ok=True)
    merged = [results.ordered_row(r) for r, _ in winner.values()]
    _write_rows(dest, merged, attempts + losers)
    if link_files:
        for c, (_, i) in winner.items():
            for f in _case_files(outs[i], c):
                _link_or_copy(f, dest / f.relative_to(outs[i]))
    manifest = _manifest(merged, shards, conflicts)
    from client.pipeline.study import write_studies

    manifest["n_studies"] = len(write_studies(dest, merged))  # studies.csv from the rows
    results.write_json_atomic(dest / results.RUN_JSON, manifest)
    from client.outputs.report import write_report

    write_report(merged, dest, manifest)
    return manifest


def _check_folders(outs: list[Path], dest: Path) -> None:
    """ConfigError unless every OUT has results, none is named twice, and ``dest`` is
    none of them and new or empty."""
    if not outs:
        raise ConfigError("merge: name at least one OUT folder")
    seen = set()
    for o in outs:
        if not (o / results.RESULTS_JSONL).is_file():
            raise ConfigError(f"merge: {o}: no {results.RESULTS_JSONL} (not a hepascreen OUT)")
        r = o.resolve()
        if r in seen:
            raise ConfigError(f"merge: {o} named twice")
        seen.add(r)
    if dest.resolve() in seen:
        raise ConfigError(f"merge: -o {dest} is one of the OUT folders")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ConfigError(f"merge: -o {dest} exists and is not an empty folder (nothing changed)")


def _collect(outs: list[Path]):
    """Read every OUT: the winning row per case_id (with its OUT's index), the dropped
    rows, the conflicts, every OUT's own attempts, and each OUT's summary."""
    winner: dict[str, tuple[dict, int]] = {}
    losers: list[dict] = []
    conflicts: list[dict] = []
    attempts: list[dict] = []
    shards = []
    for i, o in enumerate(outs):
        attempts += results.read_jsonl(o / results.ATTEMPTS_JSONL)
        try:
            info = json.loads((o / results.RUN_JSON).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            info = {}
        rows = results.read_rows(o)
        shards.append(_summary(o, info, len(rows)))
        for row in rows:
            c = row["case_id"]
            if c not in winner:
                winner[c] = (row, i)
                continue
            old, j = winner[c]
            new_wins = _age(row, o) >= _age(old, outs[j])
            keep, keep_i, drop, drop_i = (row, i, old, j) if new_wins else (old, j, row, i)
            winner[c] = (keep, keep_i)
            losers.append(drop)
            conflicts.append({
                "case_id": c, "kept": str(outs[keep_i]), "dropped": str(outs[drop_i]),
                "same_source": keep.get("source_id") == drop.get("source_id"),
                "same_result": all(keep.get(k) == drop.get(k) for k in _RESULT_KEYS),
            })  # fmt: skip
    return winner, losers, conflicts, attempts, shards


def _write_rows(dest: Path, merged: list[dict], older: list[dict]) -> None:
    """results.jsonl / results.csv of the merged rows; attempts.jsonl of the ``older``
    rows (every OUT's attempts and the dropped rows) when there are any."""
    results._write_atomic(dest / results.RESULTS_JSONL, "".join(map(results._json_line, merged)))
    results._write_atomic(
        dest / results.RESULTS_CSV,
        results._csv_header() + "".join(map(results._csv_line, merged)),
    )
    old_rows = [results.ordered_row(r) for r in older]
    if old_rows:
        results._write_atomic(
            dest / results.ATTEMPTS_JSONL, "".join(map(results._json_line, old_rows))
        )


def _manifest(merged: list[dict], shards: list[dict], conflicts: list[dict]) -> dict:
    """The merged run.json (without ``n_studies``)."""
    counts = {s: sum(r["status"] == s for r in merged) for s in contract.STATUSES}
    all_finished = all(s["status"] == "finished" for s in shards)
    manifest = {
        "tool": "hepascreen merge",
        "tool_version": results.tool_version(),
        "schema_version": contract.SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "status": "finished" if all_finished else "incomplete",
        "merged_from": shards,
        "n_processed": len(merged),
        "n_ok": counts.get(contract.STATUS_OK, 0),
        "n_flagged": counts.get(contract.STATUS_FLAGGED, 0),
        "n_failed": counts.get(contract.STATUS_ERROR, 0),
        "failures": [
            {"case_id": r["case_id"], "error": r["error"]}
            for r in merged
            if r["status"] == contract.STATUS_ERROR
        ],
        "conflicts": conflicts,
        "model": next((s["model"] for s in shards if s.get("model")), None),
        "mode": "merged",
        "timings": {
            "wall_s": round(max((s["wall_s"] or 0.0 for s in shards), default=0.0), 2),
            "shard_wall_s": [s["wall_s"] for s in shards],
        },
        **results.environment(),
    }
    models = {json.dumps(s.get("model"), sort_keys=True) for s in shards if s.get("model")}
    if len(models) > 1:
        manifest["warning"] = (
            "the OUT folders were screened with different models (see merged_from)"
        )
    return manifest


def _summary(out: Path, info: dict, n_rows: int) -> dict:
    t = info.get("timings") or {}
    shard = info.get("shard")  # {"k", "n", "n_all"} from client.scaleout.shard.apply_to_discovery
    shard = f"{shard['k']}/{shard['n']}" if isinstance(shard, dict) else shard
    return {
        "out": str(out),
        "run_id": info.get("run_id"),
        "status": info.get("status", "unknown (no run.json)"),
        "shard": shard,
        "n_rows": n_rows,
        "n_found": info.get("n_found"),
        "wall_s": t.get("wall_s"),
        "scans_per_minute": t.get("scans_per_minute"),
        "model": info.get("model"),
    }


def build_parser(prog: str = "hepascreen merge") -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog=prog,
        description="Merge the OUT folders of shards (--shard K/N) or runs: one row per "
        "case_id (the latest attempt wins; conflicts reported), manifests, report.",
    )
    ap.add_argument("outs", nargs="+", metavar="OUT", help="OUT folders to merge")
    ap.add_argument("-o", "--out", required=True, metavar="MERGED", help="new or empty folder")
    ap.add_argument("--no-files", action="store_true",
                    help="do not link masks/QC/DICOM files into MERGED")  # fmt: skip
    ap.add_argument("--quiet", action="store_true")
    return ap


def main(argv=None, prog: str = "hepascreen merge") -> int:
    """Command line of :func:`merge`; returns the exit status (see the module docstring)."""
    args = build_parser(prog).parse_args(argv)
    try:
        m = merge(args.outs, args.out, link_files=not args.no_files)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for c in m["conflicts"]:
        same = "same source" if c["same_source"] else "DIFFERENT sources"
        res = "same result" if c["same_result"] else "different results"
        print(f"conflict: {c['case_id']}: kept {c['kept']}, dropped {c['dropped']} "
              f"({same}, {res}; the dropped row is in attempts.jsonl)", file=sys.stderr)  # fmt: skip
    for s in m["merged_from"]:
        if s["status"] != "finished":
            print(f"warning: {s['out']}: run status {s['status']!r}", file=sys.stderr)
    if not args.quiet:
        print(f"{m['n_processed']} rows ({m['n_failed']} failed, {len(m['conflicts'])} "
              f"conflicts) from {len(m['merged_from'])} folders in {args.out}/results.csv")  # fmt: skip
    return 1 if m["n_failed"] or m["status"] != "finished" else 0


if __name__ == "__main__":
    raise SystemExit(main())
