"""Atomic file output: write to a temporary file beside the target, then ``os.replace``.

A reader (or a crash) never sees a half-written mask, picture, report or manifest.
The finished file gets the permissions an ordinary ``open()`` would give it
(``0666 & ~umask``, i.e. 0644 under the usual umask 022), not ``mkstemp``'s 0600:
colleagues and the host user of a container run must be able to read the results.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

TMP_PREFIX = ".tmp-"


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux /proc)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (not thread-safe, rarely reached)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """Mode of a newly created regular file: ``0o666 & ~umask``."""
    return 0o666 & ~current_umask()


@contextmanager
def atomic_path(path: str | Path, suffix: str = ""):
    """Yield a temporary path in ``path``'s folder; on success it replaces ``path``.

    ``suffix`` keeps the extension writers use to choose a format (e.g. ``.nii.gz``).
    On an exception the temporary file is removed and ``path`` is left as it was.
    The result honours the umask (see the module docstring).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=suffix or path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def remove_stale_temporaries(folder: str | Path) -> list[str]:
    """Delete ``.tmp-*`` files left in ``folder`` and its subfolders by a killed run.

    Returns the removed paths. Only names made by :func:`atomic_path` are touched.
    """
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for dirpath, _, files in os.walk(folder):
        for name in files:
            if name.startswith(TMP_PREFIX):
                p = os.path.join(dirpath, name)
                try:
                    os.unlink(p)
                    removed.append(p)
                except OSError:
                    pass
    return removed
