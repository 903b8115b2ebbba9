"""Decompression is bounded: the size cap applies to decoded bytes as they stream, nested or
unknown content codings are refused, and memory stays within a few MiB of the cap.

The bombs are 1 GiB of zeros, gzipped once (about 1 MB on the wire) and twice (about
1.8 KB), built once by streaming zlib over 1 MiB chunks so the test itself never holds the
gigabyte. Peak RSS is sampled by a thread while the call runs (an after-the-fact reading
would miss memory the allocator has already returned).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator

import httpx
import pytest

from keyless_m2m import ClientSecretPost, DiscoveryError, InvalidTokenResponseError
from keyless_m2m.discovery import discover
from keyless_m2m.endpoint import TokenEndpoint
from tests.hostile_server import Answer, HostileServer, gzip_stream, peak_growth

pytestmark = pytest.mark.anyio
SECRET = "bomb-secret-2f7a90"
TOKEN = b'{"access_token": "bomb-token", "token_type": "Bearer", "expires_in": 300}'
MAX_GROWTH = 32 * 1024 * 1024


@pytest.fixture(scope="module")
def bombs() -> dict[str, bytes]:
    # One raw deflate stream of 1 GiB of zeros, wrapped as gzip (RFC 1952) and as zlib
    # (RFC 1950, HTTP's "deflate"): compressing the gigabyte once, not twice.
    zeros = bytes(1 << 20)
    raw = gzip_stream((zeros for _ in range(1024)), wbits=-15)
    crc, adler = 0, 1
    for _ in range(1024):
        crc = zlib.crc32(zeros, crc)
        adler = zlib.adler32(zeros, adler)
    size = 1 << 30
    once = (
        b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
        + raw
        + crc.to_bytes(4, "little")
        + (size % 2**32).to_bytes(4, "little")
    )
    deflated = b"\x78\x9c" + raw + adler.to_bytes(4, "big")
    assert zlib.decompressobj(31).decompress(once, 64) == bytes(64)  # well-formed, both
    assert zlib.decompressobj(15).decompress(deflated, 64) == bytes(64)
    return {"gzip": once, "gzip, gzip": gzip_stream(iter([once])), "deflate": deflated}


@pytest.fixture
def server() -> Iterator[HostileServer]:
    with HostileServer() as hostile:
        yield hostile


@pytest.mark.parametrize("coding", ["gzip", "gzip, gzip", "deflate"])
async def test_a_compression_bomb_token_response_is_refused_within_bounded_memory(
    server: HostileServer, bombs: dict[str, bytes], coding: str
) -> None:
    server.answers["/token"] = Answer(body=bombs[coding], headers=[("content-encoding", coding)])
    endpoint = TokenEndpoint(server.url("/token"), ClientSecretPost("bomb", SECRET), max_attempts=1)
    try:
        growth, raised = await peak_growth(endpoint.request)
    finally:
        await endpoint.aclose()
    assert isinstance(raised, InvalidTokenResponseError), raised
    assert growth < MAX_GROWTH, f"RSS grew {growth / 2**20:.0f} MiB"


@pytest.mark.parametrize("coding", ["gzip", "gzip, gzip"])
async def test_a_compression_bomb_as_metadata_is_refused_within_bounded_memory(
    server: HostileServer, bombs: dict[str, bytes], coding: str
) -> None:
    answer = Answer(body=bombs[coding], headers=[("content-encoding", coding)])
    server.answers["/.well-known/oauth-authorization-server"] = answer
    server.answers["/.well-known/openid-configuration"] = answer
    growth, raised = await peak_growth(lambda: discover(server.url(""), max_age=0))
    assert isinstance(raised, DiscoveryError), raised
    assert growth < MAX_GROWTH, f"RSS grew {growth / 2**20:.0f} MiB"


@pytest.mark.parametrize("coding", ["gzip, gzip", "br", "zstd", "compress", "x-unknown"])
async def test_nested_or_unknown_codings_are_refused(server: HostileServer, coding: str) -> None:
    """A plain JSON token labelled with a coding we cannot bound is refused, not guessed at."""
    server.answers["/token"] = Answer(body=TOKEN, headers=[("content-encoding", coding)])
    endpoint = TokenEndpoint(server.url("/token"), ClientSecretPost("bomb", SECRET), max_attempts=1)
    try:
        with pytest.raises(InvalidTokenResponseError) as info:
            await endpoint.request()
    finally:
        await endpoint.aclose()
    assert "content-encoding" in str(info.value).lower()


@pytest.mark.parametrize("coding", ["gzip", "x-gzip", "deflate", "identity", "GZIP"])
async def test_supported_codings_are_read(server: HostileServer, coding: str) -> None:
    if coding.lower() in ("gzip", "x-gzip"):
        body = gzip_stream(iter([TOKEN]))
    elif coding == "deflate":
        body = zlib.compress(TOKEN)
    else:
        body = TOKEN
    server.answers["/token"] = Answer(body=body, headers=[("content-encoding", coding)])
    endpoint = TokenEndpoint(server.url("/token"), ClientSecretPost("bomb", SECRET), max_attempts=1)
    try:
        assert (await endpoint.request()).value == "bomb-token"
    finally:
        await endpoint.aclose()


async def test_only_codings_we_can_bound_are_offered() -> None:
    """Even through a client of the user's that would offer br and zstd."""
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("accept-encoding"))
        if request.url.path.endswith("/token"):
            return httpx.Response(200, content=TOKEN)
        body = {"issuer": "https://auth.example", "token_endpoint": "https://auth.example/token"}
        return httpx.Response(200, content=json.dumps(body).encode())

    client = httpx.AsyncClient(
        transport=httpx.MockTransport(handler), headers={"Accept-Encoding": "br, zstd, gzip"}
    )
    endpoint = TokenEndpoint(
        "https://auth.example/token", ClientSecretPost("bomb", SECRET), http_client=client
    )
    try:
        await endpoint.request()
        await discover("https://auth.example", http_client=client, max_age=0)
    finally:
        await client.aclose()
    assert seen == ["gzip, deflate", "gzip, deflate"]
