"""The signer contract: one test class every backend's tests subclass.

A subclass provides two fixtures:

- ``signer``: a ready :class:`~keyless_m2m.signers.Signer` (parametrise it over algs);
- ``expected_alg``: the JWS ``alg`` that signer must describe.

Each test is one step of :func:`keyless_m2m.testing.contract.check_signer`, the check the
test kit ships for users' own signers, so the backends here and users' signers meet the
same rules. Signatures are verified twice, by the kit's verifier (``cryptography``,
no library code) and by PyJWT, never with the code that made them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from keyless_m2m._jose import b64url, encode_segment
from keyless_m2m.signers import Signer
from keyless_m2m.testing import contract
from tests.helpers import verify_jws as verify_with_pyjwt


async def sign_jws(signer: Signer, claims: dict[str, Any]) -> str:
    description = await signer.describe()
    header = {"alg": description.algorithm, "kid": description.key_id}
    signing_input = f"{encode_segment(header)}.{encode_segment(claims)}".encode()
    return f"{signing_input.decode()}.{b64url(await signer.sign(signing_input))}"


def verify_twice(token: str, public_jwk: Mapping[str, Any], *, audience: str | None = None) -> dict[str, Any]:
    """The kit's verifier, then PyJWT's: both must accept, and agree on the claims."""
    claims = contract.verify_jws(token, public_jwk, audience=audience)
    assert verify_with_pyjwt(token, dict(public_jwk), audience=audience) == claims
    return claims


@pytest.mark.anyio
class SignerContract:
    """Behaviour every signer backend must show."""

    async def test_satisfies_protocol_and_describes(self, signer: Signer, expected_alg: str) -> None:
        await contract.check_describe(signer, algorithm=expected_alg)

    async def test_describe_is_cached(self, signer: Signer) -> None:
        await contract.check_describe_is_cached(signer)

    async def test_kid_defaults_to_thumbprint(self, signer: Signer) -> None:
        await contract.check_key_id(signer)

    async def test_signature_verifies_independently(self, signer: Signer) -> None:
        await contract.check_signature_verifies(signer, verify=verify_twice)

    async def test_signatures_have_the_jws_length(self, signer: Signer) -> None:
        await contract.check_signature_length(signer)

    async def test_concurrent_signatures_all_verify(self, signer: Signer) -> None:
        await contract.check_concurrent_signatures(signer, verify=verify_twice)

    async def test_client_assertion_verifies(self, signer: Signer) -> None:
        await contract.check_client_assertion(signer, verify=verify_twice)
