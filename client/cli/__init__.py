"""Layer 6, the commands: ``hepascreen`` (``hepascreen``), ``hepascreen screen`` /
``python -m client.batch`` (``batch``), ``hepascreen serve`` (``serve``) and the scale-out
options (``scaleout_args``).

May import: every layer (``client.node`` included); nothing imports this layer except the
entry points (``client/__main__.py``, ``client/batch.py``, ``[project.scripts]``).
"""

from client.cli.hepascreen import main, version_info

__all__ = ["main", "version_info"]
