"""``python -m nodeagent ARGS``: the same as ``shoal agent ARGS``."""

import sys

from nodeagent.server import main

sys.exit(main())
