"""Discovery without a server: where metadata is looked for, how a document is parsed and
cached (``httpx.MockTransport``), what ``check_client_auth`` says, the machine-readable
``DiscoveryError.reason`` of every failure, and ``server_clock_skew``. Discovery against
real servers is in ``tests/integration/test_discovery.py``."""

from __future__ import annotations

import ast
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from keyless_m2m import ConfigurationError, DiscoveryError, TransportError, discovery
from keyless_m2m.discovery import (
    ServerMetadata,
    check_client_auth,
    clear_metadata_cache,
    client_auth_mismatches,
    discover,
    metadata_urls,
    server_clock_skew,
)

anyio_test = pytest.mark.anyio


def test_metadata_locations() -> None:
    assert metadata_urls("https://auth.example") == [
        "https://auth.example/.well-known/oauth-authorization-server",
        "https://auth.example/.well-known/openid-configuration",
    ]
    # RFC 8414 inserts the well-known segment before the path; OpenID appends it.
    assert metadata_urls("https://auth.example/tenants/a/") == [
        "https://auth.example/.well-known/oauth-authorization-server/tenants/a",
        "https://auth.example/tenants/a/.well-known/openid-configuration",
    ]


def mock_client(routes: dict[str, tuple[int, Any]], seen: list[str]) -> httpx.AsyncClient:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        status, body = routes.get(str(request.url), (404, {"error": "not_found"}))
        if isinstance(body, bytes):
            return httpx.Response(status, content=body, headers={"Date": "Mon, 01 Jan 2024 00:00:00 GMT"})
        return httpx.Response(status, json=body, headers={"Date": "Mon, 01 Jan 2024 00:00:00 GMT"})

    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


def document(issuer: str, **changes: Any) -> dict[str, Any]:
    base = {
        "issuer": issuer,
        "token_endpoint": issuer.rstrip("/") + "/oauth2/token",
        "token_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_basic"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS256", "ES256"],
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


@anyio_test
async def test_openid_location_is_tried_after_rfc8414() -> None:
    issuer = "https://auth.example/tenants/a"
    seen: list[str] = []
    routes = {metadata_urls(issuer)[1]: (200, document(issuer))}
    async with mock_client(routes, seen) as http:
        metadata = await discover(issuer, http_client=http)
    assert seen == metadata_urls(issuer)
    assert metadata.url == metadata_urls(issuer)[1]
    assert metadata.token_endpoint == "https://auth.example/tenants/a/oauth2/token"
    assert metadata.token_endpoint_auth_methods_supported == ("private_key_jwt", "client_secret_basic")
    assert metadata.clock_skew is not None and metadata.clock_skew < 0  # the mock's Date is in 2024


@anyio_test
async def test_metadata_is_cached_per_issuer() -> None:
    issuer = "https://auth.example"
    seen: list[str] = []
    routes = {metadata_urls(issuer)[0]: (200, document(issuer))}
    async with mock_client(routes, seen) as http:
        first = await discover(issuer, http_client=http)
        assert await discover(issuer, http_client=http) is first
        assert len(seen) == 1
        fresh = await discover(issuer, http_client=http, max_age=0)  # forced fetch
        assert fresh is not first and len(seen) == 2
        clear_metadata_cache()
        await discover(issuer, http_client=http)
        assert len(seen) == 3


@anyio_test
async def test_issuer_mismatch_stops_the_search() -> None:
    issuer = "https://auth.example"
    seen: list[str] = []
    routes = {
        metadata_urls(issuer)[0]: (200, document("https://evil.example")),
        metadata_urls(issuer)[1]: (200, document(issuer)),
    }
    async with mock_client(routes, seen) as http:
        with pytest.raises(DiscoveryError, match="issuer mismatch") as info:
            await discover(issuer, http_client=http)
    assert "https://evil.example" in str(info.value)
    assert len(seen) == 1  # a wrong document is never a reason to trust another one
    assert not info.value.retryable


@anyio_test
async def test_trailing_slash_is_part_of_the_issuer() -> None:
    seen: list[str] = []
    routes = {metadata_urls("https://auth.example")[0]: (200, document("https://auth.example"))}
    async with mock_client(routes, seen) as http:
        with pytest.raises(DiscoveryError, match="issuer mismatch"):
            await discover("https://auth.example/", http_client=http)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"token_endpoint": None}, "has no token_endpoint"),
        ({"token_endpoint": "http://auth.example/token"}, "refusing plain http"),
        ({"token_endpoint_auth_methods_supported": "private_key_jwt"}, "not a list of strings"),
    ],
)
@anyio_test
async def test_unusable_metadata(changes: dict[str, Any], message: str) -> None:
    issuer = "https://auth.example"
    routes = {metadata_urls(issuer)[0]: (200, document(issuer, **changes))}
    async with mock_client(routes, []) as http:
        with pytest.raises(DiscoveryError, match=message):
            await discover(issuer, http_client=http)


@anyio_test
async def test_no_metadata_anywhere() -> None:
    issuer = "https://auth.example"
    async with mock_client({metadata_urls(issuer)[1]: (200, b"<html>")}, []) as http:
        with pytest.raises(DiscoveryError) as info:
            await discover(issuer, http_client=http)
    message = str(info.value)
    assert metadata_urls(issuer)[0] + ": HTTP 404" in message
    assert metadata_urls(issuer)[1] + ": HTTP 200 but not a JSON object" in message
    assert not info.value.retryable

    async with mock_client({metadata_urls(issuer)[0]: (503, b"")}, []) as http:
        with pytest.raises(DiscoveryError) as info:
            await discover(issuer, http_client=http)
    assert info.value.retryable  # a 5xx may pass


@anyio_test
async def test_bad_issuers_are_configuration_errors() -> None:
    cases = {
        "http://auth.example": "refusing plain http:// for the issuer",
        "https://auth.example?tenant=a": r"has no \?query",
        "auth.example": "must be an absolute https:// URL",
    }
    for issuer, reason in cases.items():
        with pytest.raises(ConfigurationError, match=reason):
            await discover(issuer)


def metadata_with(**lists: Any) -> ServerMetadata:
    return ServerMetadata(
        issuer="https://auth.example",
        token_endpoint="https://auth.example/token",
        token_endpoint_auth_methods_supported=lists.get("methods"),
        token_endpoint_auth_signing_alg_values_supported=lists.get("algs"),
        grant_types_supported=lists.get("grants"),
        url="https://auth.example/.well-known/oauth-authorization-server",
        raw={},
    )


def test_check_client_auth_names_what_the_server_supports() -> None:
    metadata = metadata_with(methods=("client_secret_basic", "client_secret_post"), algs=("RS256",))
    with pytest.raises(DiscoveryError, match="supports: client_secret_basic, client_secret_post"):
        check_client_auth(metadata, "private_key_jwt", "ES256")
    assert check_client_auth(metadata, "client_secret_post") == []
    supported = metadata_with(methods=("private_key_jwt",), algs=("RS256", "PS256"))
    with pytest.raises(
        DiscoveryError, match="does not accept ES256 client assertions; it accepts: RS256, PS256"
    ):
        check_client_auth(supported, "private_key_jwt", "ES256")
    assert check_client_auth(supported, "private_key_jwt", "PS256") == []
    with pytest.raises(DiscoveryError, match="client_credentials"):
        check_client_auth(metadata_with(grants=("authorization_code",)), "client_secret_basic")


def test_client_auth_mismatches_lists_every_gap_at_once() -> None:
    """Each list that leaves out what the client uses gives one error, in a fixed order;
    ``check_client_auth`` raises the first of them."""
    metadata = metadata_with(
        grants=("authorization_code",), methods=("client_secret_basic",), algs=("RS256",)
    )
    mismatches = client_auth_mismatches(metadata, "private_key_jwt", "ES256")
    assert [m.reason for m in mismatches] == [
        "grant_unsupported",
        "method_unsupported",
        "algorithm_unsupported",
    ]
    with pytest.raises(DiscoveryError) as info:
        check_client_auth(metadata, "private_key_jwt", "ES256")
    assert info.value.reason == "grant_unsupported"
    assert client_auth_mismatches(metadata_with(), "private_key_jwt", "ES256") == []  # nothing published


def test_check_client_auth_notes_what_it_cannot_check() -> None:
    notes = check_client_auth(metadata_with(), "private_key_jwt", "ES256")
    assert len(notes) == 2 and "token_endpoint_auth_methods_supported" in notes[0]


# -- DiscoveryError.reason ------------------------------------------------------------------


def test_every_discovery_error_raised_names_a_documented_reason() -> None:
    """Each ``DiscoveryError(...)`` discovery builds (raised, or collected by
    ``client_auth_mismatches``) passes ``reason=`` explicitly, and a documented one: code
    (the doctor's fixes) keys on it, never on the message."""
    tree = ast.parse(Path(discovery.__file__).read_text())
    raised = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "DiscoveryError"
    ]
    assert len(raised) >= 10
    for call in raised:
        reasons = [k.value for k in call.keywords if k.arg == "reason"]
        assert len(reasons) == 1 and isinstance(reasons[0], ast.Constant), ast.unparse(call)
        assert reasons[0].value in DiscoveryError.REASONS, ast.unparse(call)


@pytest.mark.parametrize(
    ("routes", "reason"),
    [
        ({0: (200, document("https://evil.example"))}, "issuer_mismatch"),
        ({0: (200, document("https://auth.example", token_endpoint=None))}, "invalid"),
        ({0: (200, document("https://auth.example", grant_types_supported="all"))}, "invalid"),
        (
            {0: (200, document("https://auth.example", token_endpoint="http://auth.example/t"))},
            "unusable_token_endpoint",
        ),
        (
            {0: (200, document("https://auth.example", token_endpoint="https://u:p@auth.example/t"))},
            "unusable_token_endpoint",
        ),
        ({1: (200, b"<html>")}, "not_found"),
        ({0: (503, b"")}, "not_found"),
    ],
)
@anyio_test
async def test_discovery_errors_carry_their_reason(routes: dict[int, tuple[int, Any]], reason: str) -> None:
    issuer = "https://auth.example"
    by_url = {metadata_urls(issuer)[index]: answer for index, answer in routes.items()}
    async with mock_client(by_url, []) as http:
        with pytest.raises(DiscoveryError) as info:
            await discover(issuer, http_client=http)
    assert info.value.reason == reason


def test_check_client_auth_errors_carry_their_reason() -> None:
    cases = [
        (metadata_with(grants=("authorization_code",)), "client_secret_basic", None, "grant_unsupported"),
        (metadata_with(methods=("client_secret_basic",)), "private_key_jwt", None, "method_unsupported"),
        (metadata_with(algs=("RS256",)), "private_key_jwt", "ES256", "algorithm_unsupported"),
    ]
    for metadata, method, algorithm, reason in cases:
        with pytest.raises(DiscoveryError) as info:
            check_client_auth(metadata, method, algorithm)
        assert info.value.reason == reason


# -- server_clock_skew ----------------------------------------------------------------------


@anyio_test
async def test_server_clock_skew_reads_the_date_header() -> None:
    ahead = datetime.now(UTC) + timedelta(minutes=10)
    answers = {
        "https://auth.example/dated": httpx.Response(405, headers={"Date": format_datetime(ahead, True)}),
        "https://auth.example/undated": httpx.Response(200),
        "https://auth.example/garbled": httpx.Response(200, headers={"Date": "yesterday"}),
    }
    transport = httpx.MockTransport(lambda request: answers[str(request.url)])
    async with httpx.AsyncClient(transport=transport) as http:
        skew = await server_clock_skew(http, "https://auth.example/dated")  # any status counts
        assert skew is not None and 598 <= skew <= 600
        assert await server_clock_skew(http, "https://auth.example/undated") is None
        assert await server_clock_skew(http, "https://auth.example/garbled") is None


@anyio_test
async def test_server_clock_skew_of_an_unreachable_server_is_a_transport_error() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(refuse)) as http:
        with pytest.raises(TransportError, match="cannot reach"):
            await server_clock_skew(http, "https://auth.example/token")
