"""Job state in SQLite: survives ``kill -9`` at any point (WAL, ``synchronous=FULL``).

One job per arrival of a study (a study re-sent after its job finished gets a new job;
its spool folder is shared, so the new job screens everything received so far).

States::

    received --(idle, no open association, last one released)--> ready --> screening
        --> sending --> done | failed
    received --(last association aborted)--> held --(re-sent)--> received
                                              held --(max_hold_seconds)--> ready

On restart (:meth:`JobStore.recover`): associations still marked open ended with the
node, so they count as aborted (their studies are held until re-sent); a job caught
in ``screening`` goes back to ``ready`` (screening is deterministic: the same rows and
the same SEG/SR UIDs); sends already acknowledged are never repeated, sends in flight
when the node died are tried again (same UIDs: the PACS keeps one copy).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

RECEIVED, READY, SCREENING, SENDING, DONE, FAILED, HELD = (
    "received", "ready", "screening", "sending", "done", "failed", "held",
)  # fmt: skip
STATES = (RECEIVED, READY, SCREENING, SENDING, DONE, FAILED, HELD)
OPEN_STATES = (RECEIVED, HELD, READY)  # new instances of the study join this job
# Send states: pending (due at next_try), sent, failed (permanent or retries exhausted).
PENDING, SENT = "pending", "sent"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    study_key TEXT NOT NULL,
    state TEXT NOT NULL,
    n_instances INTEGER NOT NULL DEFAULT 0,
    n_bytes INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    last_seen REAL NOT NULL,
    state_since REAL NOT NULL,
    n_rows INTEGER,
    note TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS jobs_study ON jobs(study_key);
CREATE TABLE IF NOT EXISTS instances(
    job_id INTEGER NOT NULL, instance_key TEXT NOT NULL, n_bytes INTEGER NOT NULL,
    PRIMARY KEY(job_id, instance_key)
);
CREATE TABLE IF NOT EXISTS assocs(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    calling_ae TEXT NOT NULL,
    state TEXT NOT NULL,            -- open | released | aborted
    started REAL NOT NULL,
    ended REAL
);
CREATE TABLE IF NOT EXISTS assoc_jobs(
    assoc_id INTEGER NOT NULL, job_id INTEGER NOT NULL, PRIMARY KEY(assoc_id, job_id)
);
CREATE TABLE IF NOT EXISTS sends(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER NOT NULL,
    dest TEXT NOT NULL,
    kind TEXT NOT NULL,             -- seg | sr
    path TEXT NOT NULL,
    state TEXT NOT NULL,            -- pending | sent | failed
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try REAL NOT NULL,
    last_error TEXT NOT NULL DEFAULT '',
    sent_at REAL,
    UNIQUE(job_id, dest, path)
);
"""


class JobStore:
    """The node's job, association and send records (one SQLite file, thread-safe).

    Parameters
    ----------
    path : Path
        ``OUT/node/jobs.sqlite`` (created).
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=10000")
        self._db.executescript(_SCHEMA)

    # -- plumbing -------------------------------------------------------------------
    def _tx(self, fn):
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                out = fn(self._db)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            return out

    def query(self, sql: str, args=()) -> list[dict]:
        with self._lock:
            return [dict(r) for r in self._db.execute(sql, args).fetchall()]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- associations ----------------------------------------------------------------
    def open_assoc(self, calling_ae: str) -> int:
        return self._tx(
            lambda db: (
                db.execute(
                    "INSERT INTO assocs(calling_ae, state, started) VALUES (?, 'open', ?)",
                    (calling_ae, time.time()),
                ).lastrowid
            )
        )

    def end_assoc(self, assoc_id: int, released: bool) -> None:
        self._tx(
            lambda db: db.execute(
                "UPDATE assocs SET state=?, ended=? WHERE id=? AND state='open'",
                ("released" if released else "aborted", time.time(), assoc_id),
            )
        )

    # -- receiving -------------------------------------------------------------------
    def record_instance(
        self, assoc_id: int, skey: str, ikey: str, n_bytes: int
    ) -> tuple[int, bool]:
        """Record one durable instance; returns ``(job_id, new_job)``.

        The study's open job (received, held or ready) takes it, or a new job is made;
        a held or ready job goes back to ``received`` (more of the study is arriving).
        """

        def fn(db):
            now = time.time()
            row = db.execute(
                "SELECT id, state FROM jobs WHERE study_key=? AND state IN (?,?,?) "
                "ORDER BY id DESC LIMIT 1",
                (skey, *OPEN_STATES),
            ).fetchone()
            new = row is None
            if new:
                job = db.execute(
                    "INSERT INTO jobs(study_key, state, created, last_seen, state_since) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (skey, RECEIVED, now, now, now),
                ).lastrowid
            else:
                job = row["id"]
                if row["state"] != RECEIVED:
                    db.execute(
                        "UPDATE jobs SET state=?, state_since=? WHERE id=?", (RECEIVED, now, job)
                    )
            cur = db.execute(
                "INSERT OR IGNORE INTO instances(job_id, instance_key, n_bytes) VALUES (?,?,?)",
                (job, ikey, n_bytes),
            )
            db.execute(
                "UPDATE jobs SET last_seen=?, n_instances=n_instances+?, n_bytes=n_bytes+? "
                "WHERE id=?",
                (now, cur.rowcount, n_bytes if cur.rowcount else 0, job),
            )
            db.execute(
                "INSERT OR IGNORE INTO assoc_jobs(assoc_id, job_id) VALUES (?, ?)", (assoc_id, job)
            )
            return job, new

        return self._tx(fn)

    def advance_ready(self, idle_seconds: float, max_hold_seconds: float) -> list[tuple]:
        """Move received jobs to ready or held, and expired held jobs to ready.

        Returns ``[(job_id, old_state, new_state), ...]`` for the jobs that moved.
        """

        def fn(db):
            now, moved = time.time(), []
            for j in db.execute(
                "SELECT id, state, last_seen, state_since FROM jobs WHERE state IN (?, ?)",
                (RECEIVED, HELD),
            ).fetchall():
                if j["state"] == HELD:
                    if now - j["state_since"] >= max_hold_seconds:
                        db.execute(
                            "UPDATE jobs SET state=?, state_since=?, note=? WHERE id=?",
                            (READY, now, "screened after the hold expired", j["id"]),
                        )
                        moved.append((j["id"], HELD, READY))
                    continue
                assocs = db.execute(
                    "SELECT a.state, a.ended FROM assocs a JOIN assoc_jobs aj "
                    "ON aj.assoc_id=a.id WHERE aj.job_id=?",
                    (j["id"],),
                ).fetchall()
                if any(a["state"] == "open" for a in assocs):
                    continue
                last = max(assocs, key=lambda a: a["ended"] or 0, default=None)
                if last is not None and last["state"] == "aborted":
                    db.execute(
                        "UPDATE jobs SET state=?, state_since=? WHERE id=?", (HELD, now, j["id"])
                    )
                    moved.append((j["id"], RECEIVED, HELD))
                elif now - j["last_seen"] >= idle_seconds:
                    db.execute(
                        "UPDATE jobs SET state=?, state_since=? WHERE id=?", (READY, now, j["id"])
                    )
                    moved.append((j["id"], RECEIVED, READY))
            return moved

        return self._tx(fn)

    # -- screening and sending ---------------------------------------------------------
    def set_state(self, job_id: int, state: str, note: str | None = None, **cols) -> None:
        sets, args = ["state=?", "state_since=?"], [state, time.time()]
        if note is not None:
            sets.append("note=?")
            args.append(note)
        for k, v in cols.items():
            sets.append(f"{k}=?")
            args.append(v)
        self._tx(
            lambda db: db.execute(f"UPDATE jobs SET {', '.join(sets)} WHERE id=?", (*args, job_id))
        )

    def next_ready(self) -> dict | None:
        """The oldest ready job, now marked ``screening`` (None when there is none).

        Claimed in one transaction, so several screening threads never take the same job;
        a study with a job already being screened waits (its jobs run one after another).
        """

        def fn(db):
            row = db.execute(
                "SELECT * FROM jobs WHERE state=? AND study_key NOT IN "
                "(SELECT study_key FROM jobs WHERE state=?) ORDER BY id LIMIT 1",
                (READY, SCREENING),
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE jobs SET state=?, state_since=? WHERE id=?",
                (SCREENING, time.time(), row["id"]),
            )
            return dict(row)

        return self._tx(fn)

    def screened(self, job_id: int, sends: list[tuple], n_rows: int, note: str = "") -> str:
        """Record a job's screening outcome and its sends ``[(dest, kind, path), ...]``
        in one transaction; the job becomes ``sending`` (``done`` when nothing to send)."""

        def fn(db):
            now = time.time()
            for dest, kind, path in sends:
                db.execute(
                    "INSERT OR IGNORE INTO sends(job_id, dest, kind, path, state, next_try) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (job_id, dest, kind, str(path), PENDING, now),
                )
            state = SENDING if sends else DONE
            db.execute(
                "UPDATE jobs SET state=?, state_since=?, n_rows=?, note=? WHERE id=?",
                (state, now, n_rows, note, job_id),
            )
            return state

        return self._tx(fn)

    def due_sends(self) -> list[dict]:
        return self.query(
            "SELECT * FROM sends WHERE state=? AND next_try<=? ORDER BY id", (PENDING, time.time())
        )

    def send_result(self, send_id: int, ok: bool, error: str = "", retry_in: float | None = None):
        """Record one send attempt: sent, retried in ``retry_in`` s, or failed (None).

        Returns the job's new state when the job finished (``done``/``failed``), else None.
        """

        def fn(db):
            now = time.time()
            if ok:
                db.execute(
                    "UPDATE sends SET state=?, attempts=attempts+1, sent_at=?, last_error='' "
                    "WHERE id=?",
                    (SENT, now, send_id),
                )
            elif retry_in is not None:
                db.execute(
                    "UPDATE sends SET attempts=attempts+1, next_try=?, last_error=? WHERE id=?",
                    (now + retry_in, error, send_id),
                )
            else:
                db.execute(
                    "UPDATE sends SET state=?, attempts=attempts+1, last_error=? WHERE id=?",
                    (FAILED, error, send_id),
                )
            job = db.execute("SELECT job_id FROM sends WHERE id=?", (send_id,)).fetchone()[0]
            states = [
                r[0]
                for r in db.execute("SELECT state FROM sends WHERE job_id=?", (job,)).fetchall()
            ]
            if PENDING in states:
                return None
            final = DONE if all(s == SENT for s in states) else FAILED
            note = "" if final == DONE else "a send failed (node status lists it)"
            db.execute(
                "UPDATE jobs SET state=?, state_since=?, note=CASE WHEN ?='' THEN note ELSE ? END "
                "WHERE id=?",
                (final, now, note, note, job),
            )
            return final

        return self._tx(fn)

    # -- restart ---------------------------------------------------------------------
    def recover(self) -> dict:
        """After a restart: open associations -> aborted; screening jobs -> ready.

        Returns counts of what changed.
        """

        def fn(db):
            now = time.time()
            a = db.execute(
                "UPDATE assocs SET state='aborted', ended=? WHERE state='open'", (now,)
            ).rowcount
            s = db.execute(
                "UPDATE jobs SET state=?, state_since=? WHERE state=?", (READY, now, SCREENING)
            ).rowcount
            return {"associations_aborted": a, "jobs_rescreened": s}

        return self._tx(fn)

    # -- status ----------------------------------------------------------------------
    def jobs(self) -> list[dict]:
        """Every job with its send counts (no identifiers: ids, states, counts, times)."""
        return self.query(
            "SELECT j.id, j.state, j.n_instances, j.n_bytes, j.created, j.state_since, j.n_rows, "
            "j.note, "
            "(SELECT COUNT(*) FROM sends s WHERE s.job_id=j.id) AS n_sends, "
            "(SELECT COUNT(*) FROM sends s WHERE s.job_id=j.id AND s.state='sent') AS n_sent, "
            "(SELECT COUNT(*) FROM sends s WHERE s.job_id=j.id AND s.state='failed') AS n_failed "
            "FROM jobs j ORDER BY j.id"
        )


__all__ = ["JobStore", "STATES"]
