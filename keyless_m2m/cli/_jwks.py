"""``keyless-m2m jwks``: print ``{"keys": [...]}`` with the public JWK of each signer, the
document to register with the authorization server."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..errors import ConfigurationError
from ._exit import EXIT_OK
from ._output import out
from ._session import Session

__all__ = ["cmd_jwks"]


async def cmd_jwks(args: argparse.Namespace, session: Session) -> int:
    named = [*(args.signers or []), *args.uris]  # --signer URI, then the positional URIs
    uris = session.signer_uris(named, "jwks URI [URI ...] (or --signer URI)")
    keys: list[dict[str, Any]] = []
    for uri in uris:
        jwk = dict((await session.signer(uri).describe()).public_jwk)
        clash = next((k for k in keys if k["kid"] == jwk["kid"]), None)
        if clash == jwk:
            continue  # the same key named twice
        if clash is not None:
            raise ConfigurationError(f"two different keys share the kid {jwk['kid']!r}; give each its own")
        keys.append(jwk)
    out(json.dumps({"keys": keys}, indent=2))
    return EXIT_OK
