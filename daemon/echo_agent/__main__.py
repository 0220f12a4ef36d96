"""`python -m daemon.echo_agent` runs the reference agent on stdio."""

import sys

from daemon.echo_agent.agent import main

sys.exit(main())
