"""``httpx.Auth`` for a token source: the flow lives in :mod:`keyless_m2m.bearer` (httpx is
the library's own HTTP client, so the managers' ``auth()`` needs it below them); this
module is its home among the integrations and keeps the import path of earlier versions.
"""

from __future__ import annotations

from ..bearer import BearerAuth, BearerFlow, bearer_auth_class, is_invalid_token_challenge

__all__ = ["BearerAuth", "BearerFlow", "bearer_auth_class", "is_invalid_token_challenge"]
