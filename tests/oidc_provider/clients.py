"""The oidc-provider every integration test shares: its clients, scopes and secret.

``tests/integration/conftest.py`` starts it once per session (the ``oidc_provider``
fixture) with :func:`running_provider`; tests import the constants from here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from jwcrypto import jwk as jwcrypto_jwk

from keyless_m2m.signers import LocalSigner
from tests.helpers import ALG_KEYS, make_key, missing_server, pem_of
from tests.oidc_provider import harness

SCOPES = ["pockets.read", "transfers.read", "pockets.write"]
SECRET = "op-client-secret-7b1f0d6c3e9a"
JWT_ALGS = ["RS256", "PS256", "ES256", "ES384", "EdDSA"]


def public_jwk_of(kind: str) -> dict[str, Any]:
    key = jwcrypto_jwk.JWK.from_pem(pem_of(make_key(kind)))
    return dict(json.loads(key.export_public()))


@dataclass
class AuthServer:
    issuer: str
    token_endpoint: str
    pid: int
    signers: dict[str, LocalSigner] = field(default_factory=dict)


@contextmanager
def running_provider() -> Iterator[AuthServer]:
    """oidc-provider on loopback with a private_key_jwt client per alg and two secret clients."""
    problem = harness.ensure_installed()
    if problem:
        missing_server(problem)
    clients: list[dict[str, Any]] = []
    signers: dict[str, LocalSigner] = {}
    for alg in JWT_ALGS:
        kind = ALG_KEYS[alg]
        signers[alg] = LocalSigner.from_pem(pem_of(make_key(kind)), algorithm=alg)
        clients.append(
            {
                "client_id": f"jwt-{alg.lower()}",
                "token_endpoint_auth_method": "private_key_jwt",
                "token_endpoint_auth_signing_alg": alg,
                "jwks": {"keys": [public_jwk_of(kind)]},
                "scope": " ".join(SCOPES),
            }
        )
    for method in ("client_secret_basic", "client_secret_post"):
        clients.append(
            {
                "client_id": f"secret-{method.rsplit('_', 1)[1]}",
                "client_secret": SECRET,
                "token_endpoint_auth_method": method,
                "scope": " ".join(SCOPES),
            }
        )
    with harness.start_oidc_provider(clients, SCOPES, access_token_ttl=900) as op:
        yield AuthServer(op.issuer, op.token_endpoint, op.pid, signers)
