"""``keyless-m2m token``: get one access token with the client-credentials grant and print
it (``--json``: the whole token response)."""

from __future__ import annotations

import argparse
import json

from ._exit import EXIT_OK
from ._output import out
from ._session import Session

__all__ = ["cmd_token"]


async def cmd_token(args: argparse.Namespace, session: Session) -> int:
    auth = session.client_auth()
    async with session.manager(auth) as tokens:
        token = await tokens.get_token()
    if args.json:
        out(json.dumps({"access_token": token.value, **token.raw}, indent=2))
    else:
        out(token.value)
    return EXIT_OK
