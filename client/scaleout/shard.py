"""``--shard K/N``: a deterministic split of the discovered scans over N jobs.

For a site scheduler's fixed shards (a Slurm job array, a Kubernetes indexed Job):
job K of N screens the scans whose source identity hashes to K, each job into its
own OUT, and ``hepascreen merge OUT... -o MERGED`` joins them afterwards::

    hepascreen screen /archive -o out/shard-3 --shard 3/8 --url triton:8001

A scan belongs to shard ``1 + (H mod N)`` where ``H`` is the first 64 bits of the
SHA-256 of the scan's source key (:attr:`client.reading.discover.ScanSource.key`: the
resolved path of the file or DICOM folder, plus the series UID for one series of a
multi-series folder). The assignment of a scan therefore depends on nothing but
that scan: it does not change when the archive is discovered again, in another
order, or when other files are added (new files land in some shard; the old ones
stay where they were). Every job must see the archive under the same path (the
usual shared mount), since the path is part of the key. A DICOM series with a
StudyInstanceUID is sharded by its study instead (:func:`shard_key`), so that every
series of a study lands in one shard and the study is answered there
(:mod:`client.pipeline.study`).
"""

from __future__ import annotations

import argparse
import hashlib
import re

from client.core.errors import ConfigError

_SPEC = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` -> ``(K, N)`` with ``1 <= K <= N``; raises ConfigError otherwise.

    Parameters
    ----------
    text : str
        The ``--shard`` value, e.g. ``"2/8"`` (shards are numbered from 1, like
        ``$((SLURM_ARRAY_TASK_ID + 1))/N`` or ``$((JOB_COMPLETION_INDEX + 1))/N``).
    """
    m = _SPEC.match(str(text))
    if not m:
        raise ConfigError(f"--shard {text!r}: expected K/N, e.g. 1/4 (shards count from 1)")
    k, n = int(m.group(1)), int(m.group(2))
    if n < 1 or not 1 <= k <= n:
        raise ConfigError(f"--shard {text!r}: need 1 <= K <= N (got K={k}, N={n})")
    return k, n


def shard_of(key: str, n: int) -> int:
    """The shard (1..n) of a scan with source key ``key``."""
    h = int.from_bytes(hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()[:8], "big")
    return 1 + h % n


def select(sources, k: int, n: int) -> list:
    """The sources of shard ``k`` of ``n`` (order kept).

    Parameters
    ----------
    sources : iterable of ScanSource
        Discovered scans (anything with a ``key`` attribute).
    k, n : int
        Shard number (1..n) and number of shards.
    """
    if not 1 <= k <= n:
        raise ConfigError(f"shard {k}/{n}: need 1 <= K <= N")
    return [s for s in sources if shard_of(shard_key(s), n) == k]


def shard_key(source) -> str:
    """What a scan is sharded by: its study (all series of a DICOM study land in one
    shard, so that the study is answered there), else its source key."""
    uid = getattr(source, "study_uid", None)
    return "study\n" + uid if uid else source.key


def apply_to_discovery(found, spec: str | None):
    """Keep only shard ``spec`` (``"K/N"``) of a :class:`client.reading.discover.Discovery` in place.

    Returns ``found``. The scans of other shards are listed nowhere (their jobs
    list them); ``found.shard`` records ``{"k", "n", "n_all"}`` for the manifest.
    ``spec`` None leaves ``found`` unchanged.
    """
    if not spec:
        return found
    k, n = parse_shard(spec)
    n_all = len(found.sources)
    found.sources = select(found.sources, k, n)
    found.shard = {"k": k, "n": n, "n_all": n_all}
    return found


def shard_type(text: str) -> str:
    """argparse ``type=`` for ``--shard``: checks the form, keeps the text."""
    try:
        parse_shard(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return text


__all__ = ["apply_to_discovery", "parse_shard", "select", "shard_of", "shard_type"]
