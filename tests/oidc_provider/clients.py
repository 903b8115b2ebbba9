"""The oidc-provider servers the integration tests share: their clients, scopes and secret.

One server per configuration profile (``PROFILES``, the Python side of ``server.mjs``'s
table, and :data:`MTLS_PROFILE`), started on first use by :class:`ProviderPool` and stopped
by PID when the session ends: ``tests/integration/conftest.py``'s ``oidc_servers`` fixture
holds the pool, and its ``oidc_provider`` fixture is the ``default`` profile. Tests import
the constants from here.
"""

from __future__ import annotations

import base64
import json
import ssl
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, NamedTuple

from jwcrypto import jwk as jwcrypto_jwk

from keyless_m2m.signers import LocalSigner
from keyless_m2m.testing.tls import ClientFiles, TestAuthority, self_signed_client
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
#: In the ``mtls`` profile: the clients with ``tls_client_certificate_bound_access_tokens:
#: true``, by how they authenticate: ``tls_client_auth`` by the subject DN and by a DNS SAN
#: of the certificate ``billing`` (:attr:`MtlsMaterial.certificates`),
#: ``self_signed_tls_client_auth`` by the self-signed ``reports`` (its ``jwks`` with
#: ``x5c``), and ``private_key_jwt`` (ES256) whose tokens are bound to ``ledger``.
MTLS_CLIENTS = {
    "subject_dn": "mtls-subject-dn",
    "san_dns": "mtls-san-dns",
    "self_signed": "mtls-self-signed",
    "private_key_jwt": "mtls-bound-jwt",
}
#: The DNS SAN of ``billing``, registered as ``tls_client_auth_san_dns``.
BILLING_SAN_DNS = "billing.svc.example"
JWT_ALGS = ["RS256", "PS256", "ES256", "ES384", "EdDSA"]
METHODS = ("private_key_jwt", "client_secret_basic", "client_secret_post")
TLS_METHODS = ("tls_client_auth", "self_signed_tls_client_auth")
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
    :data:`DPOP_CLIENTS` registered too. ``mtls``: HTTPS with a second listener that asks
    for client certificates (``mtls_endpoint_aliases``), features.mTLS, introspection for
    :data:`RESOURCE_SERVER_CLIENT`, the clients of :data:`MTLS_CLIENTS` registered too.
    """

    name: str
    methods: tuple[str, ...] = METHODS
    algs: tuple[str, ...] = ALL_ALGS
    aud: str = "any"
    fapi: str | None = None
    dpop: bool = False
    mtls: bool = False

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
#: Mutual TLS (RFC 8705) over HTTPS. Not in :data:`PROFILES`: the interoperability matrix
#: runs over those, over plain http, and this one needs its CA (``AuthServer.ca_file``).
MTLS_PROFILE = Profile("mtls", methods=(*METHODS, *TLS_METHODS), mtls=True)
SERVER_PROFILES = {**PROFILES, MTLS_PROFILE.name: MTLS_PROFILE}


@dataclass(frozen=True)
class MtlsMaterial:
    """The ``mtls`` profile's test CA (which issued the server's certificate and the
    client certificates it trusts) and the client certificates the clients of
    :data:`MTLS_CLIENTS` are registered with: ``billing`` (issued, DNS SAN
    :data:`BILLING_SAN_DNS`), ``ledger`` (issued) and ``reports`` (self-signed)."""

    authority: TestAuthority
    certificates: dict[str, ClientFiles]


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
    #: The CA that verifies the server (``https`` issuers: the ``mtls`` profile).
    ca_file: str | None = None
    mtls: MtlsMaterial | None = None

    def _urlopen(self, request: str | urllib.request.Request) -> dict[str, Any]:
        context = ssl.create_default_context(cafile=self.ca_file) if self.ca_file else None
        with urllib.request.urlopen(request, timeout=5, context=context) as resp:  # noqa: S310 (loopback)
            return dict(json.load(resp))

    def token_requests(self, since: int = 0) -> TokenRequests:
        """What this server saw at its token endpoint (see :class:`TokenRequests`).

        Blocking, on purpose callable from async tests: one loopback GET, well under a
        millisecond, with no event loop, TLS context or client to set up.
        """
        body = self._urlopen(f"{self.issuer}/_test/token-requests?since={since}")
        return TokenRequests(int(body["total"]), list(body["requests"]))

    def introspect(self, token: str) -> dict[str, Any]:
        """RFC 7662 introspection of ``token`` as :data:`RESOURCE_SERVER_CLIENT` (``dpop``
        and ``mtls`` profiles). Blocking: one loopback POST (a resource server's thread
        calls it)."""
        endpoint = str(self.metadata["introspection_endpoint"])
        credentials = base64.b64encode(f"{RESOURCE_SERVER_CLIENT}:{SECRET}".encode()).decode()
        request = urllib.request.Request(  # noqa: S310 (loopback)
            endpoint,
            data=urllib.parse.urlencode({"token": token}).encode(),
            headers={"Authorization": f"Basic {credentials}", "Accept": "application/json"},
        )
        return self._urlopen(request)

    def jkt_of(self, token: str) -> str | None:
        """The ``cnf.jkt`` introspection reports for an active token (``None``: inactive or
        not DPoP-bound): what a resource server learns of the binding."""
        answer = self.introspect(token)
        cnf = answer.get("cnf") if answer.get("active") is True else None
        jkt = cnf.get("jkt") if isinstance(cnf, dict) else None
        return jkt if isinstance(jkt, str) else None

    def x5t_of(self, token: str) -> str | None:
        """The ``cnf["x5t#S256"]`` introspection reports for an active token (``None``:
        inactive or not certificate-bound): what a resource server learns of the binding."""
        answer = self.introspect(token)
        cnf = answer.get("cnf") if answer.get("active") is True else None
        x5t = cnf.get("x5t#S256") if isinstance(cnf, dict) else None
        return x5t if isinstance(x5t, str) else None


def client_id_for(method: str, alg: str | None = None) -> str:
    """The client registered for ``method`` (and ``alg``) on every profile that has it."""
    if method == "private_key_jwt":
        assert alg is not None
        return f"jwt-{alg.lower()}"
    return f"secret-{method.rsplit('_', 1)[1]}"


def mtls_clients(material: MtlsMaterial) -> list[dict[str, Any]]:
    """The clients of :data:`MTLS_CLIENTS` (and the resource server's) for ``material``."""
    certificates = material.certificates
    bound = {"scope": " ".join(SCOPES), "tls_client_certificate_bound_access_tokens": True}
    return [
        {
            "client_id": MTLS_CLIENTS["subject_dn"],
            "token_endpoint_auth_method": "tls_client_auth",
            "tls_client_auth_subject_dn": certificates["billing"].subject_dn,
            **bound,
        },
        {
            "client_id": MTLS_CLIENTS["san_dns"],
            "token_endpoint_auth_method": "tls_client_auth",
            "tls_client_auth_san_dns": BILLING_SAN_DNS,
            **bound,
        },
        {
            "client_id": MTLS_CLIENTS["self_signed"],
            "token_endpoint_auth_method": "self_signed_tls_client_auth",
            "jwks": {"keys": [certificates["reports"].jwk()]},
            **bound,
        },
        {
            "client_id": MTLS_CLIENTS["private_key_jwt"],
            "token_endpoint_auth_method": "private_key_jwt",
            "token_endpoint_auth_signing_alg": "ES256",
            "jwks": {"keys": [public_jwk_of(ALG_KEYS["ES256"])]},
            **bound,
        },
        {
            "client_id": RESOURCE_SERVER_CLIENT,
            "client_secret": SECRET,
            "token_endpoint_auth_method": "client_secret_basic",
            "grant_types": [],
        },
    ]


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


def mtls_material(directory: str) -> tuple[MtlsMaterial, harness.TlsFiles]:
    """A test CA in ``directory``, the client certificates of :class:`MtlsMaterial`, and
    the files the ``mtls`` server is started with (its certificate for 127.0.0.1)."""
    authority = TestAuthority(directory)
    cert, key = authority.server_files("127.0.0.1", name="oidc-provider")
    certificates = {
        "billing": authority.issue_client("billing", dns_names=(BILLING_SAN_DNS,)),
        "ledger": authority.issue_client("ledger"),
        "reports": self_signed_client(directory, "reports"),
    }
    return MtlsMaterial(authority, certificates), {"ca": authority.ca_file, "cert": cert, "key": key}


@contextmanager
def running_provider(profile: str = "default") -> Iterator[AuthServer]:
    """oidc-provider on loopback in configuration ``profile`` (see :data:`SERVER_PROFILES`),
    with the clients of :func:`clients_for` (and :func:`mtls_clients`)."""
    problem = harness.ensure_installed()
    if problem:
        missing_server(problem)
    config = SERVER_PROFILES[profile]
    signers = {alg: LocalSigner.from_pem(pem_of(make_key(ALG_KEYS[alg])), algorithm=alg) for alg in JWT_ALGS}
    clients = clients_for(config)
    with ExitStack() as stack:
        material: MtlsMaterial | None = None
        tls: harness.TlsFiles | None = None
        if config.mtls:
            directory = stack.enter_context(tempfile.TemporaryDirectory(prefix="oidc-mtls-"))
            material, tls = mtls_material(directory)
            clients += mtls_clients(material)
        op = stack.enter_context(
            harness.start_oidc_provider(
                clients,
                SCOPES,
                access_token_ttl=900,
                profile=profile,
                introspection_client=RESOURCE_SERVER_CLIENT if config.dpop or config.mtls else None,
                tls=tls,
            )
        )
        yield AuthServer(
            op.issuer,
            op.token_endpoint,
            op.pid,
            signers,
            profile=config,
            client_ids=[c["client_id"] for c in clients],
            metadata=op.metadata,
            ca_file=op.ca_file,
            mtls=material,
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
