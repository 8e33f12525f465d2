"""The spool: every received instance durable on disk before its store is acknowledged.

Layout (names are hashes: no UID, name or number appears in a path or a log)::

    OUT/node/spool/<study_key>/<series_key>/<instance_key>.dcm

An instance is written to a temporary file beside its target, ``fsync``'ed, renamed
into place and its folder ``fsync``'ed: after :meth:`Spool.store` returns, a power cut
or a ``kill -9`` cannot lose it, and a reader never sees half a file. The same
instance sent again replaces its file (the same name), so a re-sent study does not
double its instances.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def _key(kind: str, uid: str, n: int = 16) -> str:
    return hashlib.sha256(f"{kind}:{uid}".encode()).hexdigest()[:n]


def study_key(study_uid: str) -> str:
    """Folder name of a study in the spool (a hash of its StudyInstanceUID)."""
    return _key("study", study_uid)


def series_key(series_uid: str) -> str:
    """Folder name of a series in the spool, which is also its ``case_id`` in the results
    (``--masks`` label maps are found as ``DIR/<series_key>.nii.gz``)."""
    return _key("series", series_uid)


def instance_key(sop_instance_uid: str) -> str:
    return _key("instance", sop_instance_uid, 24)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """Durable storage of received instances, one folder per study.

    Parameters
    ----------
    root : Path
        ``OUT/node/spool`` (created).
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        self._mkdirs(self.root)

    def _mkdirs(self, path: Path) -> None:
        """Create ``path`` and its parents, each new entry fsync'ed into its parent."""
        missing = []
        p = Path(path)
        while not p.exists():
            missing.append(p)
            p = p.parent
        for d in reversed(missing):
            try:
                d.mkdir()
            except FileExistsError:
                continue
            _fsync_dir(d.parent)

    def study_dir(self, skey: str) -> Path:
        return self.root / skey

    def store(self, study_uid: str, series_uid: str, sop_uid: str, data: bytes) -> tuple:
        """Write one instance (a whole DICOM file, preamble and meta included) durably.

        Returns ``(study_key, series_key, instance_key, path)``.
        """
        sk, ek, ik = study_key(study_uid), series_key(series_uid), instance_key(sop_uid)
        folder = self.root / sk / ek
        self._mkdirs(folder)
        path = folder / f"{ik}.dcm"
        tmp = folder / f".{ik}.{os.getpid()}.{id(data):x}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        _fsync_dir(folder)
        return sk, ek, ik, path

    def snapshot(self, skey: str, dest: Path) -> int:
        """Hard-link the study's instances into ``dest/<series_key>/`` (a folder made anew).

        What a job screens is this snapshot, not the live folder: instances of the same
        study arriving during the screening (a re-send replaces files by rename) belong
        to the next job and cannot change what this one reads. Links cost no data; a
        file system without hard links gets copies. Returns the number of instances.
        """
        import shutil

        dest = Path(dest)
        if dest.exists():
            shutil.rmtree(dest)  # a snapshot left by a killed screening
        n = 0
        for src in sorted(self.study_dir(skey).glob("*/*.dcm")):
            target = dest / src.parent.name / src.name
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(src, target)
            except OSError:
                shutil.copy2(src, target)
            n += 1
        return n

    def remove_temporaries(self) -> int:
        """Delete the temporary files a killed node left (never acknowledged)."""
        n = 0
        for p in self.root.glob("*/*/.*.tmp"):
            p.unlink(missing_ok=True)
            n += 1
        return n


__all__ = ["Spool", "instance_key", "series_key", "study_key"]
