"""A signer whose private key lives in AWS KMS (asymmetric ``SIGN_VERIFY`` keys).

The key never leaves KMS: ``describe()`` makes one ``GetPublicKey`` call, ``sign()`` one
``Sign`` call per assertion. boto3 is synchronous, so every call runs in a worker thread
(``anyio.to_thread``) under the signer's ``max_concurrency`` and the library's shared bound
of SDK threads; a cancelled caller is released at once, even while a call hangs (see
:func:`~keyless_m2m.signers._base.run_blocking`).

Signers share boto3 clients: every signer that builds its client itself, with one region,
endpoint, connection pool size and credential environment (the ``AWS_*`` and proxy
variables the default chain reads, held as a keyed digest, never the values), uses one
client, process-wide, built once in a worker thread under a lock (boto3 sessions are not
thread-safe, clients are) and closed when the last of those signers is closed or collected.
A build costs about 45 ms of CPU (the KMS service model read and parsed), all of it
holding the GIL: 50 signers building 50 clients at once starved the event loop for seconds.

One KMS call per ``sign()``/``describe()``: the client the signer builds has botocore's
retries off (``total_max_attempts=1``) and finite timeouts, and a failure is a
``SigningError`` whose ``retryable`` tells the token endpoint, the one layer that retries,
whether to try again.

Facts this module is built on (real AWS; moto differs on the last two, see the docs):

- ``GetPublicKey`` returns a DER SubjectPublicKeyInfo, ``KeyUsage``, ``SigningAlgorithms``
  and the key spec as ``KeySpec`` plus the deprecated ``CustomerMasterKeySpec`` (moto
  sends only the latter).
- ``Sign`` takes at most 4096 bytes with ``MessageType=RAW``; longer input is hashed
  locally and sent with ``MessageType=DIGEST`` (RSA and ECDSA). ``ED25519_SHA_512``
  only signs ``RAW``, so Ed25519 keys cannot sign more than 4096 bytes.
- ECDSA signatures come back DER-encoded; RSASSA-PSS uses a salt as long as the hash,
  which is what JWS ``PS*`` requires.
- Throttling arrives as a ``ClientError`` with code ``ThrottlingException``.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import secrets
import threading
import warnings
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import unquote, urlsplit

import anyio

from .._http import is_loopback_host
from .._jose import (
    Algorithm,
    KeyFamily,
    choose_algorithm,
    der_to_raw,
    jws_algorithm,
    key_family,
    load_public_der,
)
from ..errors import ConfigurationError, KeylessM2MError, SigningError
from ._base import (
    SDK_THREADS,
    CachedDescriptionSigner,
    KeyDescription,
    ProviderErrors,
    SharedClients,
    call_provider,
    check_max_concurrency,
    construct_blocking,
    ensure_kid,
    import_extra,
    refuse_uri_credentials,
    renamed_keyword,
    run_blocking,
)

if TYPE_CHECKING:
    from botocore.client import BaseClient

__all__ = ["AwsKmsSigner"]

#: The largest message ``Sign`` accepts with ``MessageType=RAW``.
MAX_RAW_MESSAGE = 4096

# KMS key spec -> (JWK family, curve). Specs not listed (ECC_SECG_P256K1, SM2, ML_DSA_*,
# HMAC_*, SYMMETRIC_DEFAULT, ML_KEM_*) have no JWS algorithm registered for them.
_KEY_SPECS: Final[dict[str, tuple[KeyFamily, str | None]]] = {
    "RSA_2048": ("RSA", None),
    "RSA_3072": ("RSA", None),
    "RSA_4096": ("RSA", None),
    "ECC_NIST_P256": ("EC", "P-256"),
    "ECC_NIST_P384": ("EC", "P-384"),
    "ECC_NIST_P521": ("EC", "P-521"),
    "ECC_NIST_EDWARDS25519": ("OKP", "Ed25519"),
}

# JWS alg -> KMS SigningAlgorithm. ED25519_PH_SHA_512 (pre-hashed Ed25519ph) is not EdDSA.
_KMS_ALGORITHMS: Final[dict[str, str]] = {
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
_JWS_ALGORITHMS: Final[dict[str, str]] = {kms: jws for jws, kms in _KMS_ALGORITHMS.items()}

# AWS error codes: worth another try later, final, and what they usually mean. A code the
# table does not know yet is judged by its HTTP status (408, 429, 5xx: retryable).
_ERRORS: Final = ProviderErrors(
    retryable=frozenset(
        {
            "ThrottlingException",
            "Throttling",
            "TooManyRequestsException",
            "RequestLimitExceeded",
            "KMSInternalException",
            "DependencyTimeoutException",
            "KeyUnavailableException",
            "InternalFailure",
            "InternalError",
            "ServiceUnavailable",
            "ServiceUnavailableException",
            "RequestTimeout",
            "RequestTimeoutException",
        }
    ),
    final=frozenset(
        {
            "AccessDeniedException",
            "NotFoundException",
            "DisabledException",
            "KMSInvalidStateException",
            "InvalidKeyUsageException",
            "InvalidArnException",
            "InvalidGrantTokenException",
            "UnsupportedOperationException",
            "ValidationException",
            "UnrecognizedClientException",
            "InvalidSignatureException",
            "IncompleteSignature",
            "ExpiredTokenException",
            "InvalidClientTokenId",
            "MissingAuthenticationToken",
        }
    ),
    hints={
        "AccessDeniedException": "the caller lacks permission for this operation on the key",
        "NotFoundException": "no such key or alias in this account and region",
        "DisabledException": "the key is disabled",
        "KMSInvalidStateException": "the key is not in a usable state (pending deletion or import?)",
        "InvalidKeyUsageException": "the key's usage or signing algorithms do not allow this",
        "UnsupportedOperationException": "the key does not support this operation (not asymmetric?)",
        "InvalidArnException": "the key ARN is malformed",
        "ThrottlingException": "the account's KMS request quota is exhausted for now",
        "KMSInternalException": "an internal AWS KMS error",
        "DependencyTimeoutException": "AWS KMS timed out internally",
        "KeyUnavailableException": "the key is temporarily unavailable",
        "UnrecognizedClientException": "the AWS credentials were not recognised",
        "InvalidSignatureException": "the AWS credentials were rejected",
        "ExpiredTokenException": "the AWS session credentials have expired",
    },
)
# Answers to GetPublicKey that mean "this key cannot be a JWS signing key" rather than
# "the call failed": reported as ConfigurationError.
_CONFIGURATION_CODES: Final = frozenset(
    {"InvalidKeyUsageException", "UnsupportedOperationException", "InvalidArnException"}
)


def _check_kms_key_id(key_id: object) -> tuple[str, str | None]:
    """Validate a key id / key ARN / alias name / alias ARN; return it and the ARN's region."""
    if not isinstance(key_id, str) or not key_id or any(c.isspace() for c in key_id):
        raise ConfigurationError(
            "the AWS KMS key must be a key id, key ARN, alias name (alias/NAME) or alias ARN"
        )
    if key_id.startswith("arn:"):
        parts = key_id.split(":", 5)
        if (
            len(parts) != 6
            or parts[2] != "kms"
            or not parts[3]
            or not parts[5].startswith(("key/", "alias/"))
            or parts[5] in ("key/", "alias/")
        ):
            raise ConfigurationError(
                f"AWS KMS key {key_id!r}: not a KMS key or alias ARN "
                "(arn:PARTITION:kms:REGION:ACCOUNT:key/ID or ...:alias/NAME)"
            )
        return key_id, parts[3]
    if ("/" in key_id and not key_id.startswith("alias/")) or key_id == "alias/":
        raise ConfigurationError(
            f"AWS KMS key {key_id!r}: alias names start with 'alias/', key ids contain no '/'"
        )
    return key_id, None


class _Closed(Exception):
    """Raised inside the worker thread when the signer was closed."""


# What boto3's default credential chain (and its HTTP layer) reads from the environment:
# two signers built under different values of these get different clients.
_PROXY_VARIABLES: Final = frozenset({"HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY", "HOME"})
# A process-random key: the digest in a client key can be neither reversed nor brute-forced
# from a log line, and means nothing outside this process.
_DIGEST_KEY: Final = secrets.token_bytes(32)


def _environment_digest() -> str:
    """A keyed digest of the environment the default credential chain reads (``AWS_*``,
    the proxy variables, ``HOME``): equal environments, equal digests; no value recoverable."""
    mac = hmac.new(_DIGEST_KEY, digestmod=hashlib.sha256)
    for name, value in sorted(os.environ.items()):
        if name.startswith("AWS_") or name.upper() in _PROXY_VARIABLES:
            mac.update(name.encode() + b"\0" + value.encode("utf-8", "surrogateescape") + b"\0")
    return mac.hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class _ClientKey:
    """What makes two signers' boto3 clients interchangeable. Its repr holds no secret:
    the credential environment is a keyed digest."""

    region: str | None
    endpoint_url: str | None
    credentials: str  # _environment_digest() when the client was asked for
    max_pool_connections: int
    # The boto3 and botocore.config modules (identity: a test's stand-in never shares).
    sdk: ModuleType = field(repr=False)
    config_module: ModuleType = field(repr=False)


def _build_client(key: _ClientKey) -> Any:
    """One boto3 KMS client (in a worker thread, under SharedClients' build lock)."""
    config = key.config_module.Config(
        # One attempt: the token endpoint is the one layer that retries (a botocore retry
        # loop under it would multiply the attempts).
        retries={"mode": "standard", "total_max_attempts": 1},
        connect_timeout=5,
        read_timeout=10,
        max_pool_connections=key.max_pool_connections,
        user_agent_extra="keyless-m2m",
    )
    session = key.sdk.session.Session()
    return session.client("kms", region_name=key.region, endpoint_url=key.endpoint_url, config=config)


def _close_client(client: Any) -> None:
    client.close()


#: Every boto3 client AwsKmsSigners built themselves, by configuration.
_CLIENTS: Final[SharedClients[_ClientKey, Any]] = SharedClients(_build_client, _close_client)


def _valid_host_and_port(url: str) -> bool:
    try:
        parts = urlsplit(url)
        port = parts.port  # ValueError for a port out of range or not a number
    except ValueError:
        return False
    return bool(parts.hostname) and port != 0


class AwsKmsSigner(CachedDescriptionSigner):
    """Signs client assertions with an asymmetric AWS KMS key.

    >>> signer = AwsKmsSigner("alias/payments-m2m")
    >>> signer = AwsKmsSigner("arn:aws:kms:eu-west-1:111122223333:key/1234abcd-...",
    ...                       algorithm="PS256")
    >>> signer = AwsKmsSigner("alias/x", endpoint_url="http://127.0.0.1:5000",
    ...                       region="us-east-1")

    The first argument names the KMS key: a key id, key ARN, alias name (``alias/NAME``)
    or alias ARN. The key spec
    decides the JWS ``alg``: ``RSA_*`` -> RS256 (RS384/512 and PS256/384/512 on request,
    when the key's ``SigningAlgorithms`` allow them), ``ECC_NIST_P256/P384/P521`` ->
    ES256/384/512, ``ECC_NIST_EDWARDS25519`` -> EdDSA. Any other spec, or a key whose usage
    is not ``SIGN_VERIFY``, is a :class:`~keyless_m2m.ConfigurationError` at ``describe()``.

    ``key_id`` (the JWS ``kid``, as for every signer) defaults to the RFC 7638 thumbprint of
    the public key. ``kid=`` is its deprecated name, and so is passing the KMS key as
    ``key_id=`` with no positional argument: both still work, with a ``DeprecationWarning``.

    Pass ``client=`` to use your own boto3 KMS client (it is never closed by this signer,
    and used as configured: its botocore retries, if any, run under each of the token
    endpoint's attempts); otherwise a client is made on first use from the default
    credential chain, with ``region`` (default: the key ARN's region, then
    ``AWS_REGION``/``AWS_DEFAULT_REGION``) and ``endpoint_url`` (moto, LocalStack, a VPC
    endpoint), no botocore retries and a 5 s connect / 10 s read timeout, and shared with
    every other signer of the same region, endpoint, pool size and credential environment
    (see the module docstring). At most ``max_concurrency`` KMS calls run at once per
    signer, and at most ``SDK_THREADS`` SDK calls of all signers per event loop.

    Once described, the signer signs with the key ARN ``GetPublicKey`` resolved, so a
    later change of an alias never produces signatures that do not match the ``kid``.
    """

    def __init__(
        self,
        kms_key_id: str | None = None,
        /,
        *,
        client: BaseClient | None = None,
        region: str | None = None,
        endpoint_url: str | None = None,
        algorithm: str | None = None,
        key_id: str | None = None,
        max_concurrency: int = 10,
        kid: str | None = None,
    ) -> None:
        if kms_key_id is None and key_id is not None:
            # The old signature, AwsKmsSigner(key_id="alias/x"), named the KMS key key_id=.
            warnings.warn(
                "AwsKmsSigner(key_id=KMS_KEY) is deprecated: pass the KMS key as the first "
                "argument; key_id= is the JWS key id (kid), as for every signer",
                DeprecationWarning,
                stacklevel=2,
            )
            kms_key_id, key_id = key_id, None
        key_id = renamed_keyword("key_id", key_id, "kid", kid, owner="AwsKmsSigner")
        self._key_id, arn_region = _check_kms_key_id(kms_key_id)
        if client is not None and (region is not None or endpoint_url is not None):
            raise ConfigurationError(
                f"AWS KMS key {self._key_id}: pass either client= or region=/endpoint_url=, not both"
            )
        if region is not None and (not isinstance(region, str) or not region):
            raise ConfigurationError("region must be a non-empty string")
        if region is not None and arn_region is not None and region != arn_region:
            raise ConfigurationError(
                f"AWS KMS key {self._key_id}: region {region!r} does not match the ARN's region"
            )
        if endpoint_url is not None and (
            not isinstance(endpoint_url, str)
            or not endpoint_url.startswith(("https://", "http://"))
            or not _valid_host_and_port(endpoint_url)
        ):
            raise ConfigurationError(
                "endpoint_url must be an http:// or https:// URL with a host (and a port from 1 to 65535)"
            )
        if algorithm is not None:
            jws_algorithm(algorithm)
        self._kid = ensure_kid(key_id)
        self._max_concurrency = check_max_concurrency(max_concurrency)

        self._boto3: ModuleType = import_extra("boto3", "aws")
        self._botocore_exceptions: ModuleType = import_extra("botocore.exceptions", "aws")
        self._botocore_config: ModuleType = import_extra("botocore.config", "aws")

        self._region = region or arn_region
        self._endpoint_url = endpoint_url
        self._requested_alg = algorithm
        self._client: Any = client
        self._owns_client = client is None
        # The shared client this signer acquired (None: not yet, or client= given) and the
        # one release of it (weakref.finalize: also run if the signer is collected unclosed).
        self._client_key: _ClientKey | None = None
        self._release: weakref.finalize[Any, Any] | None = None
        self._client_lock = threading.Lock()  # guards _client/_release; held only briefly
        self._closed = False
        self._limiter: anyio.CapacityLimiter | None = None
        self._signing_key_id = self._key_id

    # -- construction from a URI ----------------------------------------------------------

    @classmethod
    def from_uri(cls, uri: str, **options: Any) -> AwsKmsSigner:
        """``awskms:///KEY`` or ``awskms://HOST[:PORT]/KEY`` (KEY: key id, ARN, alias).

        A host names a custom endpoint: ``http://`` for loopback hosts (moto, LocalStack),
        ``https://`` otherwise. ``key_id=`` sets the JWS key id; options go to the constructor.
        """
        refuse_uri_credentials(uri, "awskms URIs")
        try:
            parts = urlsplit(uri)
            port = parts.port
        except ValueError:
            raise ConfigurationError(
                "not a valid awskms URI; use awskms:///alias/NAME, awskms:///arn:aws:kms:... "
                "or awskms://HOST:PORT/alias/NAME"
            ) from None
        if parts.scheme.lower() != "awskms":
            raise ConfigurationError("an AWS KMS signer URI starts with awskms://")
        if parts.query or parts.fragment:
            raise ConfigurationError("awskms URIs take no query or fragment; pass options instead")
        key_id = unquote(parts.path[1:]) if parts.path.startswith("/") else ""
        if not key_id:
            raise ConfigurationError(
                "an awskms URI names a key: awskms:///alias/NAME or awskms:///arn:aws:kms:..."
            )
        if parts.netloc:
            host = parts.hostname or ""
            if not host:
                raise ConfigurationError("awskms URI: the endpoint host is empty")
            if "endpoint_url" in options:
                raise ConfigurationError("awskms URI names an endpoint host; do not pass endpoint_url too")
            scheme = "http" if is_loopback_host(host) else "https"
            shown = f"[{host}]" if ":" in host else host
            options["endpoint_url"] = f"{scheme}://{shown}" + (f":{port}" if port is not None else "")
        return cls(key_id, **options)

    # -- the Signer protocol --------------------------------------------------------------

    @property
    def key_name(self) -> str:
        return self._key_id

    async def _load_description(self) -> KeyDescription:
        response = await self._call("GetPublicKey", KeyId=self._key_id)
        spec = response.get("KeySpec") or response.get("CustomerMasterKeySpec")
        usage = response.get("KeyUsage")
        shape = _KEY_SPECS.get(str(spec))
        if shape is None:
            raise ConfigurationError(
                f"AWS KMS key {self._key_id}: key spec {spec} has no JWS algorithm; use "
                "RSA_2048/3072/4096, ECC_NIST_P256/P384/P521 or ECC_NIST_EDWARDS25519"
            )
        if usage != "SIGN_VERIFY":
            raise ConfigurationError(
                f"AWS KMS key {self._key_id}: key usage is {usage}, not SIGN_VERIFY (key spec {spec})"
            )
        der = response.get("PublicKey")
        try:
            public_key = load_public_der(bytes(der)) if isinstance(der, bytes | bytearray) else None
            fits = public_key is not None and key_family(public_key) == shape
        except (ValueError, ConfigurationError):
            public_key, fits = None, False
        if public_key is None or not fits:
            raise SigningError(
                f"AWS KMS key {self._key_id}: GetPublicKey returned no usable {spec} public key",
                key=self._key_id,
            )
        family, curve = shape
        listed = response.get("SigningAlgorithms")
        allowed = (
            frozenset(_JWS_ALGORITHMS[a] for a in listed if a in _JWS_ALGORITHMS)
            if isinstance(listed, list)
            else None
        )
        alg = choose_algorithm(family, curve, self._requested_alg, key=self._key_id, allowed=allowed)
        resolved = response.get("KeyId")
        if isinstance(resolved, str) and resolved:
            # Pin the key an alias pointed to when we read its public key.
            self._signing_key_id = resolved
        return KeyDescription.for_public_key(public_key, alg.name, self._kid)

    async def _sign(self, alg: Algorithm, signing_input: bytes) -> bytes:
        if not signing_input:
            raise SigningError(f"AWS KMS key {self._key_id}: nothing to sign", key=self._key_id)
        if len(signing_input) <= MAX_RAW_MESSAGE:
            message, message_type = bytes(signing_input), "RAW"
        elif alg.family == "OKP":
            raise SigningError(
                f"AWS KMS key {self._key_id}: EdDSA input is {len(signing_input)} bytes; AWS KMS "
                f"signs at most {MAX_RAW_MESSAGE} bytes with Ed25519 (it cannot be pre-hashed)",
                key=self._key_id,
            )
        else:
            message, message_type = alg.digest(signing_input), "DIGEST"
        response = await self._call(
            "Sign",
            KeyId=self._signing_key_id,
            Message=message,
            MessageType=message_type,
            SigningAlgorithm=_KMS_ALGORITHMS[alg.name],
        )
        signature = response.get("Signature")
        if not isinstance(signature, bytes | bytearray) or not signature:
            raise SigningError(f"AWS KMS key {self._key_id}: Sign returned no signature", key=self._key_id)
        if alg.family != "EC":
            return bytes(signature)
        try:
            return der_to_raw(bytes(signature), alg.coordinate_size)
        except SigningError as exc:
            raise SigningError(f"AWS KMS key {self._key_id}: {exc}", key=self._key_id) from None

    async def aclose(self) -> None:
        """Give back the shared boto3 client (closed once no other signer uses it; a client
        passed in stays open). The signer cannot sign afterwards."""
        self._closed = True
        with self._client_lock:
            release, self._release = self._release, None
            if self._owns_client:
                self._client = None
        if release is not None:
            await run_blocking(release)

    # -- boto3 plumbing -------------------------------------------------------------------

    def _shared_key(self) -> _ClientKey:
        return _ClientKey(
            region=self._region,
            endpoint_url=self._endpoint_url,
            credentials=_environment_digest(),
            max_pool_connections=max(self._max_concurrency, SDK_THREADS),
            sdk=self._boto3,
            config_module=self._botocore_config,
        )

    def _adopt(self, key: _ClientKey, client: Any) -> None:
        """Keep one acquisition of the shared client (give it back if not needed)."""
        with self._client_lock:
            keep = self._client is None and not self._closed
            if keep:
                self._client, self._client_key = client, key
                self._release = weakref.finalize(self, _CLIENTS.release, key, client)
        if not keep:
            _CLIENTS.release(key, client)

    def _adopt_built(self, key: _ClientKey) -> bool:
        """Take the key's client if it is built (on the loop: a dict look-up, no build)."""
        built = _CLIENTS.acquire_built(key)
        if built is not None:
            self._adopt(key, built)
        return built is not None or self._client is not None

    def _acquire_now(self, key: _ClientKey) -> None:
        # In a worker thread: the result is stored on the signer, not returned, so that an
        # abandoned thread (a cancelled caller) still leaves its acquisition to aclose().
        self._adopt(key, _CLIENTS.acquire(key))

    async def _ensure_client(self) -> Any:
        client = self._client
        if client is None:
            if self._closed:
                raise _Closed
            key = self._shared_key()
            if not self._adopt_built(key):
                await construct_blocking(
                    functools.partial(self._acquire_now, key), functools.partial(self._adopt_built, key)
                )
            client = self._client
            if client is None:
                raise _Closed
        return client

    def _call_now(self, client: Any, operation: str, params: Mapping[str, Any]) -> Any:
        if self._closed:
            raise _Closed
        method: Callable[..., Any] = getattr(client, _METHODS[operation])
        return method(**params)

    async def _call(self, operation: str, **params: Any) -> Mapping[str, Any]:
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self._max_concurrency)
        limiter = self._limiter

        async def call() -> Any:
            client = await self._ensure_client()
            return await run_blocking(functools.partial(self._call_now, client, operation, params), limiter)

        # botocore messages and attributes can carry an access key id (InvalidSignatureException's
        # string-to-sign) or a proxy URL with a password: call_provider cuts them from the chain.
        response = await call_provider(call, functools.partial(self._map_error, operation))
        if not isinstance(response, Mapping):
            raise SigningError(
                f"AWS KMS {operation} for key {self._key_id} returned no response", key=self._key_id
            )
        return response

    def _map_error(self, operation: str, exc: Exception) -> KeylessM2MError | None:
        key = self._key_id
        errors = self._botocore_exceptions
        if isinstance(exc, _Closed):
            return SigningError(f"the AWS KMS signer for key {key} is closed", key=key, code="Closed")
        if isinstance(exc, errors.ClientError):
            details = getattr(exc, "response", None) or {}
            code = str(details.get("Error", {}).get("Code") or "Unknown")
            status = details.get("ResponseMetadata", {}).get("HTTPStatusCode")
            error = _ERRORS.error(f"AWS KMS {operation} failed for key {key}", code, key=key, status=status)
            if operation == "GetPublicKey" and code in _CONFIGURATION_CODES:
                return ConfigurationError(str(error))
            return error
        if isinstance(exc, errors.NoRegionError):
            return ConfigurationError(
                f"AWS KMS key {key}: no AWS region; pass region=, use a key ARN, or set AWS_REGION"
            )
        if isinstance(exc, errors.SSLError):
            return SigningError(
                f"AWS KMS {operation} failed for key {key}: TLS verification of the endpoint failed",
                key=key,
                code="SSLError",
            )
        if isinstance(exc, errors.ConnectionError | errors.HTTPClientError):
            name = type(exc).__name__
            return SigningError(
                f"AWS KMS {operation} failed for key {key}: {name} (could not reach AWS KMS)",
                retryable=True,
                key=key,
                code=name,
            )
        if isinstance(exc, errors.NoCredentialsError | errors.PartialCredentialsError):
            name = type(exc).__name__
            return SigningError(
                f"AWS KMS {operation} failed for key {key}: {name} (no usable AWS credentials found)",
                key=key,
                code=name,
            )
        if isinstance(exc, errors.BotoCoreError):
            name = type(exc).__name__
            return SigningError(f"AWS KMS {operation} failed for key {key}: {name}", key=key, code=name)
        return None


_METHODS: Final = {"GetPublicKey": "get_public_key", "Sign": "sign"}
