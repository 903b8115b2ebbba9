"""``keyless-m2m proof METHOD URL``: one DPoP proof (RFC 9449 section 4) signed by the
``--dpop-key`` signer, for a request made with another tool (``curl -H "DPoP: ..."``);
with ``--access-token-file`` it carries the token's hash (``ath``, section 4.2)."""

from __future__ import annotations

import argparse
import re
from urllib.parse import urlsplit

from ..dpop import is_valid_nonce
from ..errors import ConfigurationError
from ._exit import EXIT_OK
from ._output import out
from ._session import Session
from ._settings import ENV_DPOP_KEY, read_secret_file

__all__ = ["cmd_proof"]

_METHOD = re.compile(r"[A-Za-z]{1,20}")


async def cmd_proof(args: argparse.Namespace, session: Session) -> int:
    if not session.settings.dpop_key:
        raise ConfigurationError(
            f"a proof needs the key the token is bound to: pass --dpop-key URI or set {ENV_DPOP_KEY}"
        )
    parts = urlsplit(args.url)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise ConfigurationError(f"the proof's URL must be an absolute http(s) URL, not {args.url!r}")
    if not _METHOD.fullmatch(args.method):
        raise ConfigurationError(f"{args.method!r} is not an HTTP method")
    if args.nonce is not None and not is_valid_nonce(args.nonce):
        raise ConfigurationError(
            "--nonce is not a DPoP nonce (RFC 9449 section 8.1: visible ASCII, no quote)"
        )
    access_token = None
    if args.access_token_file is not None:
        access_token = read_secret_file(args.access_token_file, "access token").strip()
        if not access_token or not access_token.isascii():
            # Not the token itself in the message: it is a credential.
            raise ConfigurationError(
                f"the access token file {args.access_token_file!r} holds no access token "
                "(empty, or not ASCII)"
            )
    key = session.dpop_key()
    assert key is not None  # --dpop-key is set
    proof = await key.proof(args.method, args.url, access_token=access_token, nonce=args.nonce)
    out(proof.reveal())
    return EXIT_OK
