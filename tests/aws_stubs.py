"""AWS KMS answered without AWS: the key and credential constants, ``GetPublicKey`` and
``Sign`` answers made with local keys the way AWS documents them (DIGEST means the message
is the hash, PSS salt = hash length, ECDSA in DER, Ed25519 on RAW messages only), the
``expect_*`` helpers that queue them on a botocore ``Stubber``, and :class:`FakeKms`, a
client with real-AWS semantics for the signer contract.

Used by ``tests/unit/signers/test_aws.py`` and ``tests/fuzz/test_fuzz_kms.py``; needs
only ``cryptography`` (the caller brings boto3 and the ``Stubber``).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, utils

from tests.helpers import make_key

REGION = "eu-west-1"
ACCOUNT = "111122223333"
KEY_UUID = "1234abcd-12ab-34cd-56ef-1234567890ab"
KEY_ARN = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/{KEY_UUID}"
ALIAS = "alias/payments-m2m"
# Look like credentials, so that a leak is caught by the tests that search for them.
ACCESS_KEY_ID = "AKIAKEYLESSM2MLEAKCHK"
SECRET_ACCESS_KEY = "kEyLeSs/M2m+SeCrEt/NeVeR+In/MeSsAgEs00"

KMS_ALG = {
    "RS256": "RSASSA_PKCS1_V1_5_SHA_256",
    "RS384": "RSASSA_PKCS1_V1_5_SHA_384",
    "RS512": "RSASSA_PKCS1_V1_5_SHA_512",
    "PS256": "RSASSA_PSS_SHA_256",
    "PS384": "RSASSA_PSS_SHA_384",
    "PS512": "RSASSA_PSS_SHA_512",
    "ES256": "ECDSA_SHA_256",
    "ES384": "ECDSA_SHA_384",
    "ES512": "ECDSA_SHA_512",
    "EdDSA": "ED25519_SHA_512",
}
RSA_SIGNING = [KMS_ALG[a] for a in ("PS256", "PS384", "PS512", "RS256", "RS384", "RS512")]
SPEC_OF_KIND = {
    "rsa": "RSA_2048",
    "p256": "ECC_NIST_P256",
    "p384": "ECC_NIST_P384",
    "p521": "ECC_NIST_P521",
    "ed25519": "ECC_NIST_EDWARDS25519",
}
SIGNING_OF_KIND = {
    "rsa": RSA_SIGNING,
    "p256": ["ECDSA_SHA_256"],
    "p384": ["ECDSA_SHA_384"],
    "p521": ["ECDSA_SHA_512"],
    "ed25519": ["ED25519_SHA_512", "ED25519_PH_SHA_512"],
}


def kms_client() -> Any:
    """A real boto3 KMS client holding the fake credentials: put a ``Stubber`` (or moto)
    in front of it before it sends anything. Needs the aws extra."""
    import boto3

    return boto3.session.Session().client(
        "kms",
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY_ID,
        aws_secret_access_key=SECRET_ACCESS_KEY,
    )


def spki(key: Any) -> bytes:
    return bytes(
        key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def aws_sign(key: Any, kms_alg: str, message: bytes, message_type: str) -> bytes:
    """Sign as AWS KMS documents it: DIGEST = message is the hash; PSS salt = hash length;
    ECDSA answers DER; Ed25519 (ED25519_SHA_512) signs RAW messages only."""
    if kms_alg == "ED25519_SHA_512":
        assert message_type == "RAW"
        return bytes(key.sign(message))
    hash_alg: hashes.HashAlgorithm = {"256": hashes.SHA256(), "384": hashes.SHA384(), "512": hashes.SHA512()}[
        kms_alg[-3:]
    ]
    if message_type == "DIGEST":
        assert len(message) == hash_alg.digest_size
        algorithm: Any = utils.Prehashed(hash_alg)
    else:
        assert message_type == "RAW"
        assert len(message) <= 4096
        algorithm = hash_alg
    if kms_alg.startswith("ECDSA"):
        return bytes(key.sign(message, ec.ECDSA(algorithm)))
    if kms_alg.startswith("RSASSA_PSS"):
        pss = padding.PSS(mgf=padding.MGF1(hash_alg), salt_length=hash_alg.digest_size)
        return bytes(key.sign(message, pss, algorithm))
    return bytes(key.sign(message, padding.PKCS1v15(), algorithm))


def public_key_response(
    key: Any = None,
    spec: str = "RSA_2048",
    *,
    usage: str = "SIGN_VERIFY",
    signing: list[str] | None = None,
    field: str = "both",
    key_id: str = KEY_ARN,
    der: bytes | None = None,
) -> dict[str, Any]:
    """A GetPublicKey answer shaped like real AWS (both spec fields) or like moto."""
    response: dict[str, Any] = {"KeyId": key_id, "KeyUsage": usage}
    if der is not None:
        response["PublicKey"] = der
    elif key is not None:
        response["PublicKey"] = spki(key)
    if field in ("both", "KeySpec"):
        response["KeySpec"] = spec
    if field in ("both", "CustomerMasterKeySpec"):
        response["CustomerMasterKeySpec"] = spec
    if signing is not None:
        response["SigningAlgorithms"] = signing
    return response


def expect_describe(stub: Any, kind: str, key_id: str = KEY_ARN, **extra: Any) -> None:
    response = public_key_response(make_key(kind), SPEC_OF_KIND[kind], signing=SIGNING_OF_KIND[kind], **extra)
    stub.add_response("get_public_key", response, {"KeyId": key_id})


def expect_sign(
    stub: Any, kind: str, alg: str, message: bytes, message_type: str, key_id: str = KEY_ARN
) -> None:
    kms_alg = KMS_ALG[alg]
    signature = aws_sign(make_key(kind), kms_alg, message, message_type)
    stub.add_response(
        "sign",
        {"KeyId": key_id, "Signature": signature, "SigningAlgorithm": kms_alg},
        {"KeyId": key_id, "Message": message, "MessageType": message_type, "SigningAlgorithm": kms_alg},
    )


class FakeKms:
    """The two KMS calls the signer makes, answered with local keys as real AWS would."""

    def __init__(self, kind: str, key_id: str = KEY_ARN) -> None:
        self.kind = kind
        self.key_id = key_id
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.closed = False
        self._lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        self.delay = 0.0

    def _enter(self, name: str, params: dict[str, Any]) -> None:
        with self._lock:
            self.calls.append((name, params))
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        if self.delay:
            time.sleep(self.delay)

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def get_public_key(self, **params: Any) -> dict[str, Any]:
        self._enter("GetPublicKey", params)
        try:
            kind = self.kind
            return public_key_response(make_key(kind), SPEC_OF_KIND[kind], signing=SIGNING_OF_KIND[kind])
        finally:
            self._leave()

    def sign(self, **params: Any) -> dict[str, Any]:
        self._enter("Sign", params)
        try:
            assert params["SigningAlgorithm"] in SIGNING_OF_KIND[self.kind]
            signature = aws_sign(
                make_key(self.kind), params["SigningAlgorithm"], params["Message"], params["MessageType"]
            )
            return {
                "KeyId": self.key_id,
                "Signature": signature,
                "SigningAlgorithm": params["SigningAlgorithm"],
            }
        finally:
            self._leave()

    def close(self) -> None:
        self.closed = True
