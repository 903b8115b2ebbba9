"""``keyless-m2m assertion``: sign one ``private_key_jwt`` client assertion and print it
(``--decode``: with its header and claims). Its ``aud`` is the one a token request sends
first (``PrivateKeyJWT``'s audience policy): the issuer when it is known, else the token
endpoint, found through the issuer's metadata when only ``--issuer`` is given."""

from __future__ import annotations

import argparse
import json

from ..client_auth import PrivateKeyJWT
from ..discovery import discover
from ..errors import ConfigurationError
from ._exit import EXIT_OK
from ._output import decode_assertion, out
from ._session import Session
from ._settings import ENV_ISSUER, ENV_SIGNER, ENV_TOKEN_ENDPOINT

__all__ = ["cmd_assertion"]


async def cmd_assertion(args: argparse.Namespace, session: Session) -> int:
    settings = session.settings
    auth = session.client_auth()
    if not isinstance(auth, PrivateKeyJWT):
        raise ConfigurationError(f"an assertion needs private_key_jwt: pass --signer URI or set {ENV_SIGNER}")
    if auth.issuer is not None or settings.token_endpoint:
        token_endpoint = settings.token_endpoint or auth.issuer or ""
    elif settings.issuer:
        async with session.http_client() as http:
            metadata = await discover(
                settings.issuer, http_client=http, allow_insecure_http=settings.allow_insecure_http
            )
        token_endpoint = metadata.token_endpoint
    else:
        raise ConfigurationError(
            f"the assertion's aud needs --token-endpoint or --issuer (or {ENV_TOKEN_ENDPOINT} / {ENV_ISSUER})"
        )
    assertion = await auth.assertion(token_endpoint)
    if args.decode:
        header, claims = decode_assertion(assertion)
        out(json.dumps({"header": header, "claims": claims, "assertion": assertion}, indent=2))
    else:
        out(assertion)
    return EXIT_OK
