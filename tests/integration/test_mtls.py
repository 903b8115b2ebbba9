"""Mutual TLS (RFC 8705) against a real TLS server on loopback
(:class:`~keyless_m2m.testing.mtls_server.MutualTlsAuthorizationServer`, Python's ``ssl``
verifying the client certificate at the handshake, the OAuth layer checking it against the
client's registration) and a resource server that accepts a certificate-bound token only on
the certificate it is bound to (tests/mtls_servers.py).

- ``tls_client_auth`` (subject DN, DNS SAN) and ``self_signed_tls_client_auth``: tokens;
- the token is bound to the certificate's ``x5t#S256``; the resource server takes it with
  ``client_ssl_context(...)`` and refuses it without a certificate or with another one;
- a server that requires a certificate ends the handshake of a client without one: a
  ``TransportError(reason="tls_client_certificate")`` that says so, one attempt;
- a registered TLS client whose connection presents none: ``InvalidClientError`` with a hint;
- ``mtls_endpoint_aliases.token_endpoint`` from discovery, only for a client with a certificate;
- ``client_certificate=`` binds tokens obtained with another method (``private_key_jwt``);
- an encrypted key: its password never shows in a repr, a message or a frame's locals.
"""

from __future__ import annotations

import pickle
import ssl
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest

from keyless_m2m import (
    ClientSecretPost,
    ConfigurationError,
    InvalidClientError,
    PrivateKeyJWT,
    SelfSignedTlsClientAuth,
    SyncTokenManager,
    TlsClientAuth,
    TokenManager,
    TransportError,
)
from keyless_m2m.discovery import clear_metadata_cache
from keyless_m2m.mtls import ClientCertificate, client_ssl_context
from keyless_m2m.signers import LocalSigner
from keyless_m2m.testing.mtls_server import MutualTlsAuthorizationServer
from keyless_m2m.testing.tls import ClientFiles, TestAuthority, self_signed_client
from tests.frame_locals import secret_locals
from tests.helpers import make_key, pem_of
from tests.mtls_servers import CertificateBoundResourceServer

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

PASSWORD = "mtls-key-password-7c1e94"


@pytest.fixture
def server(authority: TestAuthority, billing: ClientFiles) -> Iterator[MutualTlsAuthorizationServer]:
    with MutualTlsAuthorizationServer(authority) as server:
        server.register_tls_client("billing", subject_dn=billing.subject_dn)
        yield server


def resource_server(
    authority: TestAuthority, server: MutualTlsAuthorizationServer
) -> CertificateBoundResourceServer:
    return CertificateBoundResourceServer(authority.server_context(), server.bindings.get)


async def test_tls_client_auth_token_is_bound_and_used_on_the_same_certificate(
    authority: TestAuthority, billing: ClientFiles, server: MutualTlsAuthorizationServer
) -> None:
    auth = TlsClientAuth("billing", certificate=billing.certificate, key=billing.key)
    assert auth.method == "tls_client_auth"
    assert auth.client_certificate.thumbprint == billing.thumbprint
    async with TokenManager(
        token_endpoint=server.token_endpoint, client_auth=auth, verify=authority.ca_file
    ) as tokens:
        token = await tokens.get_token()
        assert server.bindings[token.value] == billing.thumbprint  # cnf.x5t#S256 (RFC 8705 s3)
        with resource_server(authority, server) as api:
            context = client_ssl_context(tokens, verify=authority.ca_file)
            async with httpx.AsyncClient(auth=tokens.auth(), verify=context) as http:
                assert (await http.get(api.url)).status_code == 200
            # the same token on a connection without the certificate: refused
            plain = ssl.create_default_context(cafile=authority.ca_file)
            async with httpx.AsyncClient(auth=tokens.auth(), verify=plain) as http:
                assert (await http.get(api.url)).status_code == 401
            # ... and with another certificate of the same CA
            other = authority.issue_client("intruder")
            stranger = client_ssl_context(ClientCertificate(other.certificate, other.key), authority.ca_file)
            async with httpx.AsyncClient(auth=tokens.auth(), verify=stranger) as http:
                assert (await http.get(api.url)).status_code == 401
        assert api.answers[0][0] == 200
        assert {reason for status, reason in api.answers if status == 401} == {
            "the token is certificate-bound and no client certificate was presented",
            "the client certificate is not the one the token is bound to",
        }
    assert server.refusals == []


async def test_tls_client_auth_by_dns_san(
    authority: TestAuthority, billing: ClientFiles, server: MutualTlsAuthorizationServer
) -> None:
    server.register_tls_client("billing-san", san_dns="billing.svc.example")
    auth = TlsClientAuth("billing-san", billing.certificate, billing.key)
    async with TokenManager(
        token_endpoint=server.token_endpoint, client_auth=auth, verify=authority.ca_file
    ) as tokens:
        assert (await tokens.get_token()).value in server.bindings


async def test_self_signed_tls_client_auth(
    authority: TestAuthority, tmp_path: Path, server: MutualTlsAuthorizationServer
) -> None:
    mine = self_signed_client(str(tmp_path), "reports", password=PASSWORD)
    server.register_tls_client("reports", self_signed_pem=mine.pem)
    auth = SelfSignedTlsClientAuth("reports", mine.certificate, mine.key, password=PASSWORD)
    assert auth.method == "self_signed_tls_client_auth"
    async with TokenManager(
        token_endpoint=server.token_endpoint, client_auth=auth, verify=authority.ca_file
    ) as tokens:
        token = await tokens.get_token()
    assert server.bindings[token.value] == mine.thumbprint
    # another self-signed certificate for the same client id: refused by the OAuth layer
    # (the TLS layer trusts only registered ones: this one is registered for someone else)
    impostor = self_signed_client(str(tmp_path), "impostor")
    server.register_tls_client("someone-else", self_signed_pem=impostor.pem)
    wrong = SelfSignedTlsClientAuth("reports", impostor.certificate, impostor.key)
    async with TokenManager(
        token_endpoint=server.token_endpoint, client_auth=wrong, verify=authority.ca_file
    ) as tokens:
        with pytest.raises(InvalidClientError) as info:
            await tokens.get_token()
    assert "not the one registered" in str(info.value) and mine.thumbprint not in str(info.value)
    assert "x5c" in str(info.value)  # the hint says where the certificate is registered


async def test_a_server_requiring_a_certificate_ends_the_handshake_without_one(
    authority: TestAuthority,
) -> None:
    with MutualTlsAuthorizationServer(authority, require_certificate=True) as server:
        server.register_client("svc", client_secret="a-secret-for-this-test")
        async with TokenManager(
            token_endpoint=server.token_endpoint,
            client_auth=ClientSecretPost("svc", "a-secret-for-this-test"),
            verify=authority.ca_file,
        ) as tokens:
            with pytest.raises(TransportError) as info:
                await tokens.get_token()
        assert info.value.reason == "tls_client_certificate" and not info.value.retryable
        assert "requires a TLS client certificate and none was presented" in str(info.value)
        assert tokens.stats.requests == 1  # not retried: it would fail the same way
        # The server thread counts the failure just after sending its alert, which the client
        # may read first: wait (bounded) for the count.
        for _ in range(200):
            if server.handshake_failures:
                break
            await anyio.sleep(0.01)
        assert server.token_requests == 0 and server.handshake_failures >= 1


async def test_a_certificate_from_another_ca_is_refused_at_the_handshake(
    authority: TestAuthority, tmp_path: Path
) -> None:
    stranger = self_signed_client(str(tmp_path), "stranger")
    with MutualTlsAuthorizationServer(authority, require_certificate=True) as server:
        server.register_tls_client("stranger", subject_dn=stranger.subject_dn)
        auth = TlsClientAuth("stranger", stranger.certificate, stranger.key)
        async with TokenManager(
            token_endpoint=server.token_endpoint, client_auth=auth, verify=authority.ca_file
        ) as tokens:
            with pytest.raises(TransportError) as info:
                await tokens.get_token()
    assert info.value.reason == "tls_client_certificate", str(info.value)
    assert "TLS client certificate" in str(info.value)


async def test_a_registered_tls_client_without_a_certificate_is_invalid_client(
    authority: TestAuthority, billing: ClientFiles, server: MutualTlsAuthorizationServer
) -> None:
    auth = TlsClientAuth("billing", billing.certificate, billing.key)
    # A client of the user's own that does not present the certificate (documented: the
    # user configures it on a client they pass).
    async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=authority.ca_file)) as http:
        async with TokenManager(
            token_endpoint=server.token_endpoint, client_auth=auth, http_client=http
        ) as tokens:
            with pytest.raises(InvalidClientError) as info:
                await tokens.get_token()
    text = str(info.value)
    assert "no client certificate was presented" in text
    assert billing.thumbprint in text and "tls_client_auth_subject_dn" in text  # the hint


async def test_user_built_ssl_context(
    authority: TestAuthority, billing: ClientFiles, server: MutualTlsAuthorizationServer
) -> None:
    context = ssl.create_default_context(cafile=authority.ca_file)
    context.load_cert_chain(billing.certificate, billing.key)
    auth = TlsClientAuth("billing", ssl_context=context)
    async with TokenManager(token_endpoint=server.token_endpoint, client_auth=auth) as tokens:
        token = await tokens.get_token()
        assert client_ssl_context(auth) is context
    assert server.bindings[token.value] == billing.thumbprint
    with pytest.raises(ConfigurationError, match="decides whom"):
        TokenManager(token_endpoint=server.token_endpoint, client_auth=auth, verify=authority.ca_file)


async def test_private_key_jwt_with_a_client_certificate_gets_a_bound_token(
    authority: TestAuthority, billing: ClientFiles, server: MutualTlsAuthorizationServer
) -> None:
    key = make_key("p256")
    signer = LocalSigner.from_pem(pem_of(key), algorithm="ES256")
    public = (await signer.describe()).public_jwk
    server.register_client("jwt-client", public_jwk=public)
    async with TokenManager(
        token_endpoint=server.token_endpoint,
        client_auth=PrivateKeyJWT("jwt-client", signer),
        client_certificate=ClientCertificate(billing.certificate, billing.key),
        verify=authority.ca_file,
    ) as tokens:
        token = await tokens.get_token()
        assert client_ssl_context(tokens, authority.ca_file) is not None
    assert server.bindings[token.value] == billing.thumbprint


async def test_discovery_uses_the_mtls_alias_only_with_a_certificate(
    authority: TestAuthority, billing: ClientFiles, server: MutualTlsAuthorizationServer
) -> None:
    clear_metadata_cache()
    with MutualTlsAuthorizationServer(authority, mtls_alias=server.token_endpoint) as front:
        front.register_client("svc", client_secret="front-secret-for-this-test")
        auth = TlsClientAuth("billing", billing.certificate, billing.key)
        async with TokenManager.from_issuer(front.issuer, auth, verify=authority.ca_file) as tokens:
            token = await tokens.get_token()
            assert tokens.token_endpoint == server.token_endpoint
        assert server.bindings[token.value] == billing.thumbprint
        assert front.token_requests == 0 and server.token_requests == 1
        # a client without a certificate keeps the plain token_endpoint
        plain = ClientSecretPost("svc", "front-secret-for-this-test")
        async with TokenManager.from_issuer(front.issuer, plain, verify=authority.ca_file) as tokens:
            await tokens.get_token()
            assert tokens.token_endpoint == front.token_endpoint
        assert front.token_requests == 1 and server.token_requests == 1
    clear_metadata_cache()


async def test_an_unusable_mtls_alias_is_a_discovery_error(
    authority: TestAuthority, billing: ClientFiles
) -> None:
    from keyless_m2m import DiscoveryError

    clear_metadata_cache()
    with MutualTlsAuthorizationServer(authority, mtls_alias="http://mtls.example/token") as front:
        auth = TlsClientAuth("billing", billing.certificate, billing.key)
        async with TokenManager.from_issuer(front.issuer, auth, verify=authority.ca_file) as tokens:
            with pytest.raises(DiscoveryError) as info:
                await tokens.get_token()
    assert info.value.reason == "unusable_token_endpoint"
    assert "mtls_endpoint_aliases.token_endpoint" in str(info.value)
    clear_metadata_cache()


def test_sync_manager_with_tls_client_auth(
    authority: TestAuthority, billing: ClientFiles, server: MutualTlsAuthorizationServer
) -> None:
    auth = TlsClientAuth("billing", billing.certificate, billing.key)
    with SyncTokenManager(
        token_endpoint=server.token_endpoint, client_auth=auth, verify=authority.ca_file
    ) as tokens:
        token = tokens.get_token()
        with resource_server(authority, server) as api:
            with httpx.Client(
                auth=tokens.auth(), verify=client_ssl_context(tokens, authority.ca_file)
            ) as http:
                assert http.get(api.url).status_code == 200
    assert server.bindings[token.value] == billing.thumbprint


# -- the key's password ----------------------------------------------------------------------


async def test_an_encrypted_key_and_its_password_never_leak(
    authority: TestAuthority, server: MutualTlsAuthorizationServer, tmp_path: Path
) -> None:
    locked = authority.issue_client("locked", password=PASSWORD)
    server.register_tls_client("locked", subject_dn=locked.subject_dn)
    auth = TlsClientAuth("locked", locked.certificate, locked.key, password=PASSWORD)
    key_text = Path(locked.key).read_text()
    shown = repr(auth) + str(auth) + repr(auth.client_certificate)
    assert PASSWORD not in shown and "PRIVATE KEY" not in shown and "password=<hidden>" in shown
    async with TokenManager(
        token_endpoint=server.token_endpoint, client_auth=auth, verify=authority.ca_file
    ) as tokens:
        assert (await tokens.get_token()).value in server.bindings
    forbidden = [PASSWORD, key_text, key_text.splitlines()[1]]
    for attempt in (
        lambda: TlsClientAuth("locked", locked.certificate, locked.key, password="wrong-" + PASSWORD),
        lambda: TlsClientAuth("", locked.certificate, locked.key, password=PASSWORD),  # bad client id
        lambda: TlsClientAuth("locked", locked.certificate, locked.key),  # no password
        lambda: ClientCertificate(locked.key, password=PASSWORD),  # the key file as certificate
    ):
        with pytest.raises(ConfigurationError) as info:
            attempt()
        assert not any(f in str(info.value) for f in forbidden)
        assert secret_locals(info.value, forbidden) == []
    with pytest.raises(ConfigurationError, match="wrong password"):
        ClientCertificate(locked.certificate, locked.key, password="wrong")
    with pytest.raises(ConfigurationError, match="is encrypted: pass password="):
        ClientCertificate(locked.certificate, locked.key)
    with pytest.raises(TypeError):
        pickle.dumps(auth.client_certificate)
