"""Command-line options of the scale-out features, added to ``hepascreen screen`` in one call.

* ``--url HOST:PORT`` (repeatable) and ``--url-file FILE``: several Triton servers
  (:mod:`client.serving.endpoints`); ``args.url`` is a list or None.
* ``--shard K/N``: screen one shard of the discovered scans (:mod:`client.scaleout.shard`).
* ``--ray ADDRESS``, ``--ray-workers N``, ``--ray-cpus F``: the scans in Ray actors
  (:mod:`client.scaleout.ray_runner`).

See ``docs/scale-out.md``.
"""

from __future__ import annotations

import argparse


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """Add ``--url``/``--url-file``, ``--shard`` and the ``--ray`` options to ``ap``."""
    from client.scaleout.ray_runner import add_ray_arguments
    from client.scaleout.shard import shard_type
    from client.serving.endpoints import add_url_arguments

    add_url_arguments(ap)
    ap.add_argument(
        "--shard", type=shard_type, default=None, metavar="K/N",
        help="screen only shard K of N (a fixed split by each scan's source path; each "
        "shard into its own OUT, then 'hepascreen merge OUT... -o MERGED')",
    )  # fmt: skip
    add_ray_arguments(ap)


__all__ = ["add_arguments"]
