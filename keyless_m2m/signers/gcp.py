"""A signer whose private key stays in Google Cloud KMS (software, HSM or external keys).

    >>> from keyless_m2m.signers import GcpKmsSigner, signer_from_uri
    >>> signer = GcpKmsSigner(
    ...     "projects/p/locations/europe-west1/keyRings/m2m/cryptoKeys/assertions/cryptoKeyVersions/1"
    ... )
    >>> signer = signer_from_uri("gcpkms://projects/p/locations/global/keyRings/r/cryptoKeys/k"
    ...                          "/cryptoKeyVersions/1")

Cloud KMS fixes the algorithm per key, so the JWS ``alg`` is read from ``GetPublicKey``:
RSA_SIGN_PKCS1_*_SHA256 -> RS256, RSA_SIGN_PKCS1_4096_SHA512 -> RS512,
RSA_SIGN_PSS_*_SHA256 -> PS256, RSA_SIGN_PSS_4096_SHA512 -> PS512,
EC_SIGN_P256_SHA256 -> ES256, EC_SIGN_P384_SHA384 -> ES384, EC_SIGN_ED25519 -> EdDSA.

On asyncio the SDK's ``grpc.aio`` client is used, created lazily inside the running loop
(a ``grpc.aio`` channel belongs to the loop that made it). trio cannot drive ``grpc.aio``,
so there the synchronous client runs in worker threads (a cancelled caller is released at
once, even while such a call hangs). Every request and response carries CRC32C checksums,
which are checked as Google's integrity guide asks.

One RPC per ``sign()``/``describe()``, with the SDK's retry off (``retry=None``) and a
``timeout``: a checksum mismatch, ``RESOURCE_EXHAUSTED``, ``UNAVAILABLE``,
``DEADLINE_EXCEEDED`` and ``INTERNAL`` are a retryable ``SigningError``, which the token
endpoint, the one layer that retries, tries again within its attempts and deadline.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Final

import anyio
from anyio.lowlevel import RunVar

from .._jose import Algorithm, der_to_raw, jws_algorithm, key_family, load_public_pem
from ..errors import ConfigurationError, KeylessM2MError, SigningError
from ._base import (
    CachedDescriptionSigner,
    KeyDescription,
    OnceCell,
    ProviderErrors,
    call_provider,
    check_max_concurrency,
    ensure_kid,
    import_extra,
    refuse_uri_credentials,
    renamed_keyword,
    run_blocking,
    running_async_library,
)

if TYPE_CHECKING:
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import Credentials
    from google.cloud.kms_v1 import KeyManagementServiceAsyncClient, KeyManagementServiceClient

__all__ = ["GCP_TO_JWS", "GcpKmsSigner", "jws_algorithm_for", "parse_key_version_name"]

URI_SCHEME: Final = "gcpkms"

_SEGMENT = r"[^/\s?#]+"
_CRYPTO_KEY = rf"projects/{_SEGMENT}/locations/{_SEGMENT}/keyRings/{_SEGMENT}/cryptoKeys/{_SEGMENT}"
_KEY_VERSION_RE = re.compile(rf"{_CRYPTO_KEY}/cryptoKeyVersions/[1-9][0-9]*")
_CRYPTO_KEY_RE = re.compile(rf"{_CRYPTO_KEY}(?:/cryptoKeyVersions/?)?")

#: Cloud KMS algorithm -> JWS alg (RFC 7518, RFC 8037).
GCP_TO_JWS: Final[Mapping[str, str]] = {
    "RSA_SIGN_PKCS1_2048_SHA256": "RS256",
    "RSA_SIGN_PKCS1_3072_SHA256": "RS256",
    "RSA_SIGN_PKCS1_4096_SHA256": "RS256",
    "RSA_SIGN_PKCS1_4096_SHA512": "RS512",
    "RSA_SIGN_PSS_2048_SHA256": "PS256",
    "RSA_SIGN_PSS_3072_SHA256": "PS256",
    "RSA_SIGN_PSS_4096_SHA256": "PS256",
    "RSA_SIGN_PSS_4096_SHA512": "PS512",
    "EC_SIGN_P256_SHA256": "ES256",
    "EC_SIGN_P384_SHA384": "ES384",
    "EC_SIGN_ED25519": "EdDSA",
}

# Why the other algorithms cannot sign a client assertion (checked by prefix, in order).
_UNSUPPORTED: Final[tuple[tuple[str, str], ...]] = (
    ("EC_SIGN_SECP256K1", "secp256k1 (ES256K, RFC 8812) is not a JWS algorithm OAuth servers accept"),
    (
        "RSA_SIGN_RAW_PKCS1",
        "raw PKCS#1 keys sign a caller-built DigestInfo; create an RSA_SIGN_PKCS1_*_SHA256 key instead",
    ),
    ("PQ_SIGN", "post-quantum signatures (ML-DSA, SLH-DSA) have no registered JWS algorithm yet"),
    ("HMAC", "HMAC keys are symmetric MAC keys; private_key_jwt needs an asymmetric signing key"),
    ("RSA_DECRYPT", "the key is an asymmetric decryption key, not a signing key"),
    ("ML_KEM", "the key is a key-encapsulation key, not a signing key"),
    ("KEM_", "the key is a key-encapsulation key, not a signing key"),
    ("CRYPTO_KEY_VERSION_ALGORITHM_UNSPECIFIED", "Cloud KMS reported no algorithm for the key version"),
)
_SYMMETRIC = "the key is a symmetric encryption key, not an asymmetric signing key"

_ERRORS: Final = ProviderErrors(
    retryable=frozenset({"RESOURCE_EXHAUSTED", "UNAVAILABLE", "DEADLINE_EXCEEDED", "INTERNAL"}),
    hints={
        "PERMISSION_DENIED": (
            "the caller lacks roles/cloudkms.signerVerifier (cloudkms.cryptoKeyVersions.useToSign and "
            "viewPublicKey) on the key, or the key does not exist"
        ),
        "NOT_FOUND": "no such key version",
        "FAILED_PRECONDITION": (
            "the key version is not enabled (disabled, destroyed or pending), or the key is not an "
            "asymmetric signing key"
        ),
        "UNAUTHENTICATED": "the Google credentials were rejected",
        "INVALID_ARGUMENT": "Cloud KMS rejected the request",
        "RESOURCE_EXHAUSTED": "Cloud KMS request quota exceeded",
        "UNAVAILABLE": "Cloud KMS is unavailable",
        "DEADLINE_EXCEEDED": "the call timed out",
        "INTERNAL": "Cloud KMS internal error",
    },
)

_PERMISSIONS = {"AsymmetricSign": "useToSign", "GetPublicKey": "viewPublicKey"}

# One marker object per running event loop: a grpc.aio client is only usable on the loop
# that created it, and a RunVar is anyio's public way to hold per-loop state.
_LOOP_MARKER: RunVar[object] = RunVar("keyless_m2m.signers.gcp.loop_marker")


def _loop_marker() -> object:
    marker = _LOOP_MARKER.get(None)
    if marker is None:
        marker = object()
        _LOOP_MARKER.set(marker)
    return marker


def _running_library() -> str:
    """``"asyncio"`` or ``"trio"`` (``"asyncio"`` outside a loop: the sync client path is
    only taken when trio is known to be running)."""
    return running_async_library() or "asyncio"


def parse_key_version_name(name: str) -> str:
    """Check a CryptoKeyVersion resource name, or explain what is wrong with it.

    >>> parse_key_version_name("projects/p/locations/global/keyRings/r/cryptoKeys/k/cryptoKeyVersions/3")
    'projects/p/locations/global/keyRings/r/cryptoKeys/k/cryptoKeyVersions/3'
    """
    if not isinstance(name, str) or not name.strip():
        raise ConfigurationError("the Cloud KMS key version name must be a non-empty string")
    candidate = name.strip()
    if _KEY_VERSION_RE.fullmatch(candidate):
        return candidate
    if _CRYPTO_KEY_RE.fullmatch(candidate):
        raise ConfigurationError(
            f"{candidate!r} names a CryptoKey, not a key version: Cloud KMS signs with one version, "
            "so append /cryptoKeyVersions/N (pinning the version also pins the kid)"
        )
    raise ConfigurationError(
        f"{candidate!r} is not a Cloud KMS key version name; expected "
        "projects/P/locations/L/keyRings/R/cryptoKeys/K/cryptoKeyVersions/N"
    )


def jws_algorithm_for(gcp_algorithm: str) -> str:
    """The JWS ``alg`` for a Cloud KMS ``CryptoKeyVersionAlgorithm`` name.

    >>> jws_algorithm_for("EC_SIGN_P256_SHA256")
    'ES256'

    Raises :class:`~keyless_m2m.ConfigurationError` saying why for every other algorithm.
    """
    alg = GCP_TO_JWS.get(gcp_algorithm)
    if alg is not None:
        return alg
    reason = next((why for prefix, why in _UNSUPPORTED if gcp_algorithm.startswith(prefix)), None)
    if reason is None:
        symmetric = "ENCRYPTION" in gcp_algorithm or gcp_algorithm.startswith("AES_")
        reason = _SYMMETRIC if symmetric else "keyless-m2m knows no JWS algorithm for it"
    raise ConfigurationError(f"Cloud KMS algorithm {gcp_algorithm} cannot sign a JWS: {reason}")


def _crc32c(data: bytes) -> int:
    import google_crc32c

    return int(google_crc32c.value(data))


@dataclass(slots=True)
class _LoopState:
    """Per event loop: a thread limiter and the async client (made once)."""

    marker: object
    limiter: anyio.CapacityLimiter | None = None
    async_client: OnceCell[KeyManagementServiceAsyncClient] = field(default_factory=OnceCell)


class _IntegrityError(Exception):
    """A response failed its checksum or name check (data damaged in transit)."""


class GcpKmsSigner(CachedDescriptionSigner):
    """Signs inside Google Cloud KMS with one CryptoKeyVersion.

    >>> signer = GcpKmsSigner("projects/p/locations/global/keyRings/r/cryptoKeys/k/cryptoKeyVersions/1",
    ...                       credentials=my_credentials)

    Clients, least surprising first:

    - nothing: Application Default Credentials; ``credentials=`` and ``client_options=``
      (a ``google.api_core.client_options.ClientOptions`` or dict: ``api_endpoint``,
      ``quota_project_id``...) are passed to the clients the signer creates.
    - ``client=``: a ready ``KeyManagementServiceAsyncClient`` (asyncio only, on the loop
      that made it) or ``KeyManagementServiceClient`` (any backend, called in worker threads).
      The signer never closes a client it was given.
    - ``async_client_factory=`` / ``sync_client_factory=``: zero-argument callables making a
      client, e.g. one with a custom transport or channel. The async factory is called inside
      the running asyncio loop; the sync one in a worker thread. On asyncio the async factory
      wins; with only a sync factory the sync client is used on both backends. On trio a sync
      client is required. Clients made this way are closed by :meth:`aclose`.

    ``algorithm`` is optional: Cloud KMS fixes it per key, and a requested one that differs
    is a :class:`~keyless_m2m.ConfigurationError`. ``key_id`` defaults to the RFC 7638
    thumbprint. ``timeout`` bounds each RPC. The signer makes one RPC per call and never
    retries (the token endpoint does). ``max_concurrency`` caps concurrent worker threads
    (``max_threads=`` is its deprecated name).
    """

    def __init__(
        self,
        key_version_name: str,
        *,
        client: KeyManagementServiceAsyncClient | KeyManagementServiceClient | None = None,
        algorithm: str | None = None,
        key_id: str | None = None,
        credentials: Credentials | None = None,
        client_options: ClientOptions | Mapping[str, Any] | None = None,
        async_client_factory: Callable[[], KeyManagementServiceAsyncClient] | None = None,
        sync_client_factory: Callable[[], KeyManagementServiceClient] | None = None,
        timeout: float = 10.0,
        max_concurrency: int | None = None,
        max_threads: int | None = None,
    ) -> None:
        self._name = parse_key_version_name(key_version_name)
        self._kms = import_extra("google.cloud.kms_v1", "gcp")
        import_extra("google_crc32c", "gcp")
        if algorithm is not None:
            jws_algorithm(algorithm)
        self._requested_alg = algorithm
        self._key_id = ensure_kid(key_id)

        factories = async_client_factory is not None or sync_client_factory is not None
        if client is not None and (factories or credentials is not None or client_options is not None):
            raise ConfigurationError(
                "pass either client= or the options to build clients (credentials=, client_options=, "
                "*_client_factory=), not both"
            )
        if factories and (credentials is not None or client_options is not None):
            raise ConfigurationError(
                "credentials= and client_options= configure the default clients; a client factory "
                "builds its own"
            )
        for label, factory in (("async", async_client_factory), ("sync", sync_client_factory)):
            if factory is not None and not callable(factory):
                raise ConfigurationError(f"{label}_client_factory must be a zero-argument callable")
        self._client_is_async = False
        if client is not None:
            sign_method = getattr(client, "asymmetric_sign", None)
            if sign_method is None or not hasattr(client, "get_public_key"):
                raise ConfigurationError("client must be a Cloud KMS KeyManagementService(Async)Client")
            self._client_is_async = inspect.iscoroutinefunction(sign_method)
        self._client = client
        self._credentials = credentials
        self._client_options = client_options
        self._async_factory = async_client_factory
        self._sync_factory = sync_client_factory
        self._sync_client: OnceCell[KeyManagementServiceClient] = OnceCell()

        if not (timeout > 0):
            raise ConfigurationError("timeout must be a positive number of seconds")
        concurrency = renamed_keyword(
            "max_concurrency", max_concurrency, "max_threads", max_threads, owner="GcpKmsSigner"
        )
        self.timeout = float(timeout)
        self._max_concurrency = check_max_concurrency(16 if concurrency is None else concurrency)
        self._loop: _LoopState | None = None

    @property
    def key_name(self) -> str:
        return self._name

    @classmethod
    def from_uri(cls, uri: str, **options: Any) -> GcpKmsSigner:
        """``gcpkms://projects/P/locations/L/keyRings/R/cryptoKeys/K/cryptoKeyVersions/N``.

        ``options`` are the constructor's keyword arguments.
        """
        if not isinstance(uri, str):
            raise ConfigurationError("a Cloud KMS signer URI must be a string")
        scheme, sep, rest = uri.partition("://")
        if not sep or scheme.lower() != URI_SCHEME:
            raise ConfigurationError(
                "a Cloud KMS signer URI looks like "
                "gcpkms://projects/P/locations/L/keyRings/R/cryptoKeys/K/cryptoKeyVersions/N"
            )
        refuse_uri_credentials(uri, "gcpkms URIs")
        return cls(rest.lstrip("/"), **options)

    # -- clients ---------------------------------------------------------------------------

    def _state(self) -> _LoopState:
        marker = _loop_marker()
        state = self._loop
        if state is None or state.marker is not marker:
            # A new loop (or the first one): the previous loop's async client cannot be
            # used or closed from here; it goes with that loop.
            state = self._loop = _LoopState(marker)
        return state

    def _limiter(self, state: _LoopState) -> anyio.CapacityLimiter:
        if state.limiter is None:
            state.limiter = anyio.CapacityLimiter(self._max_concurrency)
        return state.limiter

    def _use_async_client(self) -> bool:
        if self._client is not None:
            if self._client_is_async and _running_library() != "asyncio":
                raise ConfigurationError(
                    f"key {self._name}: a KeyManagementServiceAsyncClient needs asyncio; on "
                    f"{_running_library()} pass a KeyManagementServiceClient (it runs in worker threads)"
                )
            return self._client_is_async
        if _running_library() == "asyncio":
            return self._async_factory is not None or self._sync_factory is None
        if self._sync_factory is None and self._async_factory is not None:
            raise ConfigurationError(
                f"key {self._name}: async_client_factory only works on asyncio; pass "
                "sync_client_factory too for trio"
            )
        return False

    async def _get_async_client(self, state: _LoopState) -> KeyManagementServiceAsyncClient:
        if self._client is not None:
            return self._client  # type: ignore[return-value]
        return await state.async_client.get_or_init(partial(self._new_async_client, state))

    async def _new_async_client(self, state: _LoopState) -> KeyManagementServiceAsyncClient:
        if self._async_factory is not None:
            return self._async_factory()
        credentials = self._credentials
        if credentials is None:
            # Application Default Credentials may read files or ask the metadata server:
            # resolve them off the event loop, then build the grpc.aio client on it.
            credentials = await self._off_loop(state, self._default_credentials)
        client: KeyManagementServiceAsyncClient = self._kms.KeyManagementServiceAsyncClient(
            credentials=credentials, client_options=self._client_options
        )
        return client

    def _default_credentials(self) -> Credentials | None:
        from google.api_core import client_options as client_options_lib

        options = self._client_options
        if options is None:
            options = client_options_lib.ClientOptions()
        elif isinstance(options, Mapping):
            options = client_options_lib.from_dict(options)
        if options.credentials_file or options.api_key:
            return None  # the SDK loads those itself
        import google.auth

        transports = import_extra("google.cloud.kms_v1.services.key_management_service.transports", "gcp")
        credentials, _ = google.auth.default(
            scopes=options.scopes,
            default_scopes=transports.KeyManagementServiceGrpcAsyncIOTransport.AUTH_SCOPES,
            quota_project_id=options.quota_project_id,
        )
        result: Credentials = credentials
        return result

    async def _get_sync_client(self, state: _LoopState) -> KeyManagementServiceClient:
        if self._client is not None:
            return self._client  # type: ignore[return-value]
        client: KeyManagementServiceClient = await self._sync_client.get_or_init(
            partial(self._off_loop, state, self._new_sync_client)
        )
        return client

    def _new_sync_client(self) -> KeyManagementServiceClient:
        if self._sync_factory is not None:
            return self._sync_factory()
        client: KeyManagementServiceClient = self._kms.KeyManagementServiceClient(
            credentials=self._credentials, client_options=self._client_options
        )
        return client

    async def _off_loop(self, state: _LoopState, func: Callable[[], Any]) -> Any:
        return await call_provider(
            partial(run_blocking, func, self._limiter(state)), self._client_setup_error
        )

    def _client_setup_error(self, exc: Exception) -> KeylessM2MError:
        from google.auth import exceptions as auth_exceptions

        if isinstance(exc, auth_exceptions.DefaultCredentialsError):
            return ConfigurationError(
                f"key {self._name}: no Google credentials found; set up Application Default "
                "Credentials (workload identity, an attached service account, `gcloud auth "
                "application-default login`) or pass credentials="
            )
        return SigningError(
            f"key {self._name}: could not create the Cloud KMS client ({type(exc).__name__})",
            key=self._name,
        )

    async def _rpc(self, rpc: str, request: Any) -> Any:
        """One call, with the SDK's own retry disabled: the token endpoint owns the retries."""
        return await call_provider(partial(self._rpc_now, rpc, request), partial(self._rpc_error, rpc))

    async def _rpc_now(self, rpc: str, request: Any) -> Any:
        state = self._state()
        if self._use_async_client():
            async_client = await self._get_async_client(state)
            method: Callable[..., Awaitable[Any]] = (
                async_client.asymmetric_sign if rpc == "AsymmetricSign" else async_client.get_public_key
            )
            return await method(request=request, retry=None, timeout=self.timeout)
        sync_client = await self._get_sync_client(state)
        call = sync_client.asymmetric_sign if rpc == "AsymmetricSign" else sync_client.get_public_key
        return await run_blocking(
            partial(call, request=request, retry=None, timeout=self.timeout), self._limiter(state)
        )

    def _rpc_error(self, rpc: str, exc: Exception) -> KeylessM2MError:
        """Our error for a provider failure: the key, the gRPC code and our own hint.

        The provider's message is left out (and the exception unchained): a credentials
        refresh failure can carry token-endpoint responses.
        """
        from google.api_core import exceptions as core_exceptions
        from google.auth import exceptions as auth_exceptions

        if isinstance(exc, core_exceptions.GoogleAPICallError):
            status = exc.grpc_status_code
            code = status.name if status is not None else f"HTTP_{exc.code}"
        elif isinstance(exc, auth_exceptions.DefaultCredentialsError):
            return self._client_setup_error(exc)
        elif isinstance(exc, auth_exceptions.RefreshError):
            return SigningError(
                f"Cloud KMS {rpc} on {self._name} failed: the Google credentials could not be refreshed",
                retryable=bool(getattr(exc, "retryable", False)),
                key=self._name,
                code="UNAUTHENTICATED",
            )
        else:
            return SigningError(
                f"Cloud KMS {rpc} on {self._name} failed ({type(exc).__name__})",
                retryable=False,
                key=self._name,
            )
        hint = None
        if code == "PERMISSION_DENIED":
            hint = (
                f"the caller lacks cloudkms.cryptoKeyVersions.{_PERMISSIONS[rpc]} on the key "
                "(grant roles/cloudkms.signerVerifier), or the key does not exist"
            )
        return _ERRORS.error(f"Cloud KMS {rpc} on {self._name} failed", code, key=self._name, hint=hint)

    async def _call(self, rpc: str, request: Any, check: Callable[[Any], None]) -> Any:
        """One ``_rpc`` whose response passes ``check``; a response that fails it is a
        retryable error (data damaged in transit: the token endpoint's next try may pass)."""
        response = await self._rpc(rpc, request)
        try:
            check(response)
        except _IntegrityError as problem:
            raise SigningError(
                f"Cloud KMS {rpc} on {self._name}: {problem} (data damaged in transit)",
                retryable=True,
                key=self._name,
                code="INTEGRITY_CHECK_FAILED",
            ) from None
        return response

    # -- describe / sign -------------------------------------------------------------------

    async def _load_description(self) -> KeyDescription:
        request = self._kms.GetPublicKeyRequest(name=self._name)
        response = await self._call("GetPublicKey", request, self._check_public_key)
        algorithm = self._algorithm_name(response)
        alg = jws_algorithm_for(algorithm)
        try:
            public_key = load_public_pem(response.pem.encode("ascii"))
        except (ValueError, UnicodeError):
            raise SigningError(
                f"key {self._name}: Cloud KMS returned a public key that does not parse", key=self._name
            ) from None
        family, curve = key_family(public_key)
        expected = jws_algorithm(alg)
        if family != expected.family or (family != "RSA" and curve != expected.curve):
            raise SigningError(
                f"key {self._name}: Cloud KMS reports {algorithm} but returned a {family} {curve or ''} key",
                key=self._name,
            )
        if self._requested_alg is not None and self._requested_alg != alg:
            raise ConfigurationError(
                f"key {self._name} is {algorithm}, which signs {alg}; algorithm={self._requested_alg!r} "
                "cannot be used (Cloud KMS fixes the algorithm per key version)"
            )
        return KeyDescription.for_public_key(public_key, alg, self._key_id)

    def _algorithm_name(self, response: Any) -> str:
        # Read the raw enum number: proto-plus warns on values newer than the installed SDK.
        number = int(type(response).pb(response).algorithm)
        enum = self._kms.CryptoKeyVersion.CryptoKeyVersionAlgorithm
        try:
            return str(enum(number).name)
        except ValueError:
            raise ConfigurationError(
                f"key {self._name}: Cloud KMS algorithm number {number} is unknown to this "
                "google-cloud-kms; upgrade it (the algorithm cannot be mapped to a JWS alg)"
            ) from None

    def _check_public_key(self, response: Any) -> None:
        if response.name != self._name:
            raise _IntegrityError("the response names another key version")
        if response.pem_crc32c is None or _crc32c(response.pem.encode("utf-8")) != response.pem_crc32c:
            raise _IntegrityError("pem_crc32c does not match the public key")

    async def _sign(self, alg: Algorithm, signing_input: bytes) -> bytes:
        kms = self._kms
        if alg.family == "OKP":
            # Ed25519 signs the message itself; Cloud KMS takes it in ``data`` (up to 64 KiB).
            request = kms.AsymmetricSignRequest(
                name=self._name, data=signing_input, data_crc32c=_crc32c(signing_input)
            )
            check = partial(self._check_signature, data=True)
        else:
            digest = alg.digest(signing_input)
            request = kms.AsymmetricSignRequest(
                name=self._name,
                digest=kms.Digest(**{alg.hash_name or "": digest}),
                digest_crc32c=_crc32c(digest),
            )
            check = partial(self._check_signature, data=False)
        response = await self._call("AsymmetricSign", request, check)
        signature = bytes(response.signature)
        if alg.family == "EC":
            # Cloud KMS returns a DER ECDSA-Sig-Value; JWS wants fixed-width r || s.
            try:
                return der_to_raw(signature, alg.coordinate_size)
            except SigningError:
                raise SigningError(
                    f"key {self._name}: Cloud KMS returned a malformed ECDSA signature", key=self._name
                ) from None
        return signature

    def _check_signature(self, response: Any, *, data: bool) -> None:
        if response.name != self._name:
            raise _IntegrityError("the response names another key version")
        verified = response.verified_data_crc32c if data else response.verified_digest_crc32c
        if not verified:
            field_name = "data_crc32c" if data else "digest_crc32c"
            raise _IntegrityError(f"Cloud KMS did not verify the request's {field_name}")
        crc = response.signature_crc32c
        if crc is None or _crc32c(bytes(response.signature)) != crc:
            raise _IntegrityError("signature_crc32c does not match the signature")

    async def aclose(self) -> None:
        """Close the clients this signer created (a client passed as ``client=`` stays open).

        The async client is closed only on the loop that made it; a client left behind on a
        loop that has ended is dropped. A later call creates new clients.
        """
        state, self._loop = self._loop, None
        sync_client = self._sync_client.take()
        if sync_client is not None:
            sync_client.transport.close()  # type: ignore[no-untyped-call]
        async_client = state.async_client.take() if state is not None else None
        if async_client is not None and state is not None and state.marker is _loop_marker():
            await async_client.transport.close()  # type: ignore[no-untyped-call]
