"""keyless_m2m.testing.contract: the checks pass for the library's own signers and caches and
fail, saying why, for deliberately broken ones."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Awaitable, Callable
from types import MappingProxyType
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from keyless_m2m import AccessToken, PrivateKeyJWT
from keyless_m2m._jose import encode_segment
from keyless_m2m.cache import MemoryTokenCache
from keyless_m2m.signers import KeyDescription, LocalSigner
from keyless_m2m.testing.contract import check_signer, check_token_cache, verify_jws
from keyless_m2m.testing.signers import InMemorySigner

pytestmark = pytest.mark.anyio

_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)  # shared: slow to make
_KEYS: dict[str, Callable[[], Any]] = {
    "RS256": lambda: _RSA,
    "PS256": lambda: _RSA,
    "ES256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "ES384": lambda: ec.generate_private_key(ec.SECP384R1()),
    "ES512": lambda: ec.generate_private_key(ec.SECP521R1()),
    "EdDSA": ed25519.Ed25519PrivateKey.generate,
}


def local(alg: str) -> LocalSigner:
    return LocalSigner(_KEYS[alg](), algorithm=alg)


@pytest.mark.parametrize("alg", list(_KEYS))
async def test_local_signers_pass(alg: str) -> None:
    await check_signer(local(alg), algorithm=alg)


@pytest.mark.parametrize("alg", ["ES256", "PS256", "EdDSA"])
async def test_in_memory_signers_pass(alg: str) -> None:
    await check_signer(InMemorySigner(alg), algorithm=alg)


async def test_a_configured_key_id_is_checked_instead_of_the_thumbprint() -> None:
    signer = LocalSigner(_KEYS["ES256"](), key_id="key-2024")
    await check_signer(signer, key_id="key-2024")
    with pytest.raises(AssertionError, match="RFC 7638 thumbprint"):
        await check_signer(signer)


async def test_the_wrong_algorithm_is_named() -> None:
    with pytest.raises(AssertionError, match=r"describes alg 'ES256', expected 'ES384'"):
        await check_signer(local("ES256"), algorithm="ES384")


# -- broken signers -----------------------------------------------------------------------------


class Broken:
    """A LocalSigner with its description or signatures bent in one way."""

    def __init__(
        self,
        inner: LocalSigner,
        *,
        describe: Callable[[KeyDescription], KeyDescription] = lambda d: d,
        sign: Callable[[bytes], Awaitable[bytes]] | None = None,
    ) -> None:
        self.inner = inner
        self._description: KeyDescription | None = None
        self._bend = describe
        self._sign = sign

    async def describe(self) -> KeyDescription:
        if self._description is None:
            self._description = self._bend(await self.inner.describe())
        return self._description

    async def sign(self, signing_input: bytes) -> bytes:
        return await (self._sign or self.inner.sign)(signing_input)

    async def aclose(self) -> None:
        await self.inner.aclose()


def with_jwk(description: KeyDescription, **changes: Any) -> KeyDescription:
    jwk = {**description.public_jwk, **changes}
    fields: dict[str, Any] = {"public_jwk": MappingProxyType(jwk)}
    if "kid" in changes:
        fields["key_id"] = changes["kid"]
    if "alg" in changes:
        fields["algorithm"] = changes["alg"]
    return dataclasses.replace(description, **fields)


async def test_a_kid_that_is_not_the_thumbprint_fails() -> None:
    signer = Broken(local("ES256"), describe=lambda d: with_jwk(d, kid="made-up-kid"))
    with pytest.raises(AssertionError, match=r"kid 'made-up-kid' is not the RFC 7638 thumbprint"):
        await check_signer(signer)


async def test_a_kid_that_differs_from_the_jwks_fails() -> None:
    signer = Broken(local("ES256"), describe=lambda d: dataclasses.replace(d, key_id="header-kid"))
    with pytest.raises(AssertionError, match=r"must carry .*'kid': 'header-kid'"):
        await check_signer(signer)


async def test_a_der_encoded_ecdsa_signature_fails() -> None:
    inner = local("ES256")

    async def der(signing_input: bytes) -> bytes:
        raw = await inner.sign(signing_input)
        return encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))

    with pytest.raises(AssertionError, match="DER-encoded"):
        await check_signer(Broken(inner, sign=der))


async def test_an_alg_the_key_does_not_fit_fails() -> None:
    # A P-256 key described as ES384.
    signer = Broken(local("ES256"), describe=lambda d: with_jwk(d, alg="ES384"))
    with pytest.raises(AssertionError, match=r"ES384 needs an EC key on P-384; .*crv 'P-256'"):
        await check_signer(signer)


async def test_pkcs1_signatures_described_as_pss_fail() -> None:
    signer = Broken(local("RS256"), describe=lambda d: with_jwk(d, alg="PS256"))
    with pytest.raises(AssertionError, match="PS256 signature does not verify"):
        await check_signer(signer, algorithm="PS256")


async def test_a_private_member_in_the_public_jwk_fails() -> None:
    signer = Broken(local("ES256"), describe=lambda d: with_jwk(d, d="c2VjcmV0"))
    with pytest.raises(AssertionError, match=r"private members \['d'\]"):
        await check_signer(signer)


async def test_a_describe_that_is_not_cached_fails() -> None:
    class Uncached(Broken):
        async def describe(self) -> KeyDescription:
            return dataclasses.replace(await self.inner.describe())

    with pytest.raises(AssertionError, match="resolve the key once"):
        await check_signer(Uncached(local("ES256")))


async def test_a_signature_over_other_bytes_fails() -> None:
    inner = local("EdDSA")

    async def elsewhere(signing_input: bytes) -> bytes:
        return await inner.sign(signing_input + b".")

    with pytest.raises(AssertionError, match="EdDSA signature does not verify"):
        await check_signer(Broken(inner, sign=elsewhere))


# -- the verifier agrees with PyJWT -------------------------------------------------------------


@pytest.mark.parametrize("alg", list(_KEYS))
async def test_verify_jws_agrees_with_pyjwt(alg: str) -> None:
    signer = local(alg)
    jwk = dict((await signer.describe()).public_jwk)
    token = await PrivateKeyJWT("svc", signer).assertion("https://as.example/token")
    expected = jwt.decode(
        token,
        key=jwt.PyJWK.from_dict(jwk, algorithm=alg).key,
        algorithms=[alg],
        audience="https://as.example/token",
    )
    assert verify_jws(token, jwk, audience="https://as.example/token") == expected
    header, _, signature = token.split(".")
    with pytest.raises(AssertionError, match="does not verify"):
        verify_jws(f"{header}.{encode_segment({**expected, 'sub': 'mallory'})}.{signature}", jwk)
    with pytest.raises(AssertionError, match="does not name"):
        verify_jws(token, jwk, audience="https://other.example/token")
    with pytest.raises(AssertionError, match="alg"):
        verify_jws(token, {**jwk, "alg": "RS512" if alg != "RS512" else "RS256"})


# -- token caches -------------------------------------------------------------------------------


async def test_memory_token_cache_passes() -> None:
    await check_token_cache(MemoryTokenCache)


async def test_an_async_factory_is_awaited() -> None:
    async def factory() -> MemoryTokenCache:
        return MemoryTokenCache()

    await check_token_cache(factory)


class IgnoresFences(MemoryTokenCache):
    async def put(self, key: str, token: AccessToken, *, fence: int, ttl: float) -> bool:
        return await super().put(key, token, fence=1 << 62, ttl=ttl)  # always "newest"


class SharedLeases(MemoryTokenCache):
    async def acquire(self, key: str, *, ttl: float) -> int | None:
        await self.release(key, self._fence)
        return await super().acquire(key, ttl=ttl)


class DeafWaiters(MemoryTokenCache):
    def _notify(self, key: str) -> None:
        return


@pytest.mark.parametrize(
    ("cache", "message"),
    [
        (IgnoresFences, "put() under an older fence than the stored entry's must be refused"),
        (SharedLeases, "acquire() while another holds the lease must return None"),
        (DeafWaiters, "a release() must wake wait()-ers"),
        (lambda: object(), "does not satisfy the TokenCache protocol"),
    ],
    ids=["put-ignoring-fences", "non-exclusive-lease", "deaf-waiters", "not-a-cache"],
)
async def test_broken_caches_fail(cache: Any, message: str) -> None:
    with pytest.raises(AssertionError, match=re.escape(message)):
        await check_token_cache(cache, short_ttl=0.05)
