"""``python -m compose.cli``: the ``compose`` command."""

import sys

from compose.cli import main

sys.exit(main())
