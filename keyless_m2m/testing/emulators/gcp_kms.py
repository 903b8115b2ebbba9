"""A fake Google Cloud KMS for tests: real gRPC on 127.0.0.1, real keys, real CRC32Cs.

Google ships no Cloud KMS emulator, so this is a protocol-level fake of the two RPCs a
signer needs, ``google.cloud.kms.v1.KeyManagementService/GetPublicKey`` and
``/AsymmetricSign``, that the *real* SDK clients talk to over a plaintext gRPC channel:

- requests and responses are the SDK's own proto-plus messages (``AsymmetricSignRequest``,
  ``PublicKey``...), serialised as on the wire;
- keys are real (``cryptography``): RSA PKCS#1 v1.5 and PSS (salt = digest length), ECDSA
  P-256/P-384/secp256k1 returning DER, Ed25519 over ``data``; HMAC and RSA decryption keys
  exist so that their refusals can be tested;
- CRC32C integrity as Cloud KMS does it: ``digest_crc32c``/``data_crc32c`` are checked
  (``INVALID_ARGUMENT`` on mismatch) and reported in ``verified_*_crc32c``;
  ``signature_crc32c`` and ``pem_crc32c`` are computed;
- errors as Cloud KMS sends them: ``NOT_FOUND``, ``PERMISSION_DENIED`` (see :meth:`deny`),
  ``FAILED_PRECONDITION`` for a version that is not enabled (see :meth:`set_state`) or a key
  without an asymmetric purpose, ``INVALID_ARGUMENT`` for a wrong digest;
- faults through the test kit's one fault API, :meth:`~FakeCloudKms.fail_next` with
  :class:`RpcFault` (the next calls fail with any gRPC status) and :class:`CorruptResponse`
  (damage a response field: a checksum, the signature, the name) objects, and
  :meth:`~FakeCloudKms.clear_faults`.

The server is gRPC's threaded server, so asyncio and trio tests (and sync code) can all
use it; :meth:`start` and :meth:`stop` are plain calls::

    from keyless_m2m.testing.emulators.gcp_kms import CorruptResponse, FakeCloudKms, RpcFault

    with FakeCloudKms() as kms:          # start() on enter, stop() on exit
        name = kms.add_key("assertions", "EC_SIGN_P256_SHA256")
        signer = kms.signer(name)        # a GcpKmsSigner wired to the fake
        # or build clients yourself: kms.async_client() (inside the asyncio loop) and
        # kms.sync_client() use the SDK's gRPC transports over an insecure channel.
        kms.fail_next(RpcFault("RESOURCE_EXHAUSTED", count=2))
        kms.fail_next(CorruptResponse("signature_crc32c"))

Needs the ``gcp`` extra (google-cloud-kms, google-crc32c).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, utils

from .._faults import warn_deprecated
from ._base import LoopbackServer, import_extra

if TYPE_CHECKING:
    from google.cloud.kms_v1 import KeyManagementServiceAsyncClient, KeyManagementServiceClient

    from ...signers.gcp import GcpKmsSigner

__all__ = ["CorruptResponse", "FakeCloudKms", "FakeKeyVersion", "RpcFault"]

SERVICE = "google.cloud.kms.v1.KeyManagementService"
SIGN = "AsymmetricSign"
GET_PUBLIC_KEY = "GetPublicKey"

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}
_CURVES: dict[str, ec.EllipticCurve] = {
    "EC_SIGN_P256_SHA256": ec.SECP256R1(),
    "EC_SIGN_P384_SHA384": ec.SECP384R1(),
    "EC_SIGN_SECP256K1_SHA256": ec.SECP256K1(),
}
_PERMISSION = {
    SIGN: "cloudkms.cryptoKeyVersions.useToSign",
    GET_PUBLIC_KEY: "cloudkms.cryptoKeyVersions.viewPublicKey",
}
_SIGN_FIELDS = ("signature", "signature_crc32c", "verified_digest_crc32c", "verified_data_crc32c", "name")
_PUBLIC_KEY_FIELDS = ("pem", "pem_crc32c", "name")


def _spec(algorithm: str) -> tuple[str, int, str | None]:
    """(kind, RSA bits, hash) for an algorithm the fake models; ``ValueError`` otherwise."""
    parts = algorithm.split("_")
    if algorithm.startswith(("RSA_SIGN_PKCS1_", "RSA_SIGN_PSS_")) and len(parts) == 5:
        return ("rsa-pss" if parts[2] == "PSS" else "rsa-pkcs1"), int(parts[3]), parts[4].lower()
    if algorithm.startswith("RSA_SIGN_RAW_PKCS1_"):
        return "rsa-raw", int(parts[4]), None
    if algorithm.startswith("RSA_DECRYPT_OAEP_"):
        return "rsa-decrypt", int(parts[3]), None
    if algorithm in _CURVES:
        return "ec", 0, parts[-1].lower()
    if algorithm == "EC_SIGN_ED25519":
        return "ed25519", 0, None
    if algorithm.startswith("HMAC_"):
        return "hmac", 0, parts[1].lower()
    raise ValueError(f"the fake Cloud KMS does not model {algorithm}")


@dataclass
class FakeKeyVersion:
    """One CryptoKeyVersion held by the fake (``private_key`` never leaves the test)."""

    name: str
    algorithm: str
    private_key: Any = field(repr=False)
    state: str = "ENABLED"
    protection_level: str = "SOFTWARE"
    denied: set[str] = field(default_factory=set)

    @property
    def kind(self) -> str:
        return _spec(self.algorithm)[0]

    @property
    def hash_name(self) -> str | None:
        return _spec(self.algorithm)[2]

    def public_pem(self) -> str:
        public = self.private_key.public_key()
        pem: bytes = public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return pem.decode("ascii")


@dataclass(frozen=True)
class RpcFault:
    """The next ``count`` calls (of ``method``, or any; ``count=None``: until cleared) fail
    with gRPC status ``code``, a ``grpc.StatusCode`` or its name (``"RESOURCE_EXHAUSTED"``),
    and ``details`` (default ``"injected CODE"``).

    >>> kms.fail_next(RpcFault("UNAVAILABLE", method="GetPublicKey", count=5))
    """

    code: Any
    method: str | None = None
    details: str | None = None
    count: int | None = 1

    def __post_init__(self) -> None:
        if self.method not in (None, SIGN, GET_PUBLIC_KEY):
            raise ValueError(f"method must be None, {SIGN!r} or {GET_PUBLIC_KEY!r}")

    @property
    def code_name(self) -> str:
        return self.code if isinstance(self.code, str) else str(self.code.name)


@dataclass(frozen=True)
class CorruptResponse:
    """Damage ``field`` in the next ``count`` responses that carry it.

    AsymmetricSign: ``signature`` (a flipped bit, checksum of the original),
    ``signature_crc32c``, ``verified_digest_crc32c`` / ``verified_data_crc32c`` (reported as
    false) and ``name`` (another version). GetPublicKey: ``pem``, ``pem_crc32c``, and
    ``name`` with ``method="GetPublicKey"``. ``method`` defaults to the one that carries
    ``field``.
    """

    field: str
    method: str | None = None
    count: int | None = 1

    def __post_init__(self) -> None:
        if self.method is None:
            method = GET_PUBLIC_KEY if self.field in ("pem", "pem_crc32c") else SIGN
            object.__setattr__(self, "method", method)
        allowed = _SIGN_FIELDS if self.method == SIGN else _PUBLIC_KEY_FIELDS
        if self.method not in (SIGN, GET_PUBLIC_KEY) or self.field not in allowed:
            raise ValueError(f"{self.method} responses have no corruptible field {self.field!r}")


class _Abort(Exception):
    def __init__(self, code: str, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class FakeCloudKms(LoopbackServer):
    """An in-process Cloud KMS double speaking real gRPC on ``127.0.0.1``.

    Key versions live under ``projects/{project}/locations/{location}/keyRings/{key_ring}``.
    :attr:`calls` counts the RPCs received per method and :attr:`requests` keeps the
    decoded requests, so tests can assert what the client sent. :meth:`start` returns the
    fake; :attr:`address` is ``127.0.0.1:PORT`` for ``grpc.insecure_channel``.
    """

    fault_types = (RpcFault, CorruptResponse)

    def __init__(
        self,
        *,
        project: str = "fake-project",
        location: str = "global",
        key_ring: str = "fake-ring",
        max_workers: int = 16,
    ) -> None:
        super().__init__()
        self._kms = import_extra("google.cloud.kms_v1", "gcp")
        self._crc = import_extra("google_crc32c", "gcp")
        self._grpc = import_extra("grpc", "gcp")
        self.key_ring_name = f"projects/{project}/locations/{location}/keyRings/{key_ring}"
        self._max_workers = max_workers
        self._lock = threading.Lock()
        self._keys: dict[str, FakeKeyVersion] = {}
        self.calls: Counter[str] = Counter()
        self.requests: list[tuple[str, Any]] = []
        self._server: Any = None
        self._grace = 1.0

    # -- keys --------------------------------------------------------------------------------

    def add_key(
        self,
        crypto_key: str,
        algorithm: str = "EC_SIGN_P256_SHA256",
        *,
        private_key: Any = None,
        version: int = 1,
        state: str = "ENABLED",
        protection_level: str = "SOFTWARE",
    ) -> str:
        """Create a key version and return its resource name.

        ``algorithm`` is a ``CryptoKeyVersionAlgorithm`` name. ``private_key`` (a
        ``cryptography`` key of the right type and size; bytes for HMAC) defaults to a
        freshly generated one.
        """
        kind, bits, _ = _spec(algorithm)
        key = private_key if private_key is not None else self._generate(algorithm)
        self._check_key(algorithm, kind, bits, key)
        name = f"{self.key_ring_name}/cryptoKeys/{crypto_key}/cryptoKeyVersions/{version}"
        with self._lock:
            self._keys[name] = FakeKeyVersion(name, algorithm, key, state, protection_level)
        return name

    @staticmethod
    def _generate(algorithm: str) -> Any:
        kind, bits, hash_name = _spec(algorithm)
        if kind.startswith("rsa"):
            return rsa.generate_private_key(public_exponent=65537, key_size=bits)
        if kind == "ec":
            return ec.generate_private_key(_CURVES[algorithm])
        if kind == "ed25519":
            return ed25519.Ed25519PrivateKey.generate()
        return os.urandom(hashlib.new(hash_name or "sha256").digest_size)

    @staticmethod
    def _check_key(algorithm: str, kind: str, bits: int, key: Any) -> None:
        if kind.startswith("rsa"):
            ok = isinstance(key, rsa.RSAPrivateKey) and key.key_size == bits
        elif kind == "ec":
            ok = isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == _CURVES[algorithm].name
        elif kind == "ed25519":
            ok = isinstance(key, ed25519.Ed25519PrivateKey)
        else:
            ok = isinstance(key, bytes) and len(key) > 0
        if not ok:
            raise ValueError(f"private_key does not fit {algorithm}")

    def key_version(self, name: str) -> FakeKeyVersion:
        """The fake's record of a key version (``KeyError`` if unknown)."""
        with self._lock:
            return self._keys[name]

    def public_key(self, name: str) -> Any:
        """The ``cryptography`` public key of a version, for independent verification."""
        return self.key_version(name).private_key.public_key()

    def set_state(self, name: str, state: str) -> None:
        """``ENABLED``, ``DISABLED``, ``DESTROYED``, ``DESTROY_SCHEDULED``, ``PENDING_GENERATION``..."""
        with self._lock:
            self._keys[name].state = state

    def deny(self, name: str, *permissions: str) -> None:
        """Make calls on ``name`` fail with ``PERMISSION_DENIED``.

        ``permissions`` default to both ``cloudkms.cryptoKeyVersions.useToSign`` and
        ``cloudkms.cryptoKeyVersions.viewPublicKey``.
        """
        with self._lock:
            self._keys[name].denied.update(permissions or _PERMISSION.values())

    def allow(self, name: str) -> None:
        """Undo :meth:`deny`."""
        with self._lock:
            self._keys[name].denied.clear()

    # -- faults ------------------------------------------------------------------------------

    def fail_next(self, *faults: Any, **legacy: Any) -> None:
        """Queue :class:`RpcFault` and :class:`CorruptResponse` objects.

        The spelling ``fail_next(code, times=1, *, method=None, details=None)`` still works,
        with a ``DeprecationWarning``.
        """
        if legacy or (faults and not isinstance(faults[0], self.fault_types)):
            warn_deprecated(
                "FakeCloudKms.fail_next(code, times, method=...)", "fail_next(RpcFault(code, count=...))"
            )
            faults = (_legacy_rpc_fault(*faults, **legacy),)
        for fault in faults:
            if isinstance(fault, RpcFault):
                self._grpc.StatusCode[fault.code_name]  # reject unknown names now, not inside the server
        super().fail_next(*faults)

    def corrupt_next(self, field_name: str, times: int = 1, *, method: str | None = None) -> None:
        """Deprecated spelling of ``fail_next(CorruptResponse(field_name, method, count=times))``."""
        warn_deprecated(
            "FakeCloudKms.corrupt_next(field, times)", "fail_next(CorruptResponse(field, count=...))"
        )
        self.fail_next(CorruptResponse(field_name, method, times))

    def reset_faults(self) -> None:
        """Deprecated spelling of :meth:`clear_faults`."""
        warn_deprecated("FakeCloudKms.reset_faults()", "clear_faults()")
        self.clear_faults()

    # -- server ------------------------------------------------------------------------------

    def _serve(self) -> int:
        grpc = self._grpc
        kms = self._kms
        handlers = {
            SIGN: grpc.unary_unary_rpc_method_handler(
                partial(self._handle, SIGN),
                request_deserializer=kms.AsymmetricSignRequest.deserialize,
                response_serializer=kms.AsymmetricSignResponse.serialize,
            ),
            GET_PUBLIC_KEY: grpc.unary_unary_rpc_method_handler(
                partial(self._handle, GET_PUBLIC_KEY),
                request_deserializer=kms.GetPublicKeyRequest.deserialize,
                response_serializer=kms.PublicKey.serialize,
            ),
        }
        server = grpc.server(
            ThreadPoolExecutor(max_workers=self._max_workers, thread_name_prefix="fake-cloud-kms"),
            handlers=[grpc.method_handlers_generic_handler(SERVICE, handlers)],
        )
        port = int(server.add_insecure_port(f"{self.host}:0"))
        if not port:
            raise RuntimeError("the fake Cloud KMS could not bind a loopback port")
        server.start()
        self._server = server
        return port

    def stop(self, grace: float = 1.0) -> None:
        """Stop serving (in-flight calls get ``grace`` seconds); waits at most ``grace + 5`` s."""
        self._grace = grace
        super().stop()

    def _shutdown(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop(self._grace).wait(timeout=self._grace + 5)

    def __repr__(self) -> str:
        address = self.address if self.running else None
        return f"FakeCloudKms(address={address!r}, keys={len(self._keys)})"

    # -- clients -----------------------------------------------------------------------------

    def async_client(self) -> KeyManagementServiceAsyncClient:
        """A real ``KeyManagementServiceAsyncClient`` on a ``grpc.aio`` channel to the fake.

        Call it inside the running asyncio loop (the channel belongs to that loop).
        """
        transports = import_extra("google.cloud.kms_v1.services.key_management_service.transports", "gcp")
        channel = self._grpc.aio.insecure_channel(self.address)
        transport = transports.KeyManagementServiceGrpcAsyncIOTransport(channel=channel)
        client: KeyManagementServiceAsyncClient = self._kms.KeyManagementServiceAsyncClient(
            transport=transport
        )
        return client

    def sync_client(self) -> KeyManagementServiceClient:
        """A real ``KeyManagementServiceClient`` on an insecure gRPC channel to the fake."""
        transports = import_extra("google.cloud.kms_v1.services.key_management_service.transports", "gcp")
        channel = self._grpc.insecure_channel(self.address)
        transport = transports.KeyManagementServiceGrpcTransport(channel=channel)
        client: KeyManagementServiceClient = self._kms.KeyManagementServiceClient(transport=transport)
        return client

    def signer(self, name: str, **options: Any) -> GcpKmsSigner:
        """A :class:`~keyless_m2m.signers.GcpKmsSigner` for ``name`` using clients to the fake
        (the async client on asyncio, the sync one in threads on trio)."""
        from ...signers.gcp import GcpKmsSigner

        return GcpKmsSigner(
            name,
            async_client_factory=self.async_client,
            sync_client_factory=self.sync_client,
            **options,
        )

    # -- RPCs --------------------------------------------------------------------------------

    def _handle(self, method: str, request: Any, context: Any) -> Any:
        with self._lock:
            self.calls[method] += 1
            self.requests.append((method, request))
        try:
            failure = self._take_failure(method)
            if failure is not None:
                raise _Abort(*failure)
            key = self._authorize(method, request.name)
            if method == SIGN:
                return self._sign(key, request)
            return self._public_key(key)
        except _Abort as abort:
            context.abort(self._grpc.StatusCode[abort.code], abort.details)
            raise AssertionError("unreachable: context.abort raises") from None

    def _take_failure(self, method: str) -> tuple[str, str] | None:
        fault = self._faults.take(lambda f: isinstance(f, RpcFault) and f.method in (None, method))
        if fault is None:
            return None
        return fault.code_name, fault.details or f"injected {fault.code_name}"

    def _corrupt(self, method: str, field_name: str) -> bool:
        corruption = self._faults.take(
            lambda f: isinstance(f, CorruptResponse) and (f.method, f.field) == (method, field_name)
        )
        return corruption is not None

    def _authorize(self, method: str, name: str) -> FakeKeyVersion:
        with self._lock:
            key = self._keys.get(name)
        permission = _PERMISSION[method]
        if key is None:
            raise _Abort("NOT_FOUND", f"{name} not found.")
        if permission in key.denied:
            raise _Abort(
                "PERMISSION_DENIED",
                f"Permission '{permission}' denied on resource '{name}' (or it may not exist).",
            )
        if key.kind == "hmac":
            raise _Abort("FAILED_PRECONDITION", f"{name} does not have an asymmetric purpose.")
        if method == SIGN and key.kind == "rsa-decrypt":
            raise _Abort("FAILED_PRECONDITION", f"{name} does not have purpose ASYMMETRIC_SIGN.")
        if key.state != "ENABLED":
            raise _Abort("FAILED_PRECONDITION", f"{name} is not enabled, current state is: {key.state}.")
        return key

    def _crc32c(self, data: bytes) -> int:
        return int(self._crc.value(data))

    def _public_key(self, key: FakeKeyVersion) -> Any:
        kms = self._kms
        pem = key.public_pem()
        crc = self._crc32c(pem.encode("ascii"))
        name = key.name
        if self._corrupt(GET_PUBLIC_KEY, "pem"):
            lines = pem.splitlines(keepends=True)
            body = lines[1]
            lines[1] = ("B" if body[0] != "B" else "C") + body[1:]
            pem = "".join(lines)
        if self._corrupt(GET_PUBLIC_KEY, "pem_crc32c"):
            crc ^= 1
        if self._corrupt(GET_PUBLIC_KEY, "name"):
            name = _other_version(name)
        return kms.PublicKey(
            pem=pem,
            algorithm=kms.CryptoKeyVersion.CryptoKeyVersionAlgorithm[key.algorithm],
            pem_crc32c=crc,
            name=name,
            protection_level=kms.ProtectionLevel[key.protection_level],
        )

    def _sign(self, key: FakeKeyVersion, request: Any) -> Any:
        kms = self._kms
        pb = type(request).pb(request)
        has_digest = pb.HasField("digest")
        has_data = bool(request.data)
        if has_digest and has_data:
            raise _Abort("INVALID_ARGUMENT", "Only one of digest or data may be set.")
        if key.kind == "rsa-raw":
            raise _Abort("INVALID_ARGUMENT", "The fake Cloud KMS does not sign with RSA_SIGN_RAW_PKCS1 keys.")
        verified_digest = verified_data = False
        if has_digest:
            if key.kind == "ed25519":
                raise _Abort("INVALID_ARGUMENT", f"{key.algorithm} keys sign data, not a digest.")
            which = type(request.digest).pb(request.digest).WhichOneof("digest")
            if which != key.hash_name:
                raise _Abort(
                    "INVALID_ARGUMENT",
                    f"The digest type {which} does not match the algorithm {key.algorithm}.",
                )
            digest = bytes(getattr(request.digest, which))
            if len(digest) != hashlib.new(which).digest_size:
                raise _Abort("INVALID_ARGUMENT", f"The {which} digest has the wrong length.")
            if request.digest_crc32c is not None:
                if self._crc32c(digest) != request.digest_crc32c:
                    raise _Abort(
                        "INVALID_ARGUMENT",
                        "The checksum in field digest_crc32c did not match the data in field digest.",
                    )
                verified_digest = True
            signature = self._sign_digest(key, digest)
        elif has_data:
            data = bytes(request.data)
            if len(data) > 64 * 1024:
                raise _Abort("INVALID_ARGUMENT", "data is larger than 64 KiB.")
            if request.data_crc32c is not None:
                if self._crc32c(data) != request.data_crc32c:
                    raise _Abort(
                        "INVALID_ARGUMENT",
                        "The checksum in field data_crc32c did not match the data in field data.",
                    )
                verified_data = True
            if key.kind == "ed25519":
                signature = key.private_key.sign(data)
            else:
                signature = self._sign_digest(key, hashlib.new(key.hash_name or "sha256", data).digest())
        else:
            raise _Abort("INVALID_ARGUMENT", "One of digest or data must be set.")

        crc = self._crc32c(signature)
        name = key.name
        if self._corrupt(SIGN, "signature"):
            signature = signature[:-1] + bytes([signature[-1] ^ 1])
        if self._corrupt(SIGN, "signature_crc32c"):
            crc ^= 1
        if self._corrupt(SIGN, "verified_digest_crc32c"):
            verified_digest = False
        if self._corrupt(SIGN, "verified_data_crc32c"):
            verified_data = False
        if self._corrupt(SIGN, "name"):
            name = _other_version(name)
        return kms.AsymmetricSignResponse(
            signature=signature,
            signature_crc32c=crc,
            verified_digest_crc32c=verified_digest,
            verified_data_crc32c=verified_data,
            name=name,
            protection_level=kms.ProtectionLevel[key.protection_level],
        )

    @staticmethod
    def _sign_digest(key: FakeKeyVersion, digest: bytes) -> bytes:
        hash_cls = _HASHES[key.hash_name or "sha256"]
        prehashed = utils.Prehashed(hash_cls())
        private = key.private_key
        if key.kind == "rsa-pss":
            pss = padding.PSS(mgf=padding.MGF1(hash_cls()), salt_length=padding.PSS.DIGEST_LENGTH)
            signature: bytes = private.sign(digest, pss, prehashed)
        elif key.kind == "rsa-pkcs1":
            signature = private.sign(digest, padding.PKCS1v15(), prehashed)
        else:
            signature = private.sign(digest, ec.ECDSA(prehashed))
        return signature


def _legacy_rpc_fault(
    code: Any, times: int = 1, *, method: str | None = None, details: str | None = None
) -> RpcFault:
    return RpcFault(code, method, details, times)


def _other_version(name: str) -> str:
    head, _, number = name.rpartition("/")
    return f"{head}/{int(number) + 1}"
