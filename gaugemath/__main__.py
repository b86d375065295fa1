"""``python -m gaugemath`` is the ``gaugemath`` command."""

import sys

from .cli import main

sys.exit(main())
