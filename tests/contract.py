"""The signer contract: one test class every backend's tests subclass.

A subclass provides two fixtures:

- ``signer``: a ready :class:`~keyless_m2m.signers.Signer` (parametrise it over algs);
- ``expected_alg``: the JWS ``alg`` that signer must describe.

Signatures are verified with PyJWT from the public JWK the signer describes, never with
the code that made them.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from keyless_m2m import PrivateKeyJWT
from keyless_m2m._jose import ALGORITHMS, b64url, encode_segment, jwk_thumbprint
from keyless_m2m.signers import KeyDescription, Signer
from tests.helpers import verify_jws


async def sign_jws(signer: Signer, claims: dict[str, Any]) -> str:
    description = await signer.describe()
    header = {"alg": description.algorithm, "kid": description.key_id}
    signing_input = f"{encode_segment(header)}.{encode_segment(claims)}".encode()
    return f"{signing_input.decode()}.{b64url(await signer.sign(signing_input))}"


@pytest.mark.anyio
class SignerContract:
    """Behaviour every signer backend must show."""

    async def test_satisfies_protocol_and_describes(self, signer: Signer, expected_alg: str) -> None:
        assert isinstance(signer, Signer)
        description = await signer.describe()
        assert isinstance(description, KeyDescription)
        assert description.algorithm == expected_alg
        jwk = dict(description.public_jwk)
        assert jwk["alg"] == expected_alg and jwk["use"] == "sig" and jwk["kid"] == description.key_id
        assert "d" not in jwk and "p" not in jwk, "a public JWK must hold no private members"
        assert ALGORITHMS[expected_alg].family == jwk["kty"]

    async def test_describe_is_cached(self, signer: Signer) -> None:
        assert await signer.describe() is await signer.describe()

    async def test_kid_defaults_to_thumbprint(self, signer: Signer) -> None:
        description = await signer.describe()
        assert description.key_id == jwk_thumbprint(description.public_jwk)

    async def test_signature_verifies_independently(self, signer: Signer) -> None:
        description = await signer.describe()
        claims = {"sub": "contract", "n": 42}
        assert verify_jws(await sign_jws(signer, claims), dict(description.public_jwk)) == claims

    async def test_signatures_have_the_jws_length(self, signer: Signer, expected_alg: str) -> None:
        alg = ALGORITHMS[expected_alg]
        signature = await signer.sign(b"header.claims")
        if alg.family == "EC":
            assert len(signature) == 2 * alg.coordinate_size
        elif alg.family == "OKP":
            assert len(signature) == 64
        else:
            assert len(signature) >= 256

    async def test_concurrent_signatures_all_verify(self, signer: Signer) -> None:
        description = await signer.describe()
        tokens: list[str] = []

        async def one(i: int) -> None:
            tokens.append(await sign_jws(signer, {"i": i}))

        async with anyio.create_task_group() as tg:
            for i in range(8):
                tg.start_soon(one, i)
        assert sorted(verify_jws(t, dict(description.public_jwk))["i"] for t in tokens) == list(range(8))

    async def test_client_assertion_verifies(self, signer: Signer) -> None:
        auth = PrivateKeyJWT("contract-client", signer)
        assertion = await auth.assertion("https://as.example/token")
        description = await signer.describe()
        claims = verify_jws(assertion, dict(description.public_jwk), audience="https://as.example/token")
        assert claims["iss"] == claims["sub"] == "contract-client"
        assert 0 < claims["exp"] - claims["iat"] <= 300
