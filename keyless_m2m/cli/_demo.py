"""``keyless-m2m demo``: the whole flow against an embedded loopback authorization server
(the testing kit's, imported only here and only when the demo runs): discovery, the client
assertion, single flight under concurrency, the cache, a forced refresh."""

from __future__ import annotations

import argparse
from time import perf_counter
from typing import Any

import anyio

from ..client_auth import PrivateKeyJWT
from ..discovery import DiscoveredTokenEndpoint
from ..manager import TokenManager
from ._exit import EXIT_OK, EXIT_OTHER
from ._output import PROG, compact, decode_assertion, err, out
from ._session import Session

__all__ = ["cmd_demo"]


def _plural(count: int, word: str) -> str:
    return f"{count:,} {word}{'' if count == 1 else 's'}"


async def cmd_demo(args: argparse.Namespace, session: Session) -> int:
    from cryptography.hazmat.primitives.asymmetric import ec

    from ..signers.local import LocalSigner
    from ..testing.authorization_server import AuthorizationServer

    concurrency: int = args.concurrency
    client_id, scope = "demo-client", "demo.read"

    def step(number: int, title: str, text: str) -> None:
        out(f"{number}. {title:<22} {text}")

    def more(text: str) -> None:
        out(f"   {'':<22} {text}")

    out(f"{PROG} demo: private_key_jwt client credentials, end to end, on loopback\n")
    server = AuthorizationServer(expires_in=3600).start()
    try:
        step(1, "authorization server", f"{server.issuer} (embedded, this process, 127.0.0.1 only)")

        if args.signer:
            signer = session.signer(args.signer)
            origin = f"from {args.signer}"
        else:
            signer = LocalSigner(ec.generate_private_key(ec.SECP256R1()), name="throwaway demo key")
            origin = "throwaway EC P-256 key, generated now, in memory only"
        description = await signer.describe()
        step(2, "signing key", origin)
        more(f"alg {description.algorithm}, kid {description.key_id}")

        server.register_client(client_id, public_jwk=dict(description.public_jwk), scopes=[scope])
        step(3, "client registered", f"{client_id!r} with this public JWK (what `{PROG} jwks` prints):")
        more(compact(dict(description.public_jwk)))

        auth = PrivateKeyJWT(client_id, signer)
        async with TokenManager.from_issuer(server.issuer, auth, scope=scope) as tokens:
            endpoint = tokens.endpoint
            assert isinstance(endpoint, DiscoveredTokenEndpoint)
            metadata = await endpoint.discover()
            step(4, "discovery", f"{metadata.url}")
            more(
                f"token endpoint {metadata.token_endpoint}; the server accepts private_key_jwt "
                f"with {description.algorithm}"
            )

            assertion = await auth.assertion(metadata.token_endpoint)
            header, claims = decode_assertion(assertion)
            step(5, "client assertion", "a fresh one is signed for every token request; decoded:")
            more(f"header {compact(header)}")
            more(f"claims {compact(claims)}")

            results: list[Any] = [None] * concurrency

            async def call(index: int) -> None:
                results[index] = await tokens.get_token()

            started = perf_counter()
            async with anyio.create_task_group() as group:
                for index in range(concurrency):
                    group.start_soon(call, index)
            elapsed = perf_counter() - started
            token = results[0]
            same = all(result is token for result in results)
            requests_after_burst = server.token_requests
            step(
                6,
                "token",
                f"{_plural(concurrency, 'concurrent get_token() call')} -> "
                f"{_plural(requests_after_burst, 'token request')}, "
                f"{_plural(tokens.stats.signatures, 'signature')} ({elapsed:.2f} s)",
            )
            more(
                f"{'every caller got the same token' if same else 'callers got different tokens'}: "
                f"Bearer {token.value[:8]}... expires in {token.expires_in:.0f} s, scope {token.scope}"
            )

            started = perf_counter()
            for _ in range(100_000):
                await tokens.get_token()
            cached = perf_counter() - started
            step(
                7,
                "cache",
                f"100,000 more get_token() calls served from the cache in {cached:.2f} s, "
                f"{_plural(server.token_requests - requests_after_burst, 'more token request')}",
            )

            await tokens.invalidate(token)
            fresh = await tokens.get_token()
            step(
                8,
                "forced refresh",
                f"invalidate(token) then get_token() -> "
                f"{'a new token' if fresh != token else 'the same token'}, "
                f"{_plural(server.token_requests, 'token request')} in total",
            )
            ok = same and requests_after_burst == 1 and server.token_requests == 2 and fresh != token
    finally:
        await anyio.to_thread.run_sync(server.stop)
    step(9, "stopped", "the server is stopped; nothing was left running")
    out(
        f"\nnext: `{PROG} jwks URI` prints your key's JWKS to register, "
        f"`{PROG} doctor` checks your configuration"
    )
    if not ok:
        err(f"{PROG}: the demo did not see exactly one token request per flight (see above)")
        return EXIT_OTHER
    return EXIT_OK
