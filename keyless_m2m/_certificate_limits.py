"""The self-signed certificate's defaults (:mod:`keyless_m2m.certificates` uses them), in a
leaf of their own so that the command line's help can name them without importing
``cryptography.x509`` (a cold start of ``keyless-m2m token`` needs none of it)."""

from __future__ import annotations

__all__ = ["DEFAULT_SUBJECT", "MAX_DAYS"]

DEFAULT_SUBJECT = "CN=keyless-m2m"
MAX_DAYS = 3650
