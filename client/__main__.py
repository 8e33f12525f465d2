"""``python -m client`` = the ``hepascreen`` command."""

from .cli import main

raise SystemExit(main())
