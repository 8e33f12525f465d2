"""``python -m client.batch INPUT... -o OUT``: the archive screener's module entry (the
command-line contract of DESIGN.md). The command lives in :mod:`client.cli.batch`; this
module only keeps the documented ``-m client.batch`` spelling and its ``main``.
"""

from client.cli.batch import build_parser, main

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    raise SystemExit(main())
