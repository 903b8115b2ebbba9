"""DPoP proofs (RFC 9449): sender-constrained tokens whose proof key can live in a KMS/HSM.

>>> async with TokenManager(url, auth, dpop=True) as tokens:
...     async with httpx.AsyncClient(auth=tokens.auth()) as http:
...         await http.get("https://api.example/v2/pockets/")
<Response [200 OK]>

``dpop=True`` makes an ephemeral P-256 key for the manager (it lives in memory and dies
with the process); ``dpop=<any Signer>`` keeps the proof key where the signer keeps it
(AWS KMS, Cloud KMS, Key Vault, Vault transit, a PEM file), so no one can copy it, and
managers that share the key can share its tokens through a shared cache. Each proof is
one signature: with a KMS key, one KMS round trip per token request and per API request.

A :class:`DPoPKey` makes the proofs (RFC 9449 section 4.2: ``typ: dpop+jwt``, the public
``jwk``, a unique ``jti``, ``htm``, ``htu`` without query and fragment, ``iat``, and
``ath`` and ``nonce`` when they apply) and remembers the nonces servers hand out
(``DPoP-Nonce``, section 8 and 9), one per origin, bounded.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections import OrderedDict
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

from cryptography.hazmat.primitives.asymmetric import ec

from . import _telemetry
from ._jose import b64url, encode_segment, jwk_thumbprint, public_key_members
from ._secret import Secret
from .errors import ConfigurationError
from .signers import Signer
from .signers.local import LocalSigner

__all__ = ["DPoPKey", "access_token_hash", "dpop_key_of", "htu_of", "is_valid_nonce"]

MAX_NONCES: Final = 256  # origins whose nonce is remembered; the oldest is dropped first
MAX_NONCE_LENGTH: Final = 1024
MIN_CLOCK_CORRECTION: Final = 2.0  # seconds, as for client assertions
# RFC 9449 section 8.1: nonce = 1*NQCHAR; NQCHAR = %x21 / %x23-5B / %x5D-7E
_NONCE: Final = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")


def is_valid_nonce(value: object) -> bool:
    """Whether ``value`` is a nonce as RFC 9449 section 8.1 writes them (and not huge)."""
    return isinstance(value, str) and len(value) <= MAX_NONCE_LENGTH and _NONCE.fullmatch(value) is not None


def htu_of(url: str) -> str:
    """The ``htu`` of a request to ``url``: the URL without query and fragment (section 4.2);
    scheme and host lowercased, as RFC 3986 normalisation does."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), parts.path or "/", "", ""))


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}"


def access_token_hash(access_token: str) -> str:
    """``ath``: base64url of the SHA-256 of the access token's ASCII (section 4.2)."""
    return b64url(hashlib.sha256(access_token.encode("ascii")).digest())


class DPoPKey:
    """The proof key of one token manager: a :class:`~keyless_m2m.signers.Signer`.

    ``DPoPKey(signer)`` uses any signer backend; :meth:`generate` makes an ephemeral local
    P-256 key. :meth:`thumbprint` is the RFC 7638 thumbprint (``jkt``) that the server
    binds tokens to; :meth:`proof` makes one proof.
    """

    def __init__(self, signer: Signer) -> None:
        if not isinstance(signer, Signer):
            raise ConfigurationError("dpop= takes True, a Signer or a DPoPKey")
        self.signer = signer
        self._header: str | None = None
        self._jkt: str | None = None
        self._nonces: OrderedDict[str, str] = OrderedDict()
        self.proofs = 0  # proofs signed

    @classmethod
    def generate(cls) -> DPoPKey:
        """An ephemeral P-256 (ES256) key, in this process's memory only."""
        return cls(LocalSigner(ec.generate_private_key(ec.SECP256R1()), name="ephemeral DPoP key"))

    def __repr__(self) -> str:
        return f"DPoPKey({self.signer!r}, jkt={self._jkt!r})"

    @property
    def jkt(self) -> str | None:
        """The thumbprint, once :meth:`thumbprint` has resolved it (``None`` before)."""
        return self._jkt

    async def thumbprint(self) -> str:
        """The RFC 7638 SHA-256 thumbprint of the public key (``cnf.jkt``)."""
        if self._jkt is None:
            description = await self.signer.describe()
            jwk = public_key_members(description.public_jwk)
            self._header = encode_segment({"typ": "dpop+jwt", "alg": description.algorithm, "jwk": jwk})
            self._jkt = jwk_thumbprint(jwk)
        return self._jkt

    def nonce_for(self, url: str) -> str | None:
        """The nonce last handed out by the server at ``url``'s origin."""
        return self._nonces.get(origin_of(url))

    def remember_nonce(self, url: str, nonce: str) -> None:
        """Keep ``nonce`` (already checked with :func:`is_valid_nonce`) for ``url``'s origin."""
        origin = origin_of(url)
        self._nonces[origin] = nonce
        self._nonces.move_to_end(origin)
        while len(self._nonces) > MAX_NONCES:
            self._nonces.popitem(last=False)

    async def proof(
        self,
        method: str,
        url: str,
        *,
        access_token: str | None = None,
        nonce: str | None = None,
        clock_skew: float | None = None,
    ) -> Secret[str]:
        """One proof for a ``method`` request to ``url`` (with ``ath`` when it carries
        ``access_token``; ``nonce`` defaults to the one remembered for the origin).
        ``clock_skew`` (the server's clock minus ours, 2 s or more) corrects ``iat``."""
        await self.thumbprint()
        now = time.time()
        if clock_skew is not None and abs(clock_skew) >= MIN_CLOCK_CORRECTION:
            now += clock_skew
        claims: dict[str, Any] = {
            "jti": secrets.token_urlsafe(24),
            "htm": method.upper(),
            "htu": htu_of(url),
            "iat": int(now),
        }
        nonce = self.nonce_for(url) if nonce is None else nonce
        if nonce is not None:
            claims["nonce"] = nonce
        if access_token is not None:
            claims["ath"] = access_token_hash(access_token)
        signing_input = f"{self._header}.{encode_segment(claims)}".encode("ascii")
        signature = await _telemetry.sign(self.signer, signing_input, "dpop_proof")
        self.proofs += 1
        return Secret(f"{signing_input.decode('ascii')}.{b64url(signature)}")


def dpop_key_of(value: object) -> DPoPKey | None:
    """``dpop=``: ``None``/``False`` (no DPoP), ``True`` (an ephemeral key), a
    :class:`~keyless_m2m.signers.Signer` or a :class:`DPoPKey`."""
    if value is None or value is False:
        return None
    if value is True:
        return DPoPKey.generate()
    if isinstance(value, DPoPKey):
        return value
    if isinstance(value, Signer):
        return DPoPKey(value)
    raise ConfigurationError(f"dpop= takes True, a Signer or a DPoPKey, not a {type(value).__name__}")
