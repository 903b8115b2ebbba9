"""Discovery and the ``keyless-m2m`` command against real servers.

- discovery (RFC 8414 then OpenID) through ``httpx.MockTransport``, the embedded loopback
  ``AuthorizationServer`` and oidc-provider's real metadata, on asyncio and trio;
- ``TokenManager.from_issuer``: one discovery and one token request for many callers, and
  method/alg problems caught before any token request;
- the CLI driven as a user would, ``python -m keyless_m2m ...`` in a subprocess (bounded by
  a timeout, killed by PID if it runs over), against the embedded server and oidc-provider.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from keyless_m2m import (
    ConfigurationError,
    DiscoveryError,
    PrivateKeyJWT,
    TokenManager,
    TransportError,
)
from keyless_m2m.discovery import (
    DiscoveredTokenEndpoint,
    ServerMetadata,
    check_client_auth,
    clear_metadata_cache,
    discover,
    metadata_urls,
)
from keyless_m2m.signers import LocalSigner
from keyless_m2m.testing.authorization_server import AuthorizationServer
from tests.helpers import make_key, missing_server, pem_of, verify_jws
from tests.integration.conftest import SECRET, AuthServer, public_jwk_of
from tests.oidc_provider import harness

pytestmark = pytest.mark.integration
anyio_test = pytest.mark.anyio

CLI_TIMEOUT = 60.0


@pytest.fixture(autouse=True)
def _fresh_metadata_cache() -> Iterator[None]:
    clear_metadata_cache()
    yield
    clear_metadata_cache()


# -- helpers ------------------------------------------------------------------------------


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = CLI_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m keyless_m2m ARGS`` with a clean KEYLESS_M2M_* environment."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("KEYLESS_M2M_")}
    environ.update(env or {})
    proc = subprocess.Popen(
        [sys.executable, "-m", "keyless_m2m", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=environ,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=10)
        pytest.fail(f"keyless-m2m {' '.join(args)} ran longer than {timeout} s")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def key_uri(tmp_path: Path, kind: str) -> str:
    path = tmp_path / f"{kind}.pem"
    path.write_bytes(pem_of(make_key(kind)))
    return path.as_uri()


def jwk_of(kind: str, alg: str) -> dict[str, Any]:
    signer = LocalSigner.from_pem(pem_of(make_key(kind)), algorithm=alg)
    assert signer._description is not None
    return dict(signer._description.public_jwk)


def one_line_error(result: subprocess.CompletedProcess[str], name: str) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"keyless-m2m: {name}: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


class CustomMetadataServer(AuthorizationServer):
    """The embedded server with its metadata edited, and its metadata requests counted."""

    def __init__(self, edit: Callable[[dict[str, Any]], None] = lambda m: None, **options: Any) -> None:
        super().__init__(**options)
        self.edit = edit
        self.metadata_requests = 0

    def metadata(self) -> dict[str, Any]:
        self.metadata_requests += 1
        document = super().metadata()
        self.edit(document)
        return document


@pytest.fixture
def server() -> Iterator[AuthorizationServer]:
    with AuthorizationServer(expires_in=3600) as srv:
        srv.register_client("svc", public_jwk=jwk_of("p256", "ES256"), scopes=["pockets.read"])
        srv.register_client("secret-client", client_secret=SECRET)
        yield srv


def env_for(server: AuthorizationServer, tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "KEYLESS_M2M_TOKEN_ENDPOINT": server.token_endpoint,
        "KEYLESS_M2M_CLIENT_ID": "svc",
        "KEYLESS_M2M_SIGNER": key_uri(tmp_path, "p256"),
        "KEYLESS_M2M_SCOPE": "pockets.read",
        **extra,
    }


# -- discovery: locations and parsing (MockTransport) --------------------------------------


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
    for issuer in ("http://auth.example", "https://auth.example?tenant=a", "auth.example"):
        with pytest.raises(ConfigurationError):
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


def test_check_client_auth_notes_what_it_cannot_check() -> None:
    notes = check_client_auth(metadata_with(), "private_key_jwt", "ES256")
    assert len(notes) == 2 and "token_endpoint_auth_methods_supported" in notes[0]


# -- from_issuer against the embedded server ----------------------------------------------


@anyio_test
async def test_from_issuer_discovers_once_for_many_callers() -> None:
    signer = LocalSigner.from_pem(pem_of(make_key("p256")))
    with CustomMetadataServer() as srv:
        srv.register_client("svc", public_jwk=jwk_of("p256", "ES256"))
        tokens = TokenManager.from_issuer(srv.issuer, PrivateKeyJWT("svc", signer), scope="a b", timeout=5)
        assert isinstance(tokens.endpoint, DiscoveredTokenEndpoint)
        assert tokens.endpoint.timeout == 5  # endpoint options reach the endpoint
        async with tokens:
            results = []

            async def call() -> None:
                results.append(await tokens.get_token())

            async with anyio.create_task_group() as group:
                for _ in range(1000):
                    group.start_soon(call)
            assert len(results) == 1000 and all(t is results[0] for t in results)
            assert results[0].scope == "a b"  # manager options reach the manager
            assert srv.metadata_requests == 1 and srv.token_requests == 1
            assert tokens.token_endpoint == srv.token_endpoint
            assert tokens.endpoint.metadata is not None
            assert await tokens.endpoint.discover() is tokens.endpoint.metadata


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda m: m.update(
                token_endpoint_auth_methods_supported=["client_secret_basic", "tls_client_auth"]
            ),
            "supports: client_secret_basic, tls_client_auth",
        ),
        (
            lambda m: m.update(token_endpoint_auth_signing_alg_values_supported=["RS256", "PS256"]),
            "accepts: RS256, PS256",
        ),
        (lambda m: m.update(issuer="https://evil.example"), "issuer mismatch"),
        (lambda m: m.pop("token_endpoint"), "no token_endpoint"),
    ],
)
@anyio_test
async def test_from_issuer_checks_before_the_first_token_request(
    edit: Callable[[dict[str, Any]], None], message: str
) -> None:
    signer = LocalSigner.from_pem(pem_of(make_key("p256")))
    with CustomMetadataServer(edit) as srv:
        srv.register_client("svc", public_jwk=jwk_of("p256", "ES256"))
        async with TokenManager.from_issuer(srv.issuer, PrivateKeyJWT("svc", signer)) as tokens:
            with pytest.raises(DiscoveryError, match=message):
                await tokens.get_token()
        assert srv.token_requests == 0


@anyio_test
async def test_discovery_of_a_stopped_server_is_a_transport_error() -> None:
    srv = AuthorizationServer()
    issuer = srv.issuer
    srv.stop()  # never started: the port is closed
    with pytest.raises(TransportError, match="cannot reach"):
        await discover(issuer)


# -- the CLI against the embedded server (subprocess) --------------------------------------


def test_cli_token(server: AuthorizationServer, tmp_path: Path) -> None:
    result = cli("token", env=env_for(server, tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == server.issued[-1]
    assert result.stderr == ""


def test_cli_token_json_and_python_m(server: AuthorizationServer, tmp_path: Path) -> None:
    result = cli("token", "--json", env=env_for(server, tmp_path))
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert body["access_token"] == server.issued[-1]
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3600 and body["scope"] == "pockets.read"


def test_cli_token_through_the_issuer(server: AuthorizationServer, tmp_path: Path) -> None:
    env = env_for(server, tmp_path, KEYLESS_M2M_ISSUER=server.issuer)
    del env["KEYLESS_M2M_TOKEN_ENDPOINT"]
    result = cli("token", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == server.issued[-1]


def test_cli_token_with_a_client_secret_never_shows_it(server: AuthorizationServer, tmp_path: Path) -> None:
    env = {
        "KEYLESS_M2M_TOKEN_ENDPOINT": server.token_endpoint,
        "KEYLESS_M2M_CLIENT_ID": "secret-client",
        "KEYLESS_M2M_CLIENT_SECRET": SECRET,
    }
    ok = cli("token", "--json", env=env)
    assert ok.returncode == 0 and SECRET not in ok.stdout + ok.stderr
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    del env["KEYLESS_M2M_CLIENT_SECRET"]
    post = cli(
        "token", "--auth-method", "client_secret_post", "--client-secret-file", str(secret_file), env=env
    )
    assert post.returncode == 0, post.stderr
    env["KEYLESS_M2M_CLIENT_SECRET"] = "wrong-" + SECRET
    wrong = cli("token", "--debug", env=env)
    assert wrong.returncode == 3
    assert SECRET not in wrong.stdout + wrong.stderr  # not even with --debug


def test_cli_rejected_client_is_exit_3_in_one_line(server: AuthorizationServer, tmp_path: Path) -> None:
    result = cli("token", env=env_for(server, tmp_path, KEYLESS_M2M_CLIENT_ID="nobody"))
    assert result.returncode == 3
    assert result.stdout == ""
    line = one_line_error(result, "InvalidClientError")
    assert "invalid_client" in line

    debug = cli("token", "--debug", env=env_for(server, tmp_path, KEYLESS_M2M_CLIENT_ID="nobody"))
    assert debug.returncode == 3 and "Traceback" in debug.stderr


def test_cli_unreachable_server_is_exit_4(tmp_path: Path) -> None:
    srv = AuthorizationServer()
    env = env_for(srv, tmp_path)
    srv.stop()  # never started: nothing listens on its port
    result = cli("token", "--timeout", "2", env=env)
    assert result.returncode == 4
    assert "cannot reach the token endpoint" in one_line_error(result, "TransportError")


def test_cli_jwks(server: AuthorizationServer, tmp_path: Path) -> None:
    result = cli("jwks", key_uri(tmp_path, "p256"), key_uri(tmp_path, "rsa"), "--algorithm", "RS256")
    assert result.returncode == 2  # RS256 does not fit the EC key
    assert "RS256 does not fit" in one_line_error(result, "ConfigurationError")

    result = cli("jwks", key_uri(tmp_path, "p256"), key_uri(tmp_path, "ed25519"))
    assert result.returncode == 0, result.stderr
    jwks = json.loads(result.stdout)
    assert [k["alg"] for k in jwks["keys"]] == ["ES256", "EdDSA"]
    for key in jwks["keys"]:
        jwt.PyJWK.from_dict(key)  # each is a valid public JWK
        assert "d" not in key
    # what the CLI prints is what the server needs: register it, get a token with that key
    server.register_client("from-jwks", jwks=jwks)
    token = cli("token", env=env_for(server, tmp_path, KEYLESS_M2M_CLIENT_ID="from-jwks"))
    assert token.returncode == 0, token.stderr


def test_cli_assertion_decode(server: AuthorizationServer, tmp_path: Path) -> None:
    result = cli("assertion", "--decode", env=env_for(server, tmp_path))
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    claims = verify_jws(data["assertion"], jwk_of("p256", "ES256"), audience=server.token_endpoint)
    assert claims == data["claims"] and claims["iss"] == claims["sub"] == "svc"
    assert data["header"]["alg"] == "ES256"

    plain = cli("assertion", env=env_for(server, tmp_path))
    assert plain.returncode == 0
    verify_jws(plain.stdout.strip(), jwk_of("p256", "ES256"), audience=server.token_endpoint)


def test_cli_doctor_passes(server: AuthorizationServer, tmp_path: Path) -> None:
    result = cli("doctor", env=env_for(server, tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    for name in (
        "configuration",
        "signer reachable",
        "sign + verify",
        "metadata reachable",
        "method and alg",
        "clock skew",
        "token obtained",
    ):
        assert any(line.startswith("PASS") and name in line for line in lines), result.stdout
    assert lines[-1] == "doctor: all 7 checks passed"
    assert server.issued[-1] not in result.stdout  # doctor never shows the token


def test_cli_doctor_wrong_client_id(server: AuthorizationServer, tmp_path: Path) -> None:
    result = cli("doctor", env=env_for(server, tmp_path, KEYLESS_M2M_CLIENT_ID="nobody"))
    assert result.returncode == 3
    out = result.stdout
    assert "FAIL  token obtained" in out and "InvalidClientError" in out
    fix = next(line for line in out.splitlines() if "fix:" in line)
    assert "client 'nobody'" in fix and "keyless-m2m jwks" in fix
    assert out.splitlines()[-1] == "doctor: 1 of 7 checks failed"


def test_cli_doctor_wrong_key(server: AuthorizationServer, tmp_path: Path) -> None:
    # "svc" is registered with the session's P-256 key; this signer holds another one.
    other = tmp_path / "other.pem"
    other.write_bytes(pem_of(ec.generate_private_key(ec.SECP256R1())))
    result = cli("doctor", env=env_for(server, tmp_path, KEYLESS_M2M_SIGNER=other.as_uri()))
    assert result.returncode == 3
    lines = result.stdout.splitlines()
    for name in ("signer reachable", "sign + verify", "method and alg"):  # the key itself is fine
        assert any(line.startswith("PASS") and name in line for line in lines), result.stdout
    failed = next(line for line in lines if line.startswith("FAIL"))
    assert failed.startswith("FAIL  token obtained") and "InvalidClientError" in failed
    # the server's own reason, passed through
    assert "the signature does not verify with client 'svc''s registered keys" in failed
    description = LocalSigner.from_pem_file(other)._description
    assert description is not None
    kid = description.key_id
    fix = next(line for line in lines if "fix:" in line)
    assert f"registered JWKS holds this key (kid {kid!r}" in fix
    assert f"keyless-m2m jwks {other.as_uri()}" in fix
    assert lines[-1] == "doctor: 1 of 7 checks failed"
    assert server.issued == []


def test_cli_doctor_alg_the_key_is_not_registered_for(tmp_path: Path) -> None:
    with AuthorizationServer() as srv:
        srv.register_client("svc", public_jwk=jwk_of("rsa", "RS256"))
        env = {**env_for(srv, tmp_path, KEYLESS_M2M_SIGNER=key_uri(tmp_path, "rsa")), "KEYLESS_M2M_SCOPE": ""}
        assert cli("doctor", env=env).returncode == 0
        result = cli("doctor", "--algorithm", "PS256", env=env)  # the right key, another alg
        assert result.returncode == 3
        assert "PASS  method and alg" in result.stdout  # the server supports PS256 in general...
        assert "keys are registered for RS256, not PS256" in result.stdout  # ...not for this client
        assert "is registered for PS256" in result.stdout  # the fix names what to check
        assert len(srv.issued) == 1


def test_cli_doctor_unsupported_alg(tmp_path: Path) -> None:
    def rsa_only(document: dict[str, Any]) -> None:
        document["token_endpoint_auth_signing_alg_values_supported"] = ["RS256", "PS256"]

    with CustomMetadataServer(rsa_only) as srv:
        srv.register_client("svc", public_jwk=jwk_of("p256", "ES256"))
        env = env_for(srv, tmp_path, KEYLESS_M2M_ISSUER=srv.issuer)
        result = cli("doctor", env=env)
        assert result.returncode == 6
        assert "FAIL  method and alg" in result.stdout
        assert "it accepts: RS256, PS256" in result.stdout and "--algorithm" in result.stdout

        token = cli("token", env={**env, "KEYLESS_M2M_TOKEN_ENDPOINT": ""})  # through discovery
        assert token.returncode == 6
        assert "accepts: RS256, PS256" in one_line_error(token, "DiscoveryError")
        assert srv.token_requests == 1  # doctor's own request; the token command sent none


def test_cli_unsupported_method_names_the_supported_ones(tmp_path: Path) -> None:
    def secrets_only(document: dict[str, Any]) -> None:
        document["token_endpoint_auth_methods_supported"] = ["client_secret_basic", "client_secret_post"]

    with CustomMetadataServer(secrets_only) as srv:
        env = env_for(srv, tmp_path, KEYLESS_M2M_ISSUER=srv.issuer, KEYLESS_M2M_TOKEN_ENDPOINT="")
        result = cli("token", env=env)
        assert result.returncode == 6
        line = one_line_error(result, "DiscoveryError")
        assert "'private_key_jwt'" in line and "supports: client_secret_basic, client_secret_post" in line
        assert srv.token_requests == 0


def test_cli_issuer_mismatch(tmp_path: Path) -> None:
    with CustomMetadataServer(lambda m: m.update(issuer="https://evil.example")) as srv:
        env = env_for(srv, tmp_path, KEYLESS_M2M_ISSUER=srv.issuer, KEYLESS_M2M_TOKEN_ENDPOINT="")
        result = cli("token", env=env)
        assert result.returncode == 6
        assert "issuer mismatch" in one_line_error(result, "DiscoveryError")
        doctor = cli("doctor", env=env)
        assert doctor.returncode == 6 and "FAIL  metadata reachable" in doctor.stdout
        assert srv.token_requests == 0


def test_cli_demo() -> None:
    result = cli("demo")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "10,000 concurrent get_token() calls -> 1 token request, 1 signature" in out
    assert "every caller got the same token" in out
    assert "a new token, 2 token requests in total" in out
    assert '"alg":"ES256"' in out and '"iss":"demo-client"' in out
    assert "the server is stopped" in out
    assert result.stderr == ""


def test_cli_demo_with_a_real_signer(tmp_path: Path) -> None:
    result = cli("demo", "--signer", key_uri(tmp_path, "rsa"), "--algorithm", "PS256", "--concurrency", "50")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "50 concurrent get_token() calls -> 1 token request" in result.stdout
    assert "alg PS256" in result.stdout


# -- against oidc-provider ----------------------------------------------------------------


def op_env(op: AuthServer, tmp_path: Path, alg: str = "ES256", kind: str = "p256") -> dict[str, str]:
    return {
        "KEYLESS_M2M_ISSUER": op.issuer,
        "KEYLESS_M2M_CLIENT_ID": f"jwt-{alg.lower()}",
        "KEYLESS_M2M_SIGNER": key_uri(tmp_path, kind),
        "KEYLESS_M2M_SCOPE": "pockets.read",
    }


@anyio_test
async def test_discovery_of_oidc_provider(oidc_provider: AuthServer) -> None:
    metadata = await discover(oidc_provider.issuer)
    assert metadata.token_endpoint == oidc_provider.token_endpoint
    assert metadata.url.endswith("/.well-known/oauth-authorization-server")
    assert check_client_auth(metadata, "private_key_jwt", "ES256") == []
    with pytest.raises(DiscoveryError, match="private_key_jwt, client_secret_basic, client_secret_post"):
        check_client_auth(metadata, "tls_client_auth")
    with pytest.raises(DiscoveryError, match="accepts: RS256"):
        check_client_auth(metadata, "private_key_jwt", "HS256")
    with pytest.raises(DiscoveryError, match="issuer mismatch"):
        await discover(oidc_provider.issuer + "/")
    with pytest.raises(DiscoveryError, match="no authorization server metadata"):
        await discover(oidc_provider.issuer + "/no/such/tenant")


@anyio_test
async def test_from_issuer_with_oidc_provider(oidc_provider: AuthServer) -> None:
    auth = PrivateKeyJWT("jwt-es256", oidc_provider.signers["ES256"])
    async with TokenManager.from_issuer(oidc_provider.issuer, auth, scope="pockets.read") as tokens:
        token = await tokens.get_token()
        assert token.scope == "pockets.read"
        assert tokens.token_endpoint == oidc_provider.token_endpoint
        assert tokens.stats.requests == 1


def test_cli_with_oidc_provider(oidc_provider: AuthServer, tmp_path: Path) -> None:
    env = op_env(oidc_provider, tmp_path)
    token = cli("token", env=env)
    assert token.returncode == 0, token.stderr
    assert token.stdout.strip() and token.stderr == ""

    body = cli("token", "--json", "--scope", "pockets.read transfers.read", env=env)
    assert body.returncode == 0, body.stderr
    data = json.loads(body.stdout)
    assert set(data["scope"].split()) == {"pockets.read", "transfers.read"} and data["token_type"] == "Bearer"

    rfc7523bis = cli("token", "--assertion-aud", "issuer", env=env)
    assert rfc7523bis.returncode == 0, rfc7523bis.stderr

    decoded = cli("assertion", "--decode", env=env)
    assert decoded.returncode == 0, decoded.stderr
    assertion = json.loads(decoded.stdout)["assertion"]
    claims = verify_jws(assertion, jwk_of("p256", "ES256"), audience=oidc_provider.token_endpoint)
    assert claims["iss"] == "jwt-es256"


def test_cli_client_secrets_with_oidc_provider(oidc_provider: AuthServer, tmp_path: Path) -> None:
    env = {
        "KEYLESS_M2M_TOKEN_ENDPOINT": oidc_provider.token_endpoint,
        "KEYLESS_M2M_CLIENT_ID": "secret-basic",
        "KEYLESS_M2M_CLIENT_SECRET": SECRET,
    }
    basic = cli("token", env=env)
    assert basic.returncode == 0, basic.stderr
    post = cli(
        "token", "--auth-method", "client_secret_post", env={**env, "KEYLESS_M2M_CLIENT_ID": "secret-post"}
    )
    assert post.returncode == 0, post.stderr
    scope = cli("token", "--scope", "admin", env=env)
    assert scope.returncode == 3 and "invalid_scope" in one_line_error(scope, "InvalidScopeError")
    for result in (basic, post, scope):
        assert SECRET not in result.stdout + result.stderr


def test_cli_doctor_with_oidc_provider(oidc_provider: AuthServer, tmp_path: Path) -> None:
    good = cli("doctor", env=op_env(oidc_provider, tmp_path))
    assert good.returncode == 0, good.stdout + good.stderr
    assert good.stdout.splitlines()[-1] == "doctor: all 7 checks passed"

    wrong_id = cli("doctor", env={**op_env(oidc_provider, tmp_path), "KEYLESS_M2M_CLIENT_ID": "nobody"})
    assert wrong_id.returncode == 3
    assert "FAIL  token obtained" in wrong_id.stdout and "client 'nobody'" in wrong_id.stdout

    # a key the client does not have registered
    wrong_key = cli("doctor", env=op_env(oidc_provider, tmp_path, "RS256", "rsa-b"))
    assert wrong_key.returncode == 3
    assert "FAIL  token obtained" in wrong_key.stdout and "holds this key (kid" in wrong_key.stdout

    # the right key with an alg the client is not registered for (RS256)
    wrong_alg = cli("doctor", "--algorithm", "PS256", env=op_env(oidc_provider, tmp_path, "RS256", "rsa"))
    assert wrong_alg.returncode == 3
    assert "PASS  method and alg" in wrong_alg.stdout  # the server supports PS256 in general...
    assert "is registered for PS256" in wrong_alg.stdout  # ...but not for this client


def test_cli_jwks_is_accepted_by_oidc_provider(tmp_path: Path) -> None:
    problem = harness.ensure_installed()
    if problem:
        missing_server(problem)
    printed = cli("jwks", key_uri(tmp_path, "p384"), key_uri(tmp_path, "ed25519"))
    assert printed.returncode == 0, printed.stderr
    jwks = json.loads(printed.stdout)
    clients = [
        {
            "client_id": f"from-cli-{alg.lower()}",
            "token_endpoint_auth_method": "private_key_jwt",
            "token_endpoint_auth_signing_alg": alg,
            "jwks": jwks,
            "scope": "pockets.read",
        }
        for alg in ("ES384", "EdDSA")
    ]
    with harness.start_oidc_provider(clients, ["pockets.read"]) as op:
        for alg, kind in (("ES384", "p384"), ("EdDSA", "ed25519")):
            env = {
                "KEYLESS_M2M_ISSUER": op.issuer,
                "KEYLESS_M2M_CLIENT_ID": f"from-cli-{alg.lower()}",
                "KEYLESS_M2M_SIGNER": key_uri(tmp_path, kind),
            }
            result = cli("token", env=env)
            assert result.returncode == 0, result.stderr
    assert public_jwk_of("p384")["x"] == jwks["keys"][0]["x"]
