"""The assertion's audience against real servers on loopback, asyncio and trio: the
embedded ``AuthorizationServer`` acting as a strict rfc7523bis server (issuer only), as a
server that accepts only its token endpoint URL, and as one that accepts either. What the
server saw is read from the requests it received and verified with PyJWT, not with the
code that signed them."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest

from keyless_m2m import (
    ConfigurationError,
    InvalidClientError,
    PrivateKeyJWT,
    RefusedWithoutReasonError,
    TokenManager,
)
from keyless_m2m.certificates import certificate_pem, certificate_thumbprint, self_signed_certificate
from keyless_m2m.endpoint import TokenEndpoint
from keyless_m2m.signers import LocalSigner
from keyless_m2m.testing.authorization_server import AuthorizationServer, Fault
from tests.cli_runner import jwk_of
from tests.helpers import make_key, pem_of, verify_jws

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

PUBLIC_JWK = jwk_of("p256", "ES256")


class Server(AuthorizationServer):
    """The embedded server, keeping every client assertion it was sent."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.assertions: list[str] = []
        self.on_request = self._keep

    def _keep(self, form: dict[str, list[str]]) -> None:
        self.assertions.extend(form.get("client_assertion", []))

    def sent(self) -> list[tuple[str, str | None]]:
        """(aud, typ) of each assertion, verified with the registered public key."""
        seen: list[tuple[str, str | None]] = []
        for assertion in self.assertions:
            claims = verify_jws(assertion, PUBLIC_JWK)
            seen.append((claims["aud"], jwt.get_unverified_header(assertion).get("typ")))
        return seen


@pytest.fixture(params=["either", "issuer", "token_endpoint"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def server_of(kind: str) -> Server:
    server = Server(assertion_audience=kind)
    server.register_client("svc", public_jwk=PUBLIC_JWK)
    return server


@pytest.fixture
def issuer_only() -> Iterator[Server]:
    with server_of("issuer") as server:
        yield server


@pytest.fixture
def endpoint_only() -> Iterator[Server]:
    with server_of("token_endpoint") as server:
        yield server


def signer() -> LocalSigner:
    return LocalSigner.from_pem(pem_of(make_key("p256")))


async def test_from_issuer_with_defaults_gets_a_token_from_every_kind_of_server(kind: str) -> None:
    with server_of(kind) as server:
        async with TokenManager.from_issuer(
            server.issuer, PrivateKeyJWT("svc", signer()), max_attempts=1
        ) as tokens:
            assert (await tokens.get_token()).value in server.issued
            assert (await tokens.get_token(scope="other")).value in server.issued
        issuer_form = (server.issuer, "client-authentication+jwt")
        endpoint_form = (server.token_endpoint, "JWT")
        if kind == "token_endpoint":
            # the issuer first, refused; the token endpoint URL at once; then only that
            assert server.sent() == [issuer_form, endpoint_form, endpoint_form]
        else:
            assert server.sent() == [issuer_form, issuer_form]  # rfc7523bis when the issuer is known


async def test_the_fallback_is_logged_once_and_kept(
    endpoint_only: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "keyless_m2m")
    endpoint_url = endpoint_only.token_endpoint
    async with TokenManager.from_issuer(endpoint_only.issuer, PrivateKeyJWT("svc", signer())) as tokens:
        await tokens.get_token()
        await tokens.get_token(scope="b")
        assert tokens.stats.requests == 3 and tokens.stats.signatures == 3
        assert tokens.endpoint.audience_fallback
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and endpoint_url in warnings[0].getMessage()
    assert "audience_policy='token_endpoint'" in warnings[0].getMessage()


async def test_a_refusal_without_reason_also_tries_the_token_endpoint(endpoint_only: Server) -> None:
    # One deployed server answers every refusal with an empty 403.
    endpoint_only.fail_next(Fault(status=403, body=b""))
    auth = PrivateKeyJWT("svc", signer(), issuer=endpoint_only.issuer)
    endpoint = TokenEndpoint(endpoint_only.token_endpoint, auth, max_attempts=1)
    try:
        assert (await endpoint.request()).value in endpoint_only.issued
    finally:
        await endpoint.aclose()
    assert [aud for aud, _ in endpoint_only.sent()] == [endpoint_only.issuer, endpoint_only.token_endpoint]


async def test_strict_issuer_never_falls_back_and_says_what_to_set(endpoint_only: Server) -> None:
    auth = PrivateKeyJWT("svc", signer(), audience_policy="issuer")
    tokens = TokenManager.from_issuer(endpoint_only.issuer, auth, max_attempts=3)
    async with tokens:
        with pytest.raises(InvalidClientError) as info:
            await tokens.get_token()
    assert endpoint_only.sent() == [(endpoint_only.issuer, "client-authentication+jwt")]
    message = str(info.value)
    assert f"issuer identifier {endpoint_only.issuer!r}" in message
    assert "audience_policy='auto' or 'token_endpoint'" in message
    assert info.value.hint is not None and info.value.hint in message
    assert endpoint_only.assertions[0] not in message


async def test_token_endpoint_policy_refused_by_a_strict_server_names_the_issuer_option(
    issuer_only: Server,
) -> None:
    auth = PrivateKeyJWT("svc", signer(), audience_policy="token_endpoint")
    async with TokenManager.from_issuer(issuer_only.issuer, auth) as tokens:
        with pytest.raises(InvalidClientError) as info:
            await tokens.get_token()
    assert issuer_only.sent() == [(issuer_only.token_endpoint, "JWT")]
    assert f"token endpoint URL {issuer_only.token_endpoint!r}" in str(info.value)
    assert "issuer=... or TokenManager.from_issuer" in str(info.value)


async def test_the_default_without_a_known_issuer_is_the_token_endpoint(kind: str) -> None:
    with server_of(kind) as server:
        endpoint = TokenEndpoint(server.token_endpoint, PrivateKeyJWT("svc", signer()))
        try:
            if kind == "issuer":
                with pytest.raises(InvalidClientError, match=r"issuer=\.\.\. or TokenManager\.from_issuer"):
                    await endpoint.request()
            else:
                assert (await endpoint.request()).value in server.issued
        finally:
            await endpoint.aclose()
        assert server.sent() == [(server.token_endpoint, "JWT")]


async def test_refused_in_both_forms_says_the_audience_is_not_the_reason(endpoint_only: Server) -> None:
    stranger = LocalSigner.from_pem(pem_of(make_key("p384")))  # not the registered key
    auth = PrivateKeyJWT("svc", stranger, issuer=endpoint_only.issuer)
    endpoint = TokenEndpoint(endpoint_only.token_endpoint, auth)
    try:
        for _ in range(2):
            with pytest.raises(
                InvalidClientError, match="unless the server said the audience was wrong both times"
            ) as info:
                await endpoint.request()
            assert not endpoint.audience_fallback  # the issuer is tried first again next time
        assert endpoint.stats.requests == 4 and endpoint.stats.signatures == 4
    finally:
        await endpoint.aclose()
    auds = [json.loads(jwt.utils.base64url_decode(a.split(".")[1]))["aud"] for a in endpoint_only.assertions]
    assert auds == [endpoint_only.issuer, endpoint_only.token_endpoint] * 2
    assert "not ES384" in (info.value.error_description or "")
    assert "with aud = the issuer identifier it was refused as invalid_client: client 'svc''s keys" in str(
        info.value
    )


async def test_strict_issuer_without_a_known_issuer_is_a_configuration_error(issuer_only: Server) -> None:
    endpoint = TokenEndpoint(
        issuer_only.token_endpoint, PrivateKeyJWT("svc", signer(), audience_policy="issuer")
    )
    try:
        with pytest.raises(ConfigurationError, match="needs the authorization server's issuer identifier"):
            await endpoint.request()
    finally:
        await endpoint.aclose()
    assert issuer_only.token_requests == 0


async def test_an_explicit_audience_is_sent_as_given_and_never_replaced(issuer_only: Server) -> None:
    auth = PrivateKeyJWT("svc", signer(), audience=issuer_only.issuer + "/other")
    async with TokenManager.from_issuer(issuer_only.issuer, auth) as tokens:
        with pytest.raises(InvalidClientError, match=r"\(audience=\)"):
            await tokens.get_token()
    assert [aud for aud, _ in issuer_only.sent()] == [issuer_only.issuer + "/other"]


async def test_an_empty_403_to_a_strict_issuer_assertion_stays_a_typed_refusal(issuer_only: Server) -> None:
    issuer_only.fail_next(Fault(status=403, body=b"", count=None))
    auth = PrivateKeyJWT("svc", signer(), issuer=issuer_only.issuer, audience_policy="issuer")
    endpoint = TokenEndpoint(issuer_only.token_endpoint, auth)
    try:
        with pytest.raises(RefusedWithoutReasonError) as info:
            await endpoint.request()
    finally:
        await endpoint.aclose()
    assert endpoint.stats.requests == 1 and info.value.hint is not None


async def test_fapi2_takes_iat_from_a_server_whose_clock_is_behind(issuer_only: Server) -> None:
    issuer_only.clock_offset = -30.0  # its Date header and its checks: 30 s behind this machine
    issuer_only.checks_use_clock_offset = True
    plain = TokenManager.from_issuer(issuer_only.issuer, PrivateKeyJWT("svc", signer()), max_attempts=1)
    async with plain:
        with pytest.raises(InvalidClientError) as info:
            await plain.get_token()
    # the fallback's refusal (aud), and the first one's reason: the clock
    assert "it was refused as invalid_client: iat is not a number or is in the future" in str(info.value)
    # FAPI 2.0 also wants sender-constrained tokens: DPoP here (dpop=True), with the proof's
    # iat from the server's clock too (its 60 s window would refuse one 30 s ahead).
    issuer_only.dpop, issuer_only.dpop_iat_window = "required", 10.0
    fapi2 = TokenManager.from_issuer(
        issuer_only.issuer, PrivateKeyJWT("svc", signer(), profile="fapi2"), dpop=True
    )
    async with fapi2:
        token = await fapi2.get_token()
        assert token.value in issuer_only.issued and token.is_dpop
        assert fapi2.stats.requests == 1  # the skew came from discovery's Date header
    claims = verify_jws(issuer_only.assertions[-1], PUBLIC_JWK, audience=issuer_only.issuer)
    assert claims["iat"] <= time.time() - 25


async def test_entra_profile_with_a_certificate_minted_by_the_signer(endpoint_only: Server) -> None:
    rsa_signer = LocalSigner.from_pem(pem_of(make_key("rsa")), algorithm="PS256")
    endpoint_only.register_client("entra-app", public_jwk=dict((await rsa_signer.describe()).public_jwk))
    cert = await self_signed_certificate(rsa_signer, subject="CN=entra-app")
    auth = PrivateKeyJWT("entra-app", rsa_signer, profile="entra", certificate=certificate_pem(cert))
    async with TokenManager.from_issuer(endpoint_only.issuer, auth) as tokens:
        assert (await tokens.get_token()).value in endpoint_only.issued
        assert tokens.stats.requests == 1  # straight to the token endpoint URL, no refused first try
    header = jwt.get_unverified_header(endpoint_only.assertions[-1])
    assert header["x5t#S256"] == certificate_thumbprint(cert) and header["alg"] == "PS256"
