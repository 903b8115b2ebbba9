"""``python -m keyless_m2m``: the ``keyless-m2m`` command."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
