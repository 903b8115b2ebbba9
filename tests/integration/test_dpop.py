"""DPoP (RFC 9449) as a user meets it, on asyncio and trio: ``TokenManager(..., dpop=...)``
against the embedded authorization server acting as a DPoP server (proofs verified with
jwcrypto, nonces demanded, tokens bound), and ``tokens.auth()`` against a loopback
resource server that verifies every proof on its own with PyJWT (``htm``, ``htu``,
``ath``, ``jti``, the ``cnf.jkt`` binding) and demands its own nonce. Counts are asserted
(token requests, proofs, nonce demands), never times."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from keyless_m2m import (
    AccessToken,
    ClientSecretBasic,
    ClientSecretPost,
    InvalidDPoPProofError,
    InvalidGrantError,
    InvalidTokenResponseError,
    PrivateKeyJWT,
    SyncTokenManager,
    TokenManager,
    TokenRequestError,
)
from keyless_m2m.cache import MemoryTokenCache
from keyless_m2m.dpop import DPoPKey
from keyless_m2m.signers import LocalSigner
from keyless_m2m.testing.authorization_server import AuthorizationServer
from keyless_m2m.testing.signers import InMemorySigner
from tests.cli_runner import jwk_of
from tests.dpop_resource_server import DPoPResourceServer, thumbprint
from tests.helpers import make_key, pem_of
from tests.hostile_server import Answer, HostileServer
from tests.manager_rig import until
from tests.oidc_provider.clients import DPOP_CLIENTS, SECRET, ProviderPool

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


def _auth(server: AuthorizationServer) -> PrivateKeyJWT:
    server.register_client("svc", public_jwk=jwk_of("p256", "ES256"))
    return _client_auth()


@pytest.fixture
def dpop_server() -> Iterator[AuthorizationServer]:
    with AuthorizationServer(dpop="required", dpop_nonce=True) as server:
        server.register_client("svc", public_jwk=jwk_of("p256", "ES256"))
        server.register_client("secret-client", client_secret=SECRET)
        yield server


def _client_auth() -> PrivateKeyJWT:
    return PrivateKeyJWT("svc", LocalSigner.from_pem(pem_of(make_key("p256")), algorithm="ES256"))


def _proof_claims(proof: str) -> tuple[dict[str, Any], dict[str, Any]]:
    return jwt.get_unverified_header(proof), jwt.decode(proof, options={"verify_signature": False})


async def test_a_dpop_token_and_its_use_at_a_resource_server(dpop_server: AuthorizationServer) -> None:
    endpoint = dpop_server.token_endpoint
    async with TokenManager(endpoint, _client_auth(), scope="pockets.read", dpop=True) as tokens:
        token = await tokens.get_token()
        # use_dpop_nonce once (the server's nonce), then the token: two requests, two proofs.
        assert token.token_type == "DPoP" and token.is_dpop
        assert token.authorization_header() == f"DPoP {token.value}"
        assert dpop_server.dpop_nonces_demanded == 1 and dpop_server.dpop_proofs_verified == 1
        assert tokens.stats.requests == 2 and tokens.stats.signatures == 2
        # The binding the server recorded is the thumbprint of the key the proofs carry.
        assert dpop_server.jkt_of(token.value) == token.dpop_jkt
        assert token.dpop_jkt == await tokens.endpoint.dpop.thumbprint()  # type: ignore[union-attr]

        with DPoPResourceServer(jkt_of=dpop_server.jkt_of, require_nonce=True) as api:
            async with httpx.AsyncClient(auth=tokens.auth()) as http:
                first = await http.get(f"{api.url}/pockets?page=2")
                second = await http.post(f"{api.url}/transfers", json={"amount": 1})
            assert first.status_code == 200 and second.status_code == 200, api.records
            assert first.json()["scheme"] == "DPoP"
            # The API's nonce: demanded once, answered at once, then sent unasked.
            assert api.outcomes() == ["use_dpop_nonce", "ok", "ok"]
            assert api.proofs_verified == 2 and api.replays_refused == 0
        assert tokens.stats.requests == 2  # the API's nonce cost no token request
        assert tokens.stats.dpop_proofs == 2 + 3


async def test_a_dpop_key_in_a_signer_of_each_key_type(dpop_server: AuthorizationServer) -> None:
    keys = {
        "PS256": LocalSigner(rsa.generate_private_key(65537, 2048), algorithm="PS256"),
        "ES384": LocalSigner(ec.generate_private_key(ec.SECP384R1())),
        "EdDSA": LocalSigner(ed25519.Ed25519PrivateKey.generate()),
    }
    for alg, signer in keys.items():
        async with TokenManager(dpop_server.token_endpoint, _client_auth(), dpop=signer) as tokens:
            token = await tokens.get_token()
            described = await signer.describe()
            assert token.dpop_jkt == thumbprint(dict(described.public_jwk)), alg
            assert dpop_server.jkt_of(token.value) == token.dpop_jkt
            with DPoPResourceServer(jkt_of=dpop_server.jkt_of) as api:
                async with httpx.AsyncClient(auth=tokens.auth()) as http:
                    assert (await http.get(api.url)).status_code == 200, (alg, api.records)


async def test_client_secrets_with_dpop(dpop_server: AuthorizationServer) -> None:
    auth = ClientSecretBasic("secret-client", SECRET)
    async with TokenManager(dpop_server.token_endpoint, auth, dpop=True) as tokens:
        token = await tokens.get_token()
        assert token.is_dpop and dpop_server.jkt_of(token.value) == token.dpop_jkt
        assert tokens.stats.signatures == 0 and tokens.stats.dpop_proofs == 2


def test_the_blocking_manager_with_dpop(dpop_server: AuthorizationServer) -> None:
    with SyncTokenManager(dpop_server.token_endpoint, _client_auth(), dpop=True) as tokens:
        token = tokens.get_token()
        assert token.is_dpop
        with DPoPResourceServer(jkt_of=dpop_server.jkt_of, require_nonce=True) as api:
            with httpx.Client(auth=tokens.auth()) as http:
                assert http.get(api.url).status_code == 200
                assert http.delete(f"{api.url}/x").status_code == 200
            assert api.outcomes() == ["use_dpop_nonce", "ok", "ok"]


async def test_the_proof_on_the_wire(dpop_server: AuthorizationServer) -> None:
    seen: list[str] = []
    async with TokenManager(dpop_server.token_endpoint, _client_auth(), dpop=True) as tokens:
        token = await tokens.get_token()
        with DPoPResourceServer(jkt_of=dpop_server.jkt_of) as api:

            async def keep(request: httpx.Request) -> None:
                seen.append(request.headers["DPoP"])

            async with httpx.AsyncClient(auth=tokens.auth(), event_hooks={"request": [keep]}) as http:
                await http.get(f"{api.url}/a/b?q=1#frag")
    header, claims = _proof_claims(seen[-1])
    assert header["typ"] == "dpop+jwt" and header["alg"] == "ES256"
    assert set(header["jwk"]) == {"kty", "crv", "x", "y"}  # the public key, nothing else
    assert claims["htm"] == "GET" and claims["htu"] == f"{api.url}/a/b"
    assert "ath" in claims and "nonce" not in claims
    assert thumbprint(header["jwk"]) == token.dpop_jkt


async def test_a_server_without_dpop_gives_bearer_tokens_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="keyless_m2m")
    with AuthorizationServer() as server:
        auth = _auth(server)
        async with TokenManager(server.token_endpoint, auth, dpop=True) as tokens:
            token = await tokens.get_token()
            await tokens.get_token(scope="other")
        assert token.token_type == "Bearer" and token.dpop_jkt is None
    warnings = [r for r in caplog.records if "does not bind tokens" in r.getMessage()]
    assert len(warnings) == 1 and getattr(warnings[0], "leniency", False)


async def test_a_dpop_token_without_dpop_names_the_option() -> None:
    with HostileServer() as hostile:
        body = json.dumps({"access_token": "t", "token_type": "DPoP", "expires_in": 60}).encode()
        hostile.answers["/token"] = Answer(headers=[("content-type", "application/json")], body=body)
        async with TokenManager(hostile.url("/token"), _client_auth()) as tokens:
            with pytest.raises(InvalidTokenResponseError, match=r"dpop=True"):
                await tokens.get_token()


def _nonce_answer(nonce: str | None) -> Answer:
    headers = [("content-type", "application/json")]
    if nonce is not None:
        headers.append(("DPoP-Nonce", nonce))
    return Answer(status=400, headers=headers, body=b'{"error":"use_dpop_nonce"}')


@pytest.mark.parametrize("nonce", [None, "", "has space", 'quote"d', "x" * 2000])
async def test_a_nonce_demand_without_a_usable_nonce_is_typed_and_not_retried(nonce: str | None) -> None:
    with HostileServer() as hostile:
        hostile.answers["/token"] = _nonce_answer(nonce)
        async with TokenManager(hostile.url("/token"), _client_auth(), dpop=True) as tokens:
            with pytest.raises(TokenRequestError, match="DPoP-Nonce") as info:
                await tokens.get_token()
            assert info.value.error == "use_dpop_nonce" and not info.value.retryable
            assert tokens.stats.requests == 1
        assert hostile.requests == ["POST /token"]


async def test_a_nonce_demanded_twice_is_one_retry_then_the_error() -> None:
    with HostileServer() as hostile:
        hostile.answers["/token"] = _nonce_answer("fresh-nonce")
        async with TokenManager(hostile.url("/token"), _client_auth(), dpop=True) as tokens:
            with pytest.raises(TokenRequestError, match="again") as info:
                await tokens.get_token()
            assert info.value.error == "use_dpop_nonce"
            assert tokens.stats.requests == 2 and tokens.stats.dpop_proofs == 2


async def test_a_refused_proof_is_typed_not_retried_and_nothing_is_cached() -> None:
    with AuthorizationServer(dpop="required", dpop_iat_window=60) as server:
        server.register_client("secret-client", client_secret=SECRET)
        server.clock_offset = 3600  # the server's clock an hour ahead: every iat is stale
        server.checks_use_clock_offset = True
        auth = ClientSecretBasic("secret-client", SECRET)
        async with TokenManager(server.token_endpoint, auth, dpop=True, max_attempts=3) as tokens:
            with pytest.raises(InvalidDPoPProofError) as info:
                await tokens.get_token()
            assert "iat" in str(info.value)  # the server's description says which check
            with pytest.raises(InvalidDPoPProofError):  # the backoff window: no new request
                await tokens.get_token()
            assert tokens.stats.requests == 1 and server.issued == []


async def test_the_shared_cache_keeps_dpop_tokens_with_their_key(dpop_server: AuthorizationServer) -> None:
    cache = MemoryTokenCache()
    key = DPoPKey(LocalSigner(ec.generate_private_key(ec.SECP256R1())))
    other = DPoPKey.generate()
    async with (
        TokenManager(dpop_server.token_endpoint, _client_auth(), dpop=key, cache=cache) as first,
        TokenManager(dpop_server.token_endpoint, _client_auth(), dpop=key.signer, cache=cache) as same_key,
        TokenManager(dpop_server.token_endpoint, _client_auth(), dpop=other, cache=cache) as other_key,
    ):
        token = await first.get_token()
        assert await same_key.get_token() == token  # the same key: the fleet shares it
        assert same_key.stats.requests == 0 and same_key.stats.shared_hits == 1
        mine = await other_key.get_token()  # another key never gets it
        assert mine != token and mine.dpop_jkt == other.jkt != token.dpop_jkt
        assert other_key.stats.requests >= 1


# -- oidc-provider with DPoP and nonces (the ``dpop`` configuration) ----------------------


@pytest.mark.parametrize("method", list(DPOP_CLIENTS))
async def test_oidc_provider_dpop_bound_tokens(oidc_servers: ProviderPool, method: str) -> None:
    op = oidc_servers.get("dpop")
    client_id = DPOP_CLIENTS[method]
    auth: Any
    if method == "private_key_jwt":
        auth = PrivateKeyJWT(client_id, LocalSigner.from_pem(pem_of(make_key("p256")), algorithm="ES256"))
    elif method == "client_secret_basic":
        auth = ClientSecretBasic(client_id, SECRET)
    else:
        auth = ClientSecretPost(client_id, SECRET)
    signer = LocalSigner(ec.generate_private_key(ec.SECP256R1()))
    async with TokenManager.from_issuer(op.issuer, auth, scope="pockets.read", dpop=signer) as tokens:
        token = await tokens.get_token()
        assert token.is_dpop and token.scope == "pockets.read"
        # oidc-provider's own introspection says which key the token is bound to.
        assert (
            op.jkt_of(token.value) == token.dpop_jkt == thumbprint(dict((await signer.describe()).public_jwk))
        )
        assert tokens.stats.requests == 2  # use_dpop_nonce, then the token
        with DPoPResourceServer(jkt_of=op.jkt_of, require_nonce=True) as api:
            async with httpx.AsyncClient(auth=tokens.auth()) as http:
                for _ in range(3):
                    assert (await http.get(f"{api.url}/pockets")).status_code == 200
            assert api.outcomes() == ["use_dpop_nonce", "ok", "ok", "ok"]
        assert tokens.stats.requests == 2


async def test_oidc_provider_refuses_a_dpop_bound_client_without_dpop(oidc_servers: ProviderPool) -> None:
    op = oidc_servers.get("dpop")
    async with TokenManager.from_issuer(
        op.issuer, ClientSecretBasic(DPOP_CLIENTS["client_secret_basic"], SECRET)
    ) as tokens:
        with pytest.raises(InvalidGrantError):
            await tokens.get_token()


async def test_shared_cache_names_carry_the_tls_client_certificate(tmp_path: Any) -> None:
    # Managers of one client that present different certificates never share an entry;
    # the same certificate (another process of the fleet) names the same entry.
    from keyless_m2m.mtls import ClientCertificate
    from keyless_m2m.testing.tls import self_signed_client

    one, two = (self_signed_client(str(tmp_path), who) for who in ("one", "two"))
    names = []
    for files in (one, two, one, None):
        cert = ClientCertificate(files.certificate, files.key) if files is not None else None
        manager = TokenManager(
            "https://auth.example/token", _client_auth(), cache=MemoryTokenCache(), client_certificate=cert
        )
        names.append(manager._shared_key(manager._default_entry))
    assert names[0] == names[2] and len({names[0], names[1], names[3]}) == 3


class _GatedSigner(InMemorySigner):
    """A KMS that answers only when the test opens ``gate``; ``entered`` counts the
    ``sign()`` calls that reached it."""

    def __init__(self) -> None:
        super().__init__("ES256")
        self.gate = anyio.Event()
        self.gate.set()
        self.entered = 0

    async def sign(self, signing_input: bytes) -> bytes:
        self.entered += 1
        await self.gate.wait()
        return await super().sign(signing_input)


async def test_a_caller_cancelled_during_a_kms_proof_loses_nothing(dpop_server: AuthorizationServer) -> None:
    kms = _GatedSigner()
    endpoint = dpop_server.token_endpoint
    async with TokenManager(endpoint, _client_auth(), scope="pockets.read", dpop=kms) as tokens:
        token = await tokens.get_token()
        assert dpop_server.token_requests == 2  # use_dpop_nonce, then the token
        with DPoPResourceServer(jkt_of=dpop_server.jkt_of) as api:
            async with httpx.AsyncClient(auth=tokens.auth()) as http:
                # An API request whose per-request proof waits on the KMS, cancelled there.
                kms.gate = anyio.Event()
                with anyio.move_on_after(5) as scope:
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(http.get, f"{api.url}/pockets")
                        await until(lambda: kms.entered == 3)
                        tg.cancel_scope.cancel()
                assert not scope.cancelled_caught and api.records == []
                kms.gate.set()
                assert (await http.get(f"{api.url}/pockets")).status_code == 200
            assert api.outcomes() == ["ok"]

        # A token fetch whose proof waits on the KMS: one of three callers is cancelled
        # there; the other two get the one token of one request.
        assert await tokens.invalidate(token)
        kms.gate = anyio.Event()
        got: list[AccessToken] = []

        async def caller() -> None:
            got.append(await tokens.get_token())

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                async with anyio.create_task_group() as doomed:
                    doomed.start_soon(caller)
                    await until(lambda: kms.entered == 5)
                    tg.start_soon(caller)
                    tg.start_soon(caller)
                    for _ in range(20):  # let them join the flight (or not: the count below holds)
                        await anyio.sleep(0)
                    doomed.cancel_scope.cancel()
                kms.gate.set()
        assert len(got) == 2 and got[0] is got[1] and got[0].value != token.value
        assert dpop_server.token_requests == 3 and dpop_server.jkt_of(got[0].value) == kms_jkt(kms)
        # The fetch the cancelled caller started is the one the others got: no second proof.
        assert kms.entered == 5 and tokens.stats.dpop_proofs == 4
        assert (await tokens.get_token()) is got[0]


def kms_jkt(signer: InMemorySigner) -> str:
    return thumbprint(signer.public_jwk)
