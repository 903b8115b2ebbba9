"""``keyless-m2m token``: get one access token with the client-credentials grant and print
it (``--json``: the whole token response)."""

from __future__ import annotations

import argparse
import json

from ._exit import EXIT_OK
from ._output import PROG, err, out
from ._session import Session

__all__ = ["cmd_token"]


async def cmd_token(args: argparse.Namespace, session: Session) -> int:
    auth = session.client_auth()
    async with session.manager(auth) as tokens:
        token = await tokens.get_token()
    if session.settings.dpop and not session.settings.dpop_key:
        err(
            f"{PROG}: note: the token is bound to an ephemeral DPoP key that ends with this "
            "command; to use the token elsewhere, bind it to a key you keep with --dpop-key URI"
        )
    if args.json:
        body = {"access_token": token.value, **token.raw}
        if token.dpop_jkt is not None:
            body["dpop_jkt"] = token.dpop_jkt  # the proof key's thumbprint (RFC 7638)
        out(json.dumps(body, indent=2))
    else:
        out(token.value)
    return EXIT_OK
