"""The oidc-provider servers the integration tests share: their clients, scopes and secret.

One server per configuration profile (``PROFILES``, the Python side of ``server.mjs``'s
table), started on first use by :class:`ProviderPool` and stopped by PID when the session
ends: ``tests/integration/conftest.py``'s ``oidc_servers`` fixture holds the pool, and its
``oidc_provider`` fixture is the ``default`` profile. Tests import the constants from here.
"""

from __future__ import annotations

import base64
import json
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, NamedTuple

from jwcrypto import jwk as jwcrypto_jwk

from keyless_m2m.signers import LocalSigner
from tests.helpers import ALG_KEYS, make_key, missing_server, pem_of
from tests.oidc_provider import harness

SCOPES = ["pockets.read", "transfers.read", "pockets.write"]
SECRET = "op-client-secret-7b1f0d6c3e9a"
#: In the ``dpop`` profile: clients with ``dpop_bound_access_tokens: true`` (a proof is
#: required at the token endpoint), by method; the private_key_jwt one signs with ES256.
DPOP_CLIENTS = {
    "private_key_jwt": "dpop-jwt-es256",
    "client_secret_basic": "dpop-secret-basic",
    "client_secret_post": "dpop-secret-post",
}
#: In the ``dpop`` profile: the resource server's client (client_secret_basic, ``SECRET``),
#: the only one allowed to introspect tokens.
RESOURCE_SERVER_CLIENT = "dpop-resource-server"
JWT_ALGS = ["RS256", "PS256", "ES256", "ES384", "EdDSA"]
METHODS = ("private_key_jwt", "client_secret_basic", "client_secret_post")
ALL_ALGS = (
    *("RS256", "RS384", "RS512", "PS256", "PS384", "PS512"),
    *("ES256", "ES384", "ES512", "EdDSA", "Ed25519"),
)


@dataclass(frozen=True)
class Profile:
    """One server configuration of ``server.mjs`` (its ``PROFILES`` entry, which is the
    truth; ``test_harness_selftest.py`` checks that the two agree through the metadata).

    ``aud``: which client assertion audience the server accepts: ``"any"`` (oidc-provider's
    own rule: the issuer, the token endpoint URL or the URL of the endpoint called),
    ``"issuer"`` or ``"token_endpoint"`` (that value only, as a string). ``dpop``: DPoP
    nonces required, introspection for :data:`RESOURCE_SERVER_CLIENT`, the clients of
    :data:`DPOP_CLIENTS` registered too.
    """

    name: str
    methods: tuple[str, ...] = METHODS
    algs: tuple[str, ...] = ALL_ALGS
    aud: str = "any"
    fapi: str | None = None
    dpop: bool = False

    def accepts(self, method: str, alg: str | None = None, aud: str | None = None) -> bool:
        """Whether a request with this method (assertion algorithm, audience) gets a token."""
        if method not in self.methods:
            return False
        if method != "private_key_jwt":
            return True
        return alg in self.algs and self.accepts_aud(aud)

    def accepts_aud(self, aud: str | None) -> bool:
        if self.fapi == "2.0" or self.aud == "issuer":
            return aud == "issuer"
        return self.aud == "any" or aud == self.aud


PROFILES = {
    p.name: p
    for p in (
        Profile("default"),
        # FAPI 2.0 mode on; the algorithms (§5.4.1) and the method (§5.3.2.1) configured.
        Profile("fapi2", methods=("private_key_jwt",), algs=("PS256", "ES256", "EdDSA"), fapi="2.0"),
        Profile("private-key-jwt-only", methods=("private_key_jwt",)),
        Profile("client-secret-basic-only", methods=("client_secret_basic",)),
        Profile("client-secret-post-only", methods=("client_secret_post",)),
        Profile("issuer-aud-only", aud="issuer"),
        Profile("endpoint-aud-only", aud="token_endpoint"),
        # DPoP nonces, DPoP-bound clients and introspection, besides the default's clients.
        Profile("dpop", dpop=True),
    )
}


class TokenRequests(NamedTuple):
    """What a server saw at its token endpoint: ``total`` requests so far, and the records
    from the asked-for index on (``client_id``, ``method``, ``alg``, ``typ``, ``aud``,
    ``status``, ``error``, ``error_description``)."""

    total: int
    requests: list[dict[str, Any]]


def public_jwk_of(kind: str) -> dict[str, Any]:
    key = jwcrypto_jwk.JWK.from_pem(pem_of(make_key(kind)))
    return dict(json.loads(key.export_public()))


@dataclass
class AuthServer:
    issuer: str
    token_endpoint: str
    pid: int
    signers: dict[str, LocalSigner] = field(default_factory=dict)
    profile: Profile = PROFILES["default"]
    client_ids: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)

    def token_requests(self, since: int = 0) -> TokenRequests:
        """What this server saw at its token endpoint (see :class:`TokenRequests`).

        Blocking, on purpose callable from async tests: one loopback GET, well under a
        millisecond, with no event loop, TLS context or client to set up.
        """
        url = f"{self.issuer}/_test/token-requests?since={since}"
        with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 (loopback http)
            body = json.load(resp)
        return TokenRequests(int(body["total"]), list(body["requests"]))

    def introspect(self, token: str) -> dict[str, Any]:
        """RFC 7662 introspection of ``token`` as :data:`RESOURCE_SERVER_CLIENT` (``dpop``
        profile only). Blocking: one loopback POST (a resource server's thread calls it)."""
        endpoint = str(self.metadata["introspection_endpoint"])
        credentials = base64.b64encode(f"{RESOURCE_SERVER_CLIENT}:{SECRET}".encode()).decode()
        request = urllib.request.Request(  # noqa: S310 (loopback http)
            endpoint,
            data=urllib.parse.urlencode({"token": token}).encode(),
            headers={"Authorization": f"Basic {credentials}", "Accept": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5) as resp:  # noqa: S310 (loopback http)
            return dict(json.load(resp))

    def jkt_of(self, token: str) -> str | None:
        """The ``cnf.jkt`` introspection reports for an active token (``None``: inactive or
        not DPoP-bound): what a resource server learns of the binding."""
        answer = self.introspect(token)
        cnf = answer.get("cnf") if answer.get("active") is True else None
        jkt = cnf.get("jkt") if isinstance(cnf, dict) else None
        return jkt if isinstance(jkt, str) else None


def client_id_for(method: str, alg: str | None = None) -> str:
    """The client registered for ``method`` (and ``alg``) on every profile that has it."""
    if method == "private_key_jwt":
        assert alg is not None
        return f"jwt-{alg.lower()}"
    return f"secret-{method.rsplit('_', 1)[1]}"


def clients_for(profile: Profile) -> list[dict[str, Any]]:
    """A private_key_jwt client per alg of ``JWT_ALGS`` and a client per secret method,
    for the methods ``profile`` supports (oidc-provider refuses to start with a client
    whose method or pinned alg it does not support). The alg is pinned where the profile
    supports it; elsewhere the client is registered without a pinned alg, so that an
    assertion in that alg is refused at the token endpoint, as a real server would."""
    clients: list[dict[str, Any]] = []
    if "private_key_jwt" in profile.methods:
        for alg in JWT_ALGS:
            client: dict[str, Any] = {
                "client_id": client_id_for("private_key_jwt", alg),
                "token_endpoint_auth_method": "private_key_jwt",
                "jwks": {"keys": [public_jwk_of(ALG_KEYS[alg])]},
                "scope": " ".join(SCOPES),
            }
            if alg in profile.algs:
                client["token_endpoint_auth_signing_alg"] = alg
            clients.append(client)
    for method in ("client_secret_basic", "client_secret_post"):
        if method in profile.methods:
            clients.append(
                {
                    "client_id": client_id_for(method),
                    "client_secret": SECRET,
                    "token_endpoint_auth_method": method,
                    "scope": " ".join(SCOPES),
                }
            )
    if profile.dpop:
        clients += [
            {
                "client_id": DPOP_CLIENTS["private_key_jwt"],
                "token_endpoint_auth_method": "private_key_jwt",
                "token_endpoint_auth_signing_alg": "ES256",
                "jwks": {"keys": [public_jwk_of(ALG_KEYS["ES256"])]},
                "scope": " ".join(SCOPES),
                "dpop_bound_access_tokens": True,
            },
            *(
                {
                    "client_id": DPOP_CLIENTS[method],
                    "client_secret": SECRET,
                    "token_endpoint_auth_method": method,
                    "scope": " ".join(SCOPES),
                    "dpop_bound_access_tokens": True,
                }
                for method in ("client_secret_basic", "client_secret_post")
            ),
            {
                "client_id": RESOURCE_SERVER_CLIENT,
                "client_secret": SECRET,
                "token_endpoint_auth_method": "client_secret_basic",
                "grant_types": [],
            },
        ]
    return clients


@contextmanager
def running_provider(profile: str = "default") -> Iterator[AuthServer]:
    """oidc-provider on loopback in configuration ``profile`` (see :data:`PROFILES`),
    with the clients of :func:`clients_for`."""
    problem = harness.ensure_installed()
    if problem:
        missing_server(problem)
    config = PROFILES[profile]
    signers = {alg: LocalSigner.from_pem(pem_of(make_key(ALG_KEYS[alg])), algorithm=alg) for alg in JWT_ALGS}
    clients = clients_for(config)
    with harness.start_oidc_provider(
        clients,
        SCOPES,
        access_token_ttl=900,
        profile=profile,
        introspection_client=RESOURCE_SERVER_CLIENT if config.dpop else None,
    ) as op:
        yield AuthServer(
            op.issuer,
            op.token_endpoint,
            op.pid,
            signers,
            profile=config,
            client_ids=[c["client_id"] for c in clients],
            metadata=op.metadata,
        )


class ProviderPool:
    """One server per profile, started on first :meth:`get`, every one stopped (by PID,
    through the harness) by :meth:`close`.

    >>> with ProviderPool() as pool:                 # doctest: +SKIP
    ...     pool.get("fapi2").token_endpoint
    """

    def __init__(self) -> None:
        self._stack = ExitStack()
        self._servers: dict[str, AuthServer] = {}

    def get(self, profile: str) -> AuthServer:
        if profile not in self._servers:
            self._servers[profile] = self._stack.enter_context(running_provider(profile))
        return self._servers[profile]

    def close(self) -> None:
        self._servers.clear()
        self._stack.close()

    def __enter__(self) -> ProviderPool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
