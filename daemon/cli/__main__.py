"""`python -m daemon.cli ...` is `stoker ...` (the editor bridge starts the daemon this way)."""

import sys

from daemon.cli.main import main

sys.exit(main())
