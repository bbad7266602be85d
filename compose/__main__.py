"""``python -m compose``: the ``compose`` command."""

import sys

from compose.cli import main

sys.exit(main())
