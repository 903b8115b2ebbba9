"""A fake ``hvac.Client`` for Vault's transit engine: ``client.secrets.transit`` with
``read_key`` and ``sign_data`` bound against hvac's real signatures (a misspelt or removed
parameter fails as it would on hvac), answering as Vault does when a parameter is left out
(sha2-256, PSS with the maximum salt, ASN.1 DER in standard base64), so a forgotten
parameter shows up as a signature that does not verify, not only as a missing keyword.

Used by ``tests/unit/signers/test_vault.py`` and ``tests/fuzz/test_fuzz_kms.py``; needs
hvac (the vault extra).
"""

from __future__ import annotations

import base64
import inspect
from typing import Any

import hvac
import hvac.exceptions
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

TOKEN = "hvs.unit-test-token-2f9c81d0"
_HASHES = {"sha2-256": hashes.SHA256(), "sha2-384": hashes.SHA384(), "sha2-512": hashes.SHA512()}
_SIGN_DATA = inspect.signature(hvac.api.secrets_engines.Transit.sign_data)
_READ_KEY = inspect.signature(hvac.api.secrets_engines.Transit.read_key)


def _public_entry(key: Any) -> dict[str, str]:
    public = key.public_key()
    if isinstance(public, ed25519.Ed25519PublicKey):
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {"public_key": base64.b64encode(raw).decode()}
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return {"public_key": pem.decode()}


class FakeTransit:
    """Just enough of hvac's ``client.secrets.transit`` and of Vault's transit semantics."""

    def __init__(self) -> None:
        self.keys: dict[str, dict[str, Any]] = {}
        self.sign_calls: list[dict[str, Any]] = []
        self.read_calls = 0
        self.fail_with: Exception | None = None
        self.response_patch: dict[str, Any] = {}
        self.warnings: list[str] | None = None

    def add(self, name: str, key_type: str, *private_keys: Any, **extra: Any) -> None:
        self.keys[name] = {"type": key_type, "versions": list(private_keys), **extra}

    def read_key(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        bound = _READ_KEY.bind(None, *args, **kwargs).arguments  # the real hvac signature
        self.read_calls += 1
        if self.fail_with is not None:
            raise self.fail_with
        key = self.keys.get(bound["name"])
        if key is None:
            raise hvac.exceptions.InvalidPath(None, method="get", url="/v1/transit/keys/x")
        versions = key["versions"]
        data: dict[str, Any] = {
            "type": key["type"],
            "latest_version": len(versions),
            "min_encryption_version": key.get("min_encryption_version", 0),
            "derived": key.get("derived", False),
            "supports_signing": key["type"]
            in ("rsa-2048", "ecdsa-p256", "ecdsa-p384", "ecdsa-p521", "ed25519"),
        }
        if key["type"].startswith(("rsa", "ecdsa", "ed25519")):
            data["keys"] = {str(i + 1): _public_entry(k) for i, k in enumerate(versions)}
        else:
            data["keys"] = {str(i + 1): 1700000000 for i in range(len(versions))}
        return {"data": data, "warnings": None}

    def sign_data(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        bound = _SIGN_DATA.bind(None, *args, **kwargs).arguments
        bound.pop("self")
        self.sign_calls.append(bound)
        if self.fail_with is not None:
            raise self.fail_with
        key = self.keys[bound["name"]]
        version = bound.get("key_version") or len(key["versions"])
        private = key["versions"][version - 1]
        data = base64.b64decode(bound["hash_input"], validate=True)
        chosen = _HASHES[bound.get("hash_algorithm") or "sha2-256"]  # Vault's default, even for P-384
        jws = bound.get("marshaling_algorithm") == "jws"
        if isinstance(private, rsa.RSAPrivateKey):
            if (bound.get("signature_algorithm") or "pss") == "pss":
                salt = (
                    padding.PSS.DIGEST_LENGTH
                    if bound.get("salt_length") == "hash"
                    else padding.PSS.MAX_LENGTH
                )
                pad: padding.AsymmetricPadding = padding.PSS(padding.MGF1(chosen), salt)
            else:
                pad = padding.PKCS1v15()
            signature = private.sign(data, pad, chosen)
        elif isinstance(private, ec.EllipticCurvePrivateKey):
            signature = private.sign(data, ec.ECDSA(chosen))
            if jws:
                from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

                r, s = decode_dss_signature(signature)
                size = (private.curve.key_size + 7) // 8
                signature = r.to_bytes(size, "big") + s.to_bytes(size, "big")
        else:
            signature = private.sign(data)
        text = base64.urlsafe_b64encode(signature).rstrip(b"=") if jws else base64.b64encode(signature)
        reply = {
            "signature": f"vault:v{version}:{text.decode()}",
            "key_version": version,
            **self.response_patch,
        }
        return {"data": reply, "warnings": self.warnings}


class FakeAdapter:
    def __init__(self) -> None:
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


class FakeSecrets:
    def __init__(self, transit: FakeTransit) -> None:
        self.transit = transit


class FakeClient:
    def __init__(self, token: str | None = TOKEN) -> None:
        self.token = token
        self.secrets = FakeSecrets(FakeTransit())
        self.adapter = FakeAdapter()

    @property
    def transit(self) -> FakeTransit:
        return self.secrets.transit


KEY_FOR_TYPE = {
    "rsa-2048": "rsa",
    "ecdsa-p256": "p256",
    "ecdsa-p384": "p384",
    "ecdsa-p521": "p521",
    "ed25519": "ed25519",
}
