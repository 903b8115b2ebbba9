"""A stand-in for the GCP KMS SDK's sync ``KeyManagementServiceClient``: real proto-plus
messages (``PublicKey``, ``AsymmetricSignResponse`` with CRC32C), a local P-256 key, no
network. Used by ``tests/unit/signers/test_gcp.py`` and ``tests/fuzz/test_fuzz_kms.py``;
the SDK (the gcp extra) is imported when a client answers, not when this module is.
"""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils

NAME = "projects/my-proj/locations/europe-west1/keyRings/m2m/cryptoKeys/assertions/cryptoKeyVersions/3"


class StubClient:
    """``get_public_key`` and ``asymmetric_sign`` as the SDK's client has them. ``errors``:
    exceptions the next ``asymmetric_sign`` calls raise, in order; ``sign_requests`` and
    ``kwargs`` record what the signer sent (requests, and options such as ``retry``)."""

    def __init__(self, private_key: Any, algorithm: str, *, name: str = NAME) -> None:
        self.private_key = private_key
        self.algorithm = algorithm
        self.name = name
        self.errors: list[Exception] = []
        self.sign_requests: list[Any] = []
        self.kwargs: list[dict[str, Any]] = []

    def get_public_key(self, *, request: Any, **kwargs: Any) -> Any:
        import google_crc32c
        from google.cloud import kms_v1

        self.kwargs.append(kwargs)
        pem = self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return kms_v1.PublicKey(
            pem=pem.decode(),
            pem_crc32c=google_crc32c.value(pem),
            name=request.name,
            algorithm=getattr(kms_v1.CryptoKeyVersion.CryptoKeyVersionAlgorithm, self.algorithm),
        )

    def asymmetric_sign(self, *, request: Any, **kwargs: Any) -> Any:
        import google_crc32c
        from google.cloud import kms_v1

        self.kwargs.append(kwargs)
        self.sign_requests.append(request)
        if self.errors:
            raise self.errors.pop(0)
        digest = request.digest.sha256
        signature = self.private_key.sign(digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
        return kms_v1.AsymmetricSignResponse(
            signature=signature,
            signature_crc32c=google_crc32c.value(signature),
            verified_digest_crc32c=True,
            name=self.name,
        )
