"""``python -m keyless_m2m``: the ``keyless-m2m`` command."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
