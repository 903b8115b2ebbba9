"""Measure what hostile answers cost (the rows of docs/reliability.md#hostile-answers):
``python -m benchmarks.hostile [asyncio|trio]``.

Trickled headers, a trickled body and trickled metadata against ``TokenManager`` with
``timeout=2, deadline=5``; gzip bombs of 1 GiB of zeros (one and two layers) as a token
response and as metadata, with the peak RSS growth sampled while the call runs. The test
suite asserts the same bounds (tests/integration/test_endpoint_hostile.py,
tests/integration/test_http_decompression.py) with the same server and sampler
(``tests/hostile_server.py``); this prints the figures.
"""

from __future__ import annotations

import json
import sys
import time

import anyio

from keyless_m2m import ClientSecretPost, KeylessM2MError, TokenManager
from keyless_m2m.discovery import discover
from keyless_m2m.endpoint import TokenEndpoint
from tests.hostile_server import Answer, HostileServer, gzip_stream, peak_growth

TOKEN = b'{"access_token": "t", "token_type": "Bearer", "expires_in": 300}'
AUTH = ClientSecretPost("measure", "measure-secret")
METADATA_PATHS = ("/.well-known/oauth-authorization-server", "/.well-known/openid-configuration")


def row(*cells: object) -> None:
    print("| " + " | ".join(str(c) for c in cells) + " |")


async def trickles() -> None:
    cases = [
        ("slow headers", "status line and headers 1 byte/s", "/token", Answer(body=TOKEN, trickle_head=1.0)),
        (
            "slow body",
            "200, content-length: 200, 1 body byte/s",
            "/token",
            Answer(body=TOKEN, content_length=200, trickle_body=1.0),
        ),
        ("slow metadata", "metadata body 1 byte/s (from_issuer)", METADATA_PATHS[0], None),
    ]
    for name, injected, path, answer in cases:
        with HostileServer() as server:
            if answer is None:
                document = {"issuer": server.url(""), "token_endpoint": server.url("/token")}
                answer = Answer(body=json.dumps(document).encode(), trickle_body=1.0)
                tokens = TokenManager.from_issuer(
                    server.url(""), AUTH, timeout=2, deadline=5, metadata_max_age=0
                )
            else:
                tokens = TokenManager(server.url(path), AUTH, timeout=2, deadline=5)
            server.answers[path] = answer
            started = time.monotonic()
            try:
                await tokens.get_token()
                outcome = "a token"
            except KeylessM2MError as exc:
                outcome = f"{type(exc).__name__}(reason={getattr(exc, 'reason', None)!r})"
            elapsed = time.monotonic() - started
            await tokens.aclose()
            row(name, injected, tokens.stats.requests, outcome, f"{elapsed:.1f} s")


async def bombs() -> None:
    zeros = bytes(1 << 20)
    once = gzip_stream(zeros for _ in range(1024))
    for coding, body in (("gzip", once), ("gzip, gzip", gzip_stream(iter([once])))):
        with HostileServer() as server:
            answer = Answer(body=body, headers=[("content-encoding", coding)])
            server.answers["/token"] = answer
            endpoint = TokenEndpoint(server.url("/token"), AUTH, max_attempts=1)
            growth, raised = await peak_growth(endpoint.request)
            await endpoint.aclose()
            what = f"1 GiB of zeros, {coding!r}, {len(body):,} B on the wire"
            row(
                f"gzip bomb ({coding})", what, 1, type(raised).__name__, f"+{growth / 2**20:.1f} MiB peak RSS"
            )
            for path in METADATA_PATHS:
                server.answers[path] = answer
            growth, raised = await peak_growth(lambda: discover(server.url(""), max_age=0))
            row(
                f"gzip bomb ({coding}) as metadata",
                what,
                "-",
                type(raised).__name__,
                f"+{growth / 2**20:.1f} MiB peak RSS",
            )


async def main() -> None:
    row("Fault", "Injected", "Requests made", "Error", "Cost")
    print("|---|---|---|---|---|")
    await trickles()
    await bombs()


if __name__ == "__main__":
    anyio.run(main, backend=sys.argv[1] if len(sys.argv) > 1 else "asyncio")
