"""``python -m client`` = the ``hepascreen`` command."""

from client.cli.hepascreen import main

raise SystemExit(main())
