"""Contract checks for your own signers and token caches, as trio ships
``trio.testing.check_one_way_stream``: await one in a test, and it raises
``AssertionError`` with a message that says what is wrong::

    from keyless_m2m.testing.contract import check_signer, check_token_cache

    async def test_my_signer():
        await check_signer(MyHsmSigner(...))                    # or algorithm="PS256"

    async def test_my_cache():
        await check_token_cache(lambda: MyMemcachedTokenCache(...))

:func:`check_signer` runs every ``check_*`` step below in turn; each step is public too, for
a suite that wants one test per step. Signatures are verified by :func:`verify_jws`, written
here against ``cryptography`` from the JWS and JWK specifications and sharing no code with
the library's signers, so a bug in the library cannot hide the same bug in a signer. No
PyJWT or other JOSE library is needed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import inspect
import json
import math
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import anyio
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from ..cache import TokenCache
from ..signers import KeyDescription, Signer
from ..token import AccessToken

__all__ = [
    "JwsVerifier",
    "check_client_assertion",
    "check_concurrent_signatures",
    "check_describe",
    "check_describe_is_cached",
    "check_key_id",
    "check_signature_length",
    "check_signature_verifies",
    "check_signer",
    "check_token_cache",
    "verify_jws",
]


# -- an independent JWS verifier ------------------------------------------------------------


@dataclass(frozen=True)
class _Alg:
    kty: str
    hash: type[hashes.HashAlgorithm] | None
    pss: bool = False
    crv: str | None = None
    size: int = 0  # ECDSA: bytes per r and s


# RFC 7518 section 3.1 and RFC 8037 section 3.1, written out here rather than taken from the
# library, so that a wrong entry there cannot make a wrong signature look right.
_ALGS: dict[str, _Alg] = {
    "RS256": _Alg("RSA", hashes.SHA256),
    "RS384": _Alg("RSA", hashes.SHA384),
    "RS512": _Alg("RSA", hashes.SHA512),
    "PS256": _Alg("RSA", hashes.SHA256, pss=True),
    "PS384": _Alg("RSA", hashes.SHA384, pss=True),
    "PS512": _Alg("RSA", hashes.SHA512, pss=True),
    "ES256": _Alg("EC", hashes.SHA256, crv="P-256", size=32),
    "ES384": _Alg("EC", hashes.SHA384, crv="P-384", size=48),
    "ES512": _Alg("EC", hashes.SHA512, crv="P-521", size=66),
    "EdDSA": _Alg("OKP", None, crv="Ed25519"),
}
_CURVES: dict[str, ec.EllipticCurve] = {
    "P-256": ec.SECP256R1(),
    "P-384": ec.SECP384R1(),
    "P-521": ec.SECP521R1(),
}
_THUMBPRINT_MEMBERS = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x")}
_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")


class JwsVerifier(Protocol):
    """``verify(compact_jws, public_jwk, *, audience=None) -> claims``, raising on a bad
    signature: :func:`verify_jws`, or your own (PyJWT, jwcrypto) for a second opinion."""

    def __call__(
        self, token: str, public_jwk: Mapping[str, Any], *, audience: str | None = None
    ) -> dict[str, Any]: ...


def _b64decode(segment: str, what: str) -> bytes:
    if "=" in segment:
        raise AssertionError(f"{what} is padded base64url; JWS segments carry no '=' padding")
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise AssertionError(f"{what} is not base64url") from None


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _jwk_int(jwk: Mapping[str, Any], member: str) -> int:
    value = jwk.get(member)
    if not isinstance(value, str):
        raise AssertionError(f"the public JWK has no {member!r} member")
    return int.from_bytes(_b64decode(value, f"the JWK's {member!r}"), "big")


def _public_key(
    jwk: Mapping[str, Any],
) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey:
    kty = jwk.get("kty")
    try:
        if kty == "RSA":
            return rsa.RSAPublicNumbers(_jwk_int(jwk, "e"), _jwk_int(jwk, "n")).public_key()
        if kty == "EC":
            curve = _CURVES.get(str(jwk.get("crv")))
            if curve is None:
                raise AssertionError(f"the public JWK's crv {jwk.get('crv')!r} is not P-256, P-384 or P-521")
            return ec.EllipticCurvePublicNumbers(_jwk_int(jwk, "x"), _jwk_int(jwk, "y"), curve).public_key()
        if kty == "OKP" and jwk.get("crv") == "Ed25519":
            x = _b64decode(str(jwk.get("x", "")), "the JWK's 'x'")
            return ed25519.Ed25519PublicKey.from_public_bytes(x)
    except ValueError as exc:
        raise AssertionError(f"the public JWK is not a valid {kty} key: {exc}") from None
    raise AssertionError(
        f"the public JWK's kty {kty!r} (crv {jwk.get('crv')!r}) is not RSA, EC or OKP Ed25519"
    )


def _check_signature(alg_name: str, jwk: Mapping[str, Any], signing_input: bytes, signature: bytes) -> None:
    alg = _ALGS.get(alg_name)
    if alg is None:
        raise AssertionError(f"alg {alg_name!r} is not an asymmetric JWS algorithm ({', '.join(_ALGS)})")
    if jwk.get("kty") != alg.kty or (alg.crv is not None and jwk.get("crv") != alg.crv):
        needed = f"{alg.kty} key on {alg.crv}" if alg.crv else f"{alg.kty} key"
        raise AssertionError(
            f"alg {alg_name} needs an {needed}; the public JWK is kty {jwk.get('kty')!r}, "
            f"crv {jwk.get('crv')!r}"
        )
    key = _public_key(jwk)
    try:
        if isinstance(key, rsa.RSAPublicKey) and alg.hash is not None:
            if alg.pss:
                # RFC 7518 section 3.5: MGF1 with the same hash, salt as long as the hash.
                salt = alg.hash().digest_size
                key.verify(signature, signing_input, padding.PSS(padding.MGF1(alg.hash()), salt), alg.hash())
            else:
                key.verify(signature, signing_input, padding.PKCS1v15(), alg.hash())
        elif isinstance(key, ec.EllipticCurvePublicKey) and alg.hash is not None:
            if len(signature) != 2 * alg.size:
                raise AssertionError(
                    f"an {alg_name} signature is r || s, {2 * alg.size} bytes (RFC 7518 section 3.4); this "
                    f"one is {len(signature)} bytes"
                    + (" and looks DER-encoded (an ECDSA-Sig-Value)" if signature[:1] == b"\x30" else "")
                )
            r = int.from_bytes(signature[: alg.size], "big")
            s = int.from_bytes(signature[alg.size :], "big")
            key.verify(encode_dss_signature(r, s), signing_input, ec.ECDSA(alg.hash()))
        elif isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, signing_input)
        else:  # pragma: no cover - the kty check above rules this out
            raise AssertionError(f"alg {alg_name} does not fit the public JWK")
    except InvalidSignature:
        raise AssertionError(
            f"the {alg_name} signature does not verify with the public JWK (kid {jwk.get('kid')!r})"
            + (" (PS* must use a salt as long as the hash)" if alg.pss else "")
        ) from None


def verify_jws(token: str, public_jwk: Mapping[str, Any], *, audience: str | None = None) -> dict[str, Any]:
    """Verify a compact JWS with ``public_jwk`` and return its claims (``AssertionError`` if not).

    The header's ``alg`` must be the JWK's ``alg`` (when it has one) and its ``kid`` the
    JWK's ``kid`` (when both have one). With ``audience``, the ``aud`` claim must be or
    contain it. Expiry is not checked: that is the authorization server's business.

    >>> verify_jws(assertion, signer_description.public_jwk)
    {'iss': 'svc', ...}
    """
    parts = token.split(".")
    if len(parts) != 3:
        raise AssertionError(f"a compact JWS has three dot-separated parts, this one has {len(parts)}")
    try:
        header = json.loads(_b64decode(parts[0], "the JWS header"))
        claims = json.loads(_b64decode(parts[1], "the JWS payload"))
    except (UnicodeDecodeError, ValueError):
        raise AssertionError("the JWS header or payload is not JSON") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise AssertionError("the JWS header and payload must be JSON objects")
    alg = header.get("alg")
    if "alg" in public_jwk and alg != public_jwk["alg"]:
        raise AssertionError(
            f"the JWS header's alg {alg!r} is not the public JWK's alg {public_jwk['alg']!r}"
        )
    if "kid" in header and "kid" in public_jwk and header["kid"] != public_jwk["kid"]:
        raise AssertionError(
            f"the JWS header's kid {header['kid']!r} is not the public JWK's kid {public_jwk['kid']!r}"
        )
    _check_signature(
        str(alg), public_jwk, f"{parts[0]}.{parts[1]}".encode("ascii"), _b64decode(parts[2], "the signature")
    )
    if audience is not None:
        aud = claims.get("aud")
        if audience not in (aud if isinstance(aud, list) else [aud]):
            raise AssertionError(f"the aud claim {aud!r} does not name {audience!r}")
    return claims


def _thumbprint(jwk: Mapping[str, Any]) -> str:
    members = _THUMBPRINT_MEMBERS.get(str(jwk.get("kty")))
    if members is None:
        raise AssertionError(f"cannot take the RFC 7638 thumbprint of a JWK of kty {jwk.get('kty')!r}")
    canonical = json.dumps({m: jwk.get(m) for m in members}, separators=(",", ":"), sort_keys=True)
    return _b64encode(hashlib.sha256(canonical.encode()).digest())


def _segment(value: Mapping[str, Any]) -> str:
    return _b64encode(json.dumps(value, separators=(",", ":")).encode())


async def _sign_jws(signer: Signer, description: KeyDescription, claims: Mapping[str, Any]) -> str:
    header = {"alg": description.algorithm, "kid": description.key_id}
    signing_input = f"{_segment(header)}.{_segment(claims)}"
    signature = await signer.sign(signing_input.encode("ascii"))
    if not isinstance(signature, bytes):
        raise AssertionError(f"sign() must return bytes, not {type(signature).__name__}")
    return f"{signing_input}.{_b64encode(signature)}"


# -- the signer contract --------------------------------------------------------------------


async def check_describe(signer: Signer, *, algorithm: str | None = None) -> KeyDescription:
    """``signer`` satisfies the :class:`~keyless_m2m.signers.Signer` protocol and describes a
    public JWK with ``kid``, ``alg`` (= ``algorithm`` when given) and ``use="sig"`` that fits
    the algorithm and holds no private member. Returns the description."""
    if not isinstance(signer, Signer):
        raise AssertionError(
            f"{type(signer).__name__} does not satisfy the Signer protocol (describe, sign, aclose)"
        )
    description = await signer.describe()
    if not isinstance(description, KeyDescription):
        raise AssertionError(f"describe() must return a KeyDescription, not {type(description).__name__}")
    if algorithm is not None and description.algorithm != algorithm:
        raise AssertionError(f"the signer describes alg {description.algorithm!r}, expected {algorithm!r}")
    alg = _ALGS.get(description.algorithm)
    if alg is None:
        raise AssertionError(
            f"the described alg {description.algorithm!r} is not an asymmetric JWS algorithm"
        )
    jwk = dict(description.public_jwk)
    leaked = [m for m in _PRIVATE_MEMBERS if m in jwk]
    if leaked:
        raise AssertionError(f"the public JWK holds private members {leaked}")
    expected = {"alg": description.algorithm, "use": "sig", "kid": description.key_id}
    wrong = {name: jwk.get(name) for name, value in expected.items() if jwk.get(name) != value}
    if wrong:
        raise AssertionError(f"the public JWK must carry {expected}; it has {wrong}")
    if jwk.get("kty") != alg.kty or (alg.crv is not None and jwk.get("crv") != alg.crv):
        needed = f"{alg.kty} key on {alg.crv}" if alg.crv else f"{alg.kty} key"
        raise AssertionError(
            f"alg {description.algorithm} needs an {needed}; the public JWK is kty {jwk.get('kty')!r}, "
            f"crv {jwk.get('crv')!r}"
        )
    key = _public_key(jwk)
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < 2048:
        raise AssertionError(
            f"an RSA key of {key.key_size} bits is too small for JWS (RFC 7518: at least 2048)"
        )
    return description


async def check_describe_is_cached(signer: Signer) -> None:
    """``describe()`` resolves the key once: later calls return the same object."""
    first, second = await signer.describe(), await signer.describe()
    if first is not second:
        raise AssertionError("describe() must resolve the key once and return the same KeyDescription after")


async def check_key_id(signer: Signer, *, key_id: str | None = None) -> None:
    """The ``kid`` is ``key_id`` when given, else the RFC 7638 thumbprint of the public JWK."""
    description = await signer.describe()
    expected = key_id if key_id is not None else _thumbprint(description.public_jwk)
    if description.key_id != expected:
        what = "the configured key id" if key_id is not None else "the RFC 7638 thumbprint of the public JWK"
        raise AssertionError(f"the signer's kid {description.key_id!r} is not {what}, {expected!r}")


async def check_signature_verifies(signer: Signer, *, verify: JwsVerifier = verify_jws) -> None:
    """A JWS signed by ``signer`` verifies with the public JWK it describes."""
    description = await signer.describe()
    claims = {"sub": "keyless-m2m contract", "n": 42}
    verified = verify(await _sign_jws(signer, description, claims), dict(description.public_jwk))
    if verified != claims:
        raise AssertionError(f"the verified claims {verified!r} are not the signed ones {claims!r}")


async def check_signature_length(signer: Signer) -> None:
    """The signature is the JWS form: ``r || s`` for ECDSA (each half padded to the curve
    size, never DER), 64 bytes for Ed25519, the modulus length for RSA."""
    description = await signer.describe()
    alg = _ALGS[description.algorithm]
    signature = await signer.sign(b"header.claims")
    if alg.kty == "EC":
        expected = 2 * alg.size
    elif alg.kty == "OKP":
        expected = 64
    else:
        expected = math.ceil(_jwk_int(description.public_jwk, "n").bit_length() / 8)
    if len(signature) != expected:
        hint = ""
        if alg.kty == "EC" and signature[:1] == b"\x30":
            hint = "; it looks DER-encoded: convert with decode_dss_signature and pad r and s"
        raise AssertionError(
            f"an {description.algorithm} JWS signature is {expected} bytes, "
            f"this one is {len(signature)}{hint}"
        )


async def check_concurrent_signatures(
    signer: Signer, *, concurrency: int = 8, verify: JwsVerifier = verify_jws
) -> None:
    """``concurrency`` overlapping ``sign()`` calls each return their own valid signature."""
    description = await signer.describe()
    tokens: dict[int, str] = {}

    async def one(i: int) -> None:
        tokens[i] = await _sign_jws(signer, description, {"i": i})

    async with anyio.create_task_group() as tg:
        for i in range(concurrency):
            tg.start_soon(one, i)
    for i, token in sorted(tokens.items()):
        claims = verify(token, dict(description.public_jwk))
        if claims != {"i": i}:
            raise AssertionError(f"concurrent sign() call {i} returned a signature over {claims!r}")


async def check_client_assertion(signer: Signer, *, verify: JwsVerifier = verify_jws) -> None:
    """A :class:`~keyless_m2m.PrivateKeyJWT` assertion made with ``signer`` verifies, names
    the signer's ``kid`` and ``alg``, and has RFC 7523 claims with a lifetime of at most 300 s."""
    from .. import PrivateKeyJWT

    audience = "https://as.example/token"
    assertion = await PrivateKeyJWT("contract-client", signer).assertion(audience)
    description = await signer.describe()
    claims = verify(assertion, dict(description.public_jwk), audience=audience)
    header = json.loads(_b64decode(assertion.split(".")[0], "the assertion header"))
    if (header.get("alg"), header.get("kid")) != (description.algorithm, description.key_id):
        raise AssertionError(f"the assertion header {header!r} does not name the signer's alg and kid")
    if not claims.get("iss") == claims.get("sub") == "contract-client":
        raise AssertionError(f"iss and sub must be the client id: {claims!r}")
    lifetime = claims.get("exp", 0) - claims.get("iat", 0)
    if not 0 < lifetime <= 300:
        raise AssertionError(f"the assertion must live between 0 and 300 s, not {lifetime}")


async def check_signer(
    signer: Signer,
    *,
    algorithm: str | None = None,
    key_id: str | None = None,
    verify: JwsVerifier = verify_jws,
) -> None:
    """Check ``signer`` against the :class:`~keyless_m2m.signers.Signer` contract.

    ``algorithm``: the ``alg`` it must describe (any, when ``None``); ``key_id``: the
    ``kid`` it must use (the RFC 7638 thumbprint, when ``None``); ``verify``: the verifier
    of its signatures (:func:`verify_jws`, or a JOSE library of your choice). Raises
    ``AssertionError`` naming the first broken rule. The signer is not closed.

    >>> await check_signer(LocalSigner(ec.generate_private_key(ec.SECP256R1())))
    """
    await check_describe(signer, algorithm=algorithm)
    await check_describe_is_cached(signer)
    await check_key_id(signer, key_id=key_id)
    await check_signature_verifies(signer, verify=verify)
    await check_signature_length(signer)
    await check_concurrent_signatures(signer, verify=verify)
    await check_client_assertion(signer, verify=verify)


# -- the token cache contract ---------------------------------------------------------------

CacheFactory = Callable[[], TokenCache | Awaitable[TokenCache]]


def _token(value: str, lifetime: float = 300) -> AccessToken:
    expires_at = (datetime.now(UTC) + timedelta(seconds=lifetime)).replace(microsecond=0)
    return AccessToken(value, "Bearer", expires_at, scope="contract.read", expires_in=lifetime)


async def _open(factory: CacheFactory) -> TokenCache:
    made = factory()
    cache = await made if inspect.isawaitable(made) else made
    if not isinstance(cache, TokenCache):
        raise AssertionError(
            f"{type(cache).__name__} does not satisfy the TokenCache protocol "
            "(get, put, acquire, release, wait, aclose)"
        )
    return cache


async def _same_token(cache: TokenCache, key: str, expected: AccessToken, context: str) -> None:
    found = await cache.get(key)
    if found is None:
        raise AssertionError(f"{context}: get() found nothing")
    if found.value != expected.value:
        raise AssertionError(f"{context}: get() returned another token than the one put last")
    if found.token_type.lower() != "bearer" or found.scope != expected.scope:
        raise AssertionError(f"{context}: the token's type or scope changed on the way: {found!r}")
    if abs((found.expires_at - expected.expires_at).total_seconds()) > 1:
        raise AssertionError(f"{context}: expires_at {found.expires_at} is not {expected.expires_at}")


async def _round_trip(cache: TokenCache, key: str, short_ttl: float) -> None:
    if await cache.get(key) is not None:
        raise AssertionError("get() of a key never written must return None")
    token = _token("contract-token-round-trip")
    fence = await cache.acquire(key, ttl=30)
    if not isinstance(fence, int) or isinstance(fence, bool):
        raise AssertionError(f"acquire() of a free key must return an int fencing token, not {fence!r}")
    if await cache.put(key, token, fence=fence, ttl=60) is not True:
        raise AssertionError("put() under the current lease's fence must store the token and return True")
    await _same_token(cache, key, token, "after put()")
    await cache.release(key, fence)


async def _lease(cache: TokenCache, key: str, short_ttl: float) -> None:
    first = await cache.acquire(key, ttl=30)
    if first is None:
        raise AssertionError("acquire() of a free key must return a fencing token, not None")
    if (held := await cache.acquire(key, ttl=30)) is not None:
        raise AssertionError(f"acquire() while another holds the lease must return None, not {held!r}")
    if await cache.acquire(key + ":other", ttl=30) is None:
        raise AssertionError("a lease on one key must not block another key")
    await cache.release(key, first + 1000)
    if await cache.acquire(key, ttl=30) is not None:
        raise AssertionError("release() with a fence that is not the holder's must leave the lease alone")
    await cache.release(key, first)
    second = await cache.acquire(key, ttl=30)
    if second is None or second <= first:
        raise AssertionError(
            f"after release(), acquire() must return a larger fence than {first}, not {second!r}"
        )


async def _fences(cache: TokenCache, key: str, short_ttl: float) -> None:
    older = await cache.acquire(key, ttl=30)
    assert older is not None, "acquire() of a free key returned None"
    await cache.release(key, older)
    newer = await cache.acquire(key, ttl=30)
    if newer is None or newer <= older:
        raise AssertionError(f"fences must grow per key: {older} then {newer!r}")
    fresh, stale = _token("contract-token-newer"), _token("contract-token-older")
    if await cache.put(key, fresh, fence=newer, ttl=60) is not True:
        raise AssertionError("put() under the newest fence must store the token and return True")
    if await cache.put(key, stale, fence=older, ttl=60) is not False:
        raise AssertionError(
            "put() under an older fence than the stored entry's must be refused (return False): "
            "a lease holder that stalled past its lease would overwrite a newer token"
        )
    await _same_token(cache, key, fresh, "after a put() under an older fence")
    again = _token("contract-token-same-fence")
    if await cache.put(key, again, fence=newer, ttl=60) is not True:
        raise AssertionError("put() under the stored entry's own fence must replace it (an invalidation)")
    await _same_token(cache, key, again, "after a put() under the same fence")
    await cache.release(key, newer)


async def _expiry(cache: TokenCache, key: str, short_ttl: float) -> None:
    fence = await cache.acquire(key, ttl=short_ttl)
    assert fence is not None, "acquire() of a free key returned None"
    if not await cache.put(key, _token("contract-token-short"), fence=fence, ttl=short_ttl):
        raise AssertionError("put() under the current lease's fence was refused")
    await anyio.sleep(short_ttl * 2)
    if await cache.get(key) is not None:
        raise AssertionError(f"an entry put with ttl={short_ttl} must be gone after {2 * short_ttl} s")
    later = await cache.acquire(key, ttl=30)
    if later is None or later <= fence:
        raise AssertionError(
            f"a lease taken with ttl={short_ttl} must expire, and the next one get a larger fence than "
            f"{fence}; got {later!r}"
        )
    await cache.release(key, later)


async def _wait(cache: TokenCache, key: str, short_ttl: float) -> None:
    with anyio.move_on_after(max(1.0, 5 * short_ttl)) as scope:
        await cache.wait(key, max_wait=30)
    if scope.cancelled_caught:
        raise AssertionError("wait() on a key nobody holds must return at once, not wait for max_wait")
    fence = await cache.acquire(key, ttl=30)
    assert fence is not None, "acquire() of a free key returned None"
    with anyio.move_on_after(max(1.0, 10 * short_ttl)) as scope:
        await cache.wait(key, max_wait=short_ttl)
    if scope.cancelled_caught:
        raise AssertionError(f"wait(max_wait={short_ttl}) must return after at most max_wait")
    for wake in ("release", "put"):
        woke = anyio.Event()

        async def waiter(event: anyio.Event = woke) -> None:
            await cache.wait(key, max_wait=30)
            event.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await anyio.sleep(short_ttl / 4)  # let the waiter start waiting
            if wake == "release":
                await cache.release(key, fence)
            else:
                await cache.put(key, _token("contract-token-wake"), fence=fence, ttl=60)
            with anyio.move_on_after(max(1.0, 10 * short_ttl)):
                await woke.wait()
            tg.cancel_scope.cancel()
        if not woke.is_set():
            raise AssertionError(f"a {wake}() must wake wait()-ers of the key, not leave them until max_wait")
        fence = await cache.acquire(key, ttl=30) if wake == "release" else fence
        assert fence is not None, "acquire() after release() returned None"
    await cache.release(key, fence)


_CACHE_CHECKS = (_round_trip, _lease, _fences, _expiry, _wait)


async def check_token_cache(cache_factory: CacheFactory, *, short_ttl: float = 0.2) -> None:
    """Check a :class:`~keyless_m2m.cache.TokenCache` against the protocol the manager relies on.

    ``cache_factory`` returns (or is a coroutine function returning) a cache connected to
    the store; it is called once per step, on fresh random keys, and each cache is closed
    after its step, so a shared server (Redis, memcached) is fine. Steps: a put is read back
    (value, type, scope, expiry); leases are exclusive per key and fenced with growing
    tokens, and ``release`` with a stranger's fence does nothing; a put under an older fence
    than the stored entry's is refused; entries and leases expire with their ``ttl``
    (``short_ttl`` seconds: raise it for a store with coarser expiry); ``wait`` returns at
    once when nobody holds the lease, within ``max_wait``, and on a ``release`` or ``put``.
    Raises ``AssertionError`` naming the first broken rule.
    """
    for step in _CACHE_CHECKS:
        cache = await _open(cache_factory)
        try:
            await step(cache, f"keyless-m2m-contract:{uuid.uuid4().hex}", short_ttl)
        finally:
            await cache.aclose()
