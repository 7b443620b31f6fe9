"""`python -m server` runs the `fellowship` command."""

from server.cli import main

raise SystemExit(main())
