"""Mutual TLS (RFC 8705) against oidc-provider's own implementation (the ``mtls``
configuration of ``tests/oidc_provider/server.mjs``): HTTPS on loopback, the issuer's
listener asking for no client certificate and the one published as
``mtls_endpoint_aliases.token_endpoint`` asking for one; oidc-provider authenticates
``tls_client_auth`` (subject DN, DNS SAN) and ``self_signed_tls_client_auth`` clients and
binds each token to the certificate (``tls_client_certificate_bound_access_tokens``).

What the server says about a token is read back through its introspection endpoint
(``cnf["x5t#S256"]``) and compared with the certificate's SHA-256 thumbprint computed here
with ``cryptography``, not with the library's :attr:`ClientCertificate.thumbprint`; the
resource server (``tests/mtls_servers.py``) learns the binding the same way.
"""

from __future__ import annotations

import base64
import ssl
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from keyless_m2m import (
    ClientAuth,
    ClientSecretBasic,
    InvalidClientError,
    InvalidGrantError,
    PrivateKeyJWT,
    SelfSignedTlsClientAuth,
    TlsClientAuth,
    TokenManager,
)
from keyless_m2m.mtls import ClientCertificate, client_ssl_context
from keyless_m2m.signers import LocalSigner
from keyless_m2m.testing.tls import ClientFiles, self_signed_client
from tests.cli_runner import cli
from tests.helpers import make_key, pem_of
from tests.mtls_servers import CertificateBoundResourceServer
from tests.oidc_provider.clients import (
    MTLS_CLIENTS,
    SECRET,
    AuthServer,
    MtlsMaterial,
    ProviderPool,
    client_id_for,
)

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

#: Each bound client of the ``mtls`` configuration, and the certificate it presents.
CASES = {
    "subject_dn": "billing",
    "san_dns": "billing",
    "self_signed": "reports",
    "private_key_jwt": "ledger",
}


@pytest.fixture
def op(oidc_servers: ProviderPool) -> AuthServer:
    return oidc_servers.get("mtls")


def material(op: AuthServer) -> MtlsMaterial:
    assert op.mtls is not None and op.ca_file is not None
    return op.mtls


def x5t_s256(files: ClientFiles) -> str:
    """RFC 8705 section 3.1, computed here: base64url(SHA-256(DER of the certificate))."""
    digest = x509.load_pem_x509_certificate(files.pem).fingerprint(hashes.SHA256())
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def client_auth(case: str, files: ClientFiles) -> tuple[ClientAuth, ClientCertificate | None]:
    """The client authentication of ``case`` and, for private_key_jwt, the certificate
    given as ``client_certificate=``."""
    client_id = MTLS_CLIENTS[case]
    if case == "private_key_jwt":
        signer = LocalSigner.from_pem(pem_of(make_key("p256")), algorithm="ES256")
        return PrivateKeyJWT(client_id, signer), ClientCertificate(files.certificate, files.key)
    if case == "self_signed":
        return SelfSignedTlsClientAuth(client_id, files.certificate, files.key), None
    return TlsClientAuth(client_id, files.certificate, files.key), None


def resource_server(op: AuthServer, *self_signed: ClientFiles) -> CertificateBoundResourceServer:
    """The resource server: its certificate from the test CA, trusting client
    certificates of that CA and the ``self_signed`` ones; the binding from introspection."""
    context = material(op).authority.server_context()
    for files in self_signed:
        context.load_verify_locations(cadata=files.pem.decode())
    return CertificateBoundResourceServer(context, op.x5t_of)


def test_the_metadata_publishes_mtls(op: AuthServer) -> None:
    meta = op.metadata
    assert op.issuer.startswith("https://127.0.0.1:") and meta["issuer"] == op.issuer
    assert meta["token_endpoint"] == op.token_endpoint == f"{op.issuer}/token"
    assert meta["tls_client_certificate_bound_access_tokens"] is True
    assert meta["token_endpoint_auth_methods_supported"] == list(op.profile.methods)
    assert {"tls_client_auth", "self_signed_tls_client_auth"} <= set(op.profile.methods)
    alias = meta["mtls_endpoint_aliases"]["token_endpoint"]
    assert alias.startswith("https://127.0.0.1:") and alias.endswith("/token")
    assert alias != op.token_endpoint  # another listener: the one that asks for a certificate


@pytest.mark.parametrize("case", list(CASES))
async def test_a_bound_token_through_the_alias_and_used_on_its_certificate(
    op: AuthServer, case: str, tmp_path: Path
) -> None:
    mtls = material(op)
    files = mtls.certificates[CASES[case]]
    auth, certificate = client_auth(case, files)
    since = op.token_requests().total
    async with TokenManager.from_issuer(
        op.issuer, auth, scope="pockets.read", verify=op.ca_file, client_certificate=certificate
    ) as tokens:
        token = await tokens.get_token()
        assert token.token_type == "Bearer" and token.scope == "pockets.read"
        assert tokens.token_endpoint == op.metadata["mtls_endpoint_aliases"]["token_endpoint"]
        # oidc-provider bound the token to this certificate (its introspection says so)
        assert op.x5t_of(token.value) == x5t_s256(files)
        seen = op.token_requests(since).requests
        assert [(r["listener"], r["client_certificate"], r["status"]) for r in seen] == [
            ("mtls", x5t_s256(files), 200)
        ]
        assert seen[0]["client_id"] == MTLS_CLIENTS[case]
        stranger = mtls.authority.issue_client(f"stranger-{case}")
        with resource_server(op, mtls.certificates["reports"]) as api:
            # the same certificate, through tokens.auth(): accepted
            context = client_ssl_context(tokens, verify=mtls.authority.ca_file)
            async with httpx.AsyncClient(auth=tokens.auth(), verify=context) as http:
                assert (await http.get(api.url)).status_code == 200
            # the token alone, stolen: refused with another certificate and without one
            stolen = {"Authorization": f"Bearer {token.value}"}
            elsewhere = client_ssl_context(
                ClientCertificate(stranger.certificate, stranger.key), mtls.authority.ca_file
            )
            async with httpx.AsyncClient(verify=elsewhere) as http:
                assert (await http.get(api.url, headers=stolen)).status_code == 401
            plain = ssl.create_default_context(cafile=mtls.authority.ca_file)
            async with httpx.AsyncClient(verify=plain) as http:
                assert (await http.get(api.url, headers=stolen)).status_code == 401
        assert api.answers == [
            (200, "bound token on its certificate"),
            (401, "the client certificate is not the one the token is bound to"),
            (401, "the token is certificate-bound and no client certificate was presented"),
        ]
        assert tokens.stats.requests == 1


async def test_the_issuers_listener_asks_for_no_certificate(op: AuthServer) -> None:
    # Sent to token_endpoint instead of the alias, a TLS client presents nothing: oidc-provider
    # refuses it, typed, once, and nothing is cached.
    files = material(op).certificates["billing"]
    auth = TlsClientAuth(MTLS_CLIENTS["subject_dn"], files.certificate, files.key)
    since = op.token_requests().total
    async with TokenManager(op.token_endpoint, auth, verify=op.ca_file) as tokens:
        with pytest.raises(InvalidClientError):
            await tokens.get_token()
        with pytest.raises(InvalidClientError):  # the backoff window: no new request
            await tokens.get_token()
        assert tokens.stats.requests == 1 and tokens.stats.failures == 1
    seen = op.token_requests(since).requests
    assert [(r["listener"], r["client_certificate"], r["error"]) for r in seen] == [
        ("issuer", None, "invalid_client")
    ]


async def test_a_certificate_that_does_not_match_the_registration_is_invalid_client(
    op: AuthServer, tmp_path: Path
) -> None:
    mtls = material(op)
    alias = op.metadata["mtls_endpoint_aliases"]["token_endpoint"]
    billing, ledger = mtls.certificates["billing"], mtls.certificates["ledger"]
    # the right subject DN on a certificate the CA did not issue (certificateAuthorized)
    forged = self_signed_client(str(tmp_path), "billing")
    assert forged.subject_dn == billing.subject_dn
    attempts = [
        (TlsClientAuth(MTLS_CLIENTS["subject_dn"], ledger.certificate, ledger.key), ledger),
        (TlsClientAuth(MTLS_CLIENTS["san_dns"], ledger.certificate, ledger.key), ledger),
        (TlsClientAuth(MTLS_CLIENTS["subject_dn"], forged.certificate, forged.key), forged),
        (SelfSignedTlsClientAuth(MTLS_CLIENTS["self_signed"], billing.certificate, billing.key), billing),
    ]
    since = op.token_requests().total
    for auth, files in attempts:
        async with TokenManager(alias, auth, verify=op.ca_file) as tokens:
            with pytest.raises(InvalidClientError) as info:
                await tokens.get_token()
            assert files.thumbprint in str(info.value)  # the hint names the certificate sent
            assert tokens.stats.requests == 1 and tokens.stats.failures == 1
    seen = op.token_requests(since).requests
    assert [(r["client_certificate"], r["status"], r["error"]) for r in seen] == [
        (x5t_s256(files), 401, "invalid_client") for _, files in attempts
    ]


async def test_a_tls_client_without_a_certificate_at_the_alias_is_invalid_client(op: AuthServer) -> None:
    files = material(op).certificates["billing"]
    auth = TlsClientAuth(MTLS_CLIENTS["subject_dn"], files.certificate, files.key)
    alias = op.metadata["mtls_endpoint_aliases"]["token_endpoint"]
    since = op.token_requests().total
    # an HTTP client of the user's own that does not present the certificate
    async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=op.ca_file)) as http:
        async with TokenManager(alias, auth, http_client=http) as tokens:
            with pytest.raises(InvalidClientError) as info:
                await tokens.get_token()
            assert tokens.stats.requests == 1
    # oidc-provider's description is generic; the library's hint names the certificate
    # it was configured with (it cannot see what a client of the user's own presented)
    assert "client authentication failed" in str(info.value) and files.thumbprint in str(info.value)
    seen = op.token_requests(since).requests
    assert [(r["listener"], r["client_certificate"], r["error"]) for r in seen] == [
        ("mtls", None, "invalid_client")
    ]


async def test_a_bound_private_key_jwt_client_without_a_certificate_is_invalid_grant(
    op: AuthServer,
) -> None:
    signer = LocalSigner.from_pem(pem_of(make_key("p256")), algorithm="ES256")
    auth = PrivateKeyJWT(MTLS_CLIENTS["private_key_jwt"], signer)
    since = op.token_requests().total
    async with TokenManager.from_issuer(op.issuer, auth, verify=op.ca_file) as tokens:
        with pytest.raises(InvalidGrantError):
            await tokens.get_token()
        assert tokens.token_endpoint == op.token_endpoint  # no certificate: no alias
        assert tokens.stats.requests == 1
    seen = op.token_requests(since).requests
    assert [(r["listener"], r["client_certificate"], r["error"]) for r in seen] == [
        ("issuer", None, "invalid_grant")
    ]


async def test_a_client_without_a_certificate_keeps_the_token_endpoint(op: AuthServer) -> None:
    auth = ClientSecretBasic(client_id_for("client_secret_basic"), SECRET)
    since = op.token_requests().total
    async with TokenManager.from_issuer(op.issuer, auth, verify=op.ca_file) as tokens:
        token = await tokens.get_token()
        assert tokens.token_endpoint == op.token_endpoint
    assert op.introspect(token.value)["active"] is True and op.x5t_of(token.value) is None
    seen = op.token_requests(since).requests
    assert [(r["listener"], r["client_certificate"], r["status"]) for r in seen] == [("issuer", None, 200)]


def test_cli_token_with_tls_client_auth(op: AuthServer) -> None:
    files = material(op).certificates["billing"]
    since = op.token_requests().total
    result = cli(
        "token",
        "--issuer",
        op.issuer,
        "--client-id",
        MTLS_CLIENTS["subject_dn"],
        "--auth-method",
        "tls_client_auth",
        "--client-cert",
        files.certificate,
        "--client-key",
        files.key,
        "--ca-bundle",
        material(op).authority.ca_file,
        "--scope",
        "pockets.read",
    )
    assert result.returncode == 0, result.stderr
    assert op.x5t_of(result.stdout.strip()) == x5t_s256(files)
    seen = op.token_requests(since).requests
    assert [(r["listener"], r["client_certificate"], r["status"]) for r in seen] == [
        ("mtls", x5t_s256(files), 200)
    ]
