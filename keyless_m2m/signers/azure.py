"""Azure Key Vault (and Managed HSM) signer: the private key stays in the vault.

``describe()`` reads the key once with ``KeyClient.get_key`` (keys/get) and turns its
public JWK into the JWS ``alg``; ``sign()`` hashes locally and sends the digest to
``CryptographyClient.sign`` (keys/sign), which returns the final JWS signature (raw
``r || s`` for ECDSA). Key Vault has no EdDSA.

The Azure SDK's async stack runs on asyncio only (aiohttp). Under asyncio the signer uses
the ``.aio`` clients; under trio it runs the synchronous clients (requests transport) in
worker threads, so the same signer works on both anyio backends; a cancelled caller is
released at once, even while a threaded call hangs.

One HTTP request per ``sign()``/``describe()``: the SDK clients the signer builds have
azure-core's retries off (``retry_total=0``) and a 5 s connection / 10 s read timeout, and
a failure is a ``SigningError`` whose ``retryable`` tells the token endpoint, the one layer
that retries, whether to try again. Retry settings passed by the user win (and multiply
with the endpoint's attempts).
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote, urlsplit

import anyio
import anyio.from_thread

from .._jose import Algorithm, PublicKey, choose_algorithm, jws_algorithm
from ..errors import ConfigurationError, SigningError
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
    retryable_status,
    run_blocking,
    running_async_library,
)

if TYPE_CHECKING:
    from azure.core.credentials import AccessToken
    from azure.keyvault.keys import KeyVaultKey

__all__ = ["AzureKeyVaultSigner", "map_azure_error", "parse_key_vault_uri"]

EXTRA = "azure"
_T = TypeVar("_T")

# The SDK options the signer sets unless the user gives them: no azure-core retry loop under
# the token endpoint's (its default would retry a throttled sign several times per attempt),
# and finite timeouts (azure-core waits 300 s to read by default) so that a thread abandoned
# by a cancelled caller ends soon.
_NO_SDK_RETRIES = {"retry_total": 0}
_TIMEOUTS = {"connection_timeout": 5, "read_timeout": 10}

# Key Vault naming rules: key names 1-127 of [0-9a-zA-Z-]; vault names 3-24, starting
# with a letter, ending with a letter or digit; versions are 32 hex digits in practice.
_KEY_NAME = re.compile(r"^[0-9A-Za-z-]{1,127}$")
_VAULT_NAME = re.compile(r"^[A-Za-z][0-9A-Za-z-]{1,22}[0-9A-Za-z]$")
_VERSION = re.compile(r"^[0-9A-Za-z]{1,64}$")

# Key Vault's retryability is the HTTP status's (408, 429, 5xx), whatever its error code;
# the hints go by status too.
_ERRORS = ProviderErrors()
_HINTS = {
    401: "Key Vault rejected the access token (wrong tenant or audience?)",
    403: "the identity lacks keys/sign or keys/get on this key (RBAC role 'Key Vault Crypto User' "
    "or an access policy), or the vault firewall blocks this network",
    404: "no such key or key version in this vault",
    429: "Key Vault throttled the request",
}


def parse_key_vault_uri(uri: str) -> tuple[str, str, str | None]:
    """``(vault_url, key_name, version)`` from a signer URI or a Key Vault key id.

    - ``azurekms://VAULT_NAME/KEY[/VERSION]`` -> ``https://VAULT_NAME.vault.azure.net``;
    - ``azurekms://HOST[:PORT]/KEY[/VERSION]`` with a dotted host (cosign's form,
      ``azurekms://myvault.vault.azure.net/key``, Managed HSM, sovereign clouds, a test fake);
    - ``https://NAME.vault.azure.net/keys/KEY[/VERSION]`` (the key's id in the portal).
    """
    if not isinstance(uri, str):
        raise ConfigurationError("an Azure Key Vault key URI must be a string")
    refuse_uri_credentials(uri.strip(), "an Azure Key Vault key URI")
    try:
        parts = urlsplit(uri.strip())
        port = parts.port
    except ValueError:
        raise ConfigurationError("not a valid Azure Key Vault key URI") from None
    scheme = parts.scheme.lower()
    host = parts.hostname or ""
    if parts.query or parts.fragment:
        raise ConfigurationError("an Azure Key Vault key URI takes no query or fragment")
    segments = [unquote(s) for s in parts.path.split("/") if s]
    if scheme == "azurekms":
        if not host:
            raise ConfigurationError("azurekms URIs look like azurekms://VAULT_NAME/KEY[/VERSION]")
        if "." in host or host == "localhost":
            vault_url = f"https://{host}" + (f":{port}" if port else "")
        else:
            if port is not None or not _VAULT_NAME.match(host):
                raise ConfigurationError(
                    f"invalid Key Vault name {host!r}: 3-24 letters, digits and dashes, "
                    "starting with a letter"
                )
            vault_url = f"https://{host}.vault.azure.net"
        key_segments = segments
    elif scheme == "https":
        if not host:
            raise ConfigurationError("a Key Vault key URL looks like https://NAME.vault.azure.net/keys/KEY")
        vault_url = f"https://{host}" + (f":{port}" if port else "")
        if not segments or segments[0] != "keys":
            raise ConfigurationError(
                "a Key Vault key URL looks like https://NAME.vault.azure.net/keys/KEY[/VERSION]"
            )
        key_segments = segments[1:]
    elif scheme == "http":
        raise ConfigurationError("Azure Key Vault is reached over https only")
    else:
        raise ConfigurationError(f"not an Azure Key Vault key URI (scheme {scheme!r})")
    if not 1 <= len(key_segments) <= 2:
        raise ConfigurationError("an Azure Key Vault key URI names KEY or KEY/VERSION after the vault")
    name = key_segments[0]
    version = key_segments[1] if len(key_segments) == 2 else None
    _check_key_name(name)
    _check_version(version)
    return vault_url, name, version


def _check_key_name(name: object) -> str:
    if not isinstance(name, str) or not _KEY_NAME.match(name):
        raise ConfigurationError(f"invalid Key Vault key name {name!r}: 1-127 letters, digits and dashes")
    return name


def _check_version(version: object) -> str | None:
    if version is None:
        return None
    if not isinstance(version, str) or not _VERSION.match(version):
        raise ConfigurationError(f"invalid Key Vault key version {version!r}")
    return version


def _check_vault_url(url: object) -> str:
    if not isinstance(url, str):
        raise ConfigurationError("vault_url must be a string like https://NAME.vault.azure.net")
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise ConfigurationError("vault_url is not a valid URL") from None
    if parts.scheme.lower() != "https" or not parts.hostname:
        raise ConfigurationError("vault_url must be an https URL like https://NAME.vault.azure.net")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigurationError("vault_url is the vault's base URL only: https://NAME.vault.azure.net")
    return f"https://{parts.hostname}" + (f":{port}" if port else "")


def _text(value: Any) -> str:
    """An SDK enum member or plain string as its wire value."""
    return str(getattr(value, "value", value))


def _status_of(exc: Any) -> int | None:
    status = getattr(exc, "status_code", None)
    return status if isinstance(status, int) else None


def _error_codes(exc: Any) -> tuple[str | None, str | None]:
    """(code, inner code) of a Key Vault error body ``{"error": {"code", "innererror"}}``."""
    error = getattr(exc, "error", None)
    code = getattr(error, "code", None)
    inner = getattr(error, "innererror", None)
    inner_code = inner.get("code") if isinstance(inner, dict) else None
    return (
        code if isinstance(code, str) and code else None,
        inner_code if isinstance(inner_code, str) and inner_code else None,
    )


def _from_vault(exc: Any, vault_url: str | None) -> bool:
    """Did the failed HTTP response come from the vault (not from Entra ID)?"""
    request = getattr(getattr(exc, "response", None), "request", None)
    url = getattr(request, "url", None)
    if not isinstance(url, str) or vault_url is None:
        return False
    try:
        return urlsplit(url).netloc.lower() == urlsplit(vault_url).netloc.lower()
    except ValueError:
        return False


def map_azure_error(
    exc: BaseException, *, key: str, action: str, vault_url: str | None = None
) -> SigningError:
    """A typed :class:`SigningError` for an Azure SDK exception.

    Only the HTTP status and Key Vault's error codes are kept: the SDK exception holds the
    request, whose ``Authorization`` header carries the access token, so callers must not
    chain it (``raise map_azure_error(...) from None``).

    - 429, 408 and 5xx and connection failures: retryable (the token endpoint retries);
    - 401, 403, 404, other 4xx, and a credential that cannot get a token: not retryable.
    """
    from azure.core import exceptions as az

    name = type(exc).__name__
    prefix = f"Azure Key Vault {action} failed for key {key}"
    if isinstance(exc, az.ClientAuthenticationError) and not _from_vault(exc, vault_url):
        # Raised by azure-identity: no token could be had. Its text can quote the identity
        # provider's response, so only the class name is kept.
        return SigningError(
            f"{prefix}: the credential could not get an access token ({name}); check the "
            "identity configuration (managed identity, workload identity, environment, az login)",
            retryable=False,
            key=key,
            code=name,
        )
    if isinstance(exc, az.HttpResponseError):
        status = _status_of(exc)
        code, inner = _error_codes(exc)
        shown = " ".join(filter(None, [f"HTTP {status}" if status else None, code]))
        if inner:
            shown += f" ({inner})"
        hint = _HINTS.get(status or 0) or ("a Key Vault service error" if retryable_status(status) else "")
        return _ERRORS.error(
            prefix,
            code or (f"HTTP {status}" if status else name),
            key=key,
            status=status,
            shown=shown or name,
            hint=hint,
        )
    if isinstance(exc, az.ServiceRequestError | az.ServiceResponseError):
        return SigningError(
            f"{prefix}: could not reach the vault ({name})",
            retryable=True,
            key=key,
            code=name,
        )
    return SigningError(f"{prefix}: {name}", retryable=False, key=key, code=name)


def _current_backend() -> str:
    """The running async library: "asyncio" or "trio"."""
    backend = running_async_library()
    if backend is None:
        raise ConfigurationError("AzureKeyVaultSigner must be used from async code")
    return backend


def _is_async_credential(credential: Any) -> bool:
    method = getattr(credential, "get_token", None) or getattr(credential, "get_token_info", None)
    if method is None:
        raise ConfigurationError(
            "credential must be an azure-core TokenCredential or AsyncTokenCredential "
            "(for example azure.identity.aio.DefaultAzureCredential)"
        )
    return inspect.iscoroutinefunction(method)


def _require_get_token(credential: Any) -> None:
    if not callable(getattr(credential, "get_token", None)):
        raise ConfigurationError(
            "this credential only offers get_token_info(); on this event loop the signer "
            "needs one with get_token() (any azure-identity credential has it)"
        )


class _SyncCredentialOnAsyncio:
    """A synchronous credential handed to the ``.aio`` SDK: token calls go to a thread."""

    def __init__(self, credential: Any, limiter: anyio.CapacityLimiter) -> None:
        _require_get_token(credential)
        self._credential = credential
        self._limiter = limiter

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        call = functools.partial(self._credential.get_token, *scopes, **kwargs)
        token: AccessToken = await run_blocking(call, self._limiter)
        return token

    async def close(self) -> None:
        """The wrapped credential belongs to the caller; nothing to close."""


class _AsyncCredentialInThreads:
    """An async credential handed to the synchronous SDK running in anyio worker threads:
    each token call hops back to the event loop."""

    def __init__(self, credential: Any) -> None:
        _require_get_token(credential)
        self._credential = credential

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        call: Callable[[], Coroutine[Any, Any, AccessToken]] = functools.partial(
            self._credential.get_token, *scopes, **kwargs
        )
        return anyio.from_thread.run(call)

    def close(self) -> None:
        """The wrapped credential belongs to the caller; nothing to close."""


class _Clients:
    """The SDK clients of one event loop: a KeyClient, and a CryptographyClient pinned to
    the described key version. Made by :func:`_open_clients`."""

    def __init__(
        self,
        backend: str,
        vault_url: str,
        options: dict[str, Any],
        limiter: anyio.CapacityLimiter,
        credential: Any,
        owned_credential: Any,
    ) -> None:
        self.backend = backend
        self.vault_url = vault_url
        self._options = options
        self._limiter = limiter
        self._credential = credential
        self._owned_credential = owned_credential
        self._key_client: Any = None
        self._crypto: Any = None
        self._crypto_key_id: str | None = None

    async def _in_thread(self, func: Callable[[], _T]) -> _T:
        return await run_blocking(func, self._limiter)

    async def _close(self, closeable: Any) -> None:
        """Close one SDK client or credential the way this flavour's clients are called."""
        raise NotImplementedError

    async def aclose(self) -> None:
        clients = [c for c in (self._crypto, self._key_client) if c is not None]
        self._crypto = self._key_client = None
        try:
            for client in clients:
                await self._close(client)
        finally:
            owned, self._owned_credential = self._owned_credential, None
            if owned is not None:
                await self._close(owned)


class _AsyncioClients(_Clients):
    """``azure.keyvault.keys.aio`` clients with an async credential (asyncio only)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        keys_aio = import_extra("azure.keyvault.keys.aio", EXTRA)
        self._key_client = keys_aio.KeyClient(self.vault_url, self._credential, **self._options)

    async def get_key(self, name: str, version: str | None) -> KeyVaultKey:
        key: KeyVaultKey = await self._key_client.get_key(name, version)
        return key

    async def sign(self, key: KeyVaultKey, alg: str, digest: bytes) -> Any:
        crypto_aio = import_extra("azure.keyvault.keys.crypto.aio", EXTRA)
        crypto = import_extra("azure.keyvault.keys.crypto", EXTRA)
        if self._crypto is None or self._crypto_key_id != key.id:
            # Built from the KeyVaultKey (not its id) so the client signs with exactly
            # that version and never fetches the key again.
            self._crypto = crypto_aio.CryptographyClient(key, self._credential, **self._options)
            self._crypto_key_id = key.id
        result = await self._crypto.sign(crypto.SignatureAlgorithm(alg), digest)
        return result.signature

    async def _close(self, closeable: Any) -> None:
        await closeable.close()


class _ThreadedClients(_Clients):
    """The synchronous SDK clients, called in worker threads (any anyio backend)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        keys = import_extra("azure.keyvault.keys", EXTRA)
        self._key_client = keys.KeyClient(self.vault_url, self._credential, **self._options)

    async def get_key(self, name: str, version: str | None) -> KeyVaultKey:
        return await self._in_thread(functools.partial(self._key_client.get_key, name, version))

    async def sign(self, key: KeyVaultKey, alg: str, digest: bytes) -> Any:
        crypto = import_extra("azure.keyvault.keys.crypto", EXTRA)
        if self._crypto is None or self._crypto_key_id != key.id:
            self._crypto = crypto.CryptographyClient(key, self._credential, **self._options)
            self._crypto_key_id = key.id
        call = functools.partial(self._crypto.sign, crypto.SignatureAlgorithm(alg), digest)
        result = await self._in_thread(call)
        return result.signature

    async def _close(self, closeable: Any) -> None:
        await self._in_thread(closeable.close)


async def _open_clients(
    backend: str, vault_url: str, credential: Any, options: dict[str, Any], max_concurrency: int
) -> _AsyncioClients | _ThreadedClients:
    """SDK clients for the running backend: ``.aio`` under asyncio, sync ones in threads
    elsewhere, with the credential adapted to the flavour the clients call. At most
    ``max_concurrency`` worker threads run SDK or credential calls at once."""
    limiter = anyio.CapacityLimiter(max_concurrency)
    if backend == "asyncio":
        import_extra("aiohttp", EXTRA)
        if credential is None:
            identity_aio = import_extra("azure.identity.aio", EXTRA)
            # Its constructor reads the environment and may probe files: not on the loop.
            owned = await run_blocking(identity_aio.DefaultAzureCredential, limiter)
            return _AsyncioClients(backend, vault_url, options, limiter, owned, owned)
        if not _is_async_credential(credential):
            credential = _SyncCredentialOnAsyncio(credential, limiter)
        return _AsyncioClients(backend, vault_url, options, limiter, credential, None)
    if credential is None:
        identity = import_extra("azure.identity", EXTRA)
        owned = await run_blocking(identity.DefaultAzureCredential, limiter)
        return _ThreadedClients(backend, vault_url, options, limiter, owned, owned)
    if _is_async_credential(credential):
        if type(credential).__module__.startswith("azure.identity.aio"):
            # Even their close() uses asyncio.gather; they cannot run under trio.
            raise ConfigurationError(
                f"azure-identity's async credentials run on asyncio only (aiohttp); under {backend} "
                "pass a synchronous credential from azure.identity, e.g. DefaultAzureCredential()"
            )
        credential = _AsyncCredentialInThreads(credential)
    return _ThreadedClients(backend, vault_url, options, limiter, credential, None)


def _with_defaults(options: dict[str, Any]) -> dict[str, Any]:
    """The user's SDK options over the signer's: no SDK retries, finite timeouts."""
    defaults: dict[str, Any] = {}
    if "retry_policy" not in options:
        defaults |= _NO_SDK_RETRIES
    if "transport" not in options:  # a given transport carries its own timeouts
        defaults |= _TIMEOUTS
    return defaults | options


class AzureKeyVaultSigner(CachedDescriptionSigner):
    """Signs with an RSA or EC key held in Azure Key Vault or Managed HSM.

    >>> from keyless_m2m.signers import AzureKeyVaultSigner, signer_from_uri
    >>> signer = AzureKeyVaultSigner("https://myvault.vault.azure.net/keys/m2m")
    >>> signer = AzureKeyVaultSigner(vault_url="https://myvault.vault.azure.net",
    ...                              key_name="m2m", algorithm="PS256")
    >>> signer = signer_from_uri("azurekms://myvault/m2m")

    - The key: a key id URL ``https://NAME.vault.azure.net/keys/KEY[/VERSION]``, or
      ``vault_url`` + ``key_name`` (+ ``key_version``). Without a version the latest one
      is read once by :meth:`describe`, and every signature is made with *that* version:
      a key rotated in the vault does not change the key behind an existing ``kid``
      (a new signer, e.g. after a restart, picks up the new version).
    - ``credential``: an azure-core ``AsyncTokenCredential`` or ``TokenCredential``;
      default azure-identity's ``DefaultAzureCredential`` (the ``.aio`` one under asyncio,
      the synchronous one under trio), created on first use and closed by :meth:`aclose`.
      Credentials you pass are left open.
    - ``algorithm``: RSA keys default to RS256 (RS384/512, PS256/384/512 on request); EC
      keys use ES256 (P-256), ES384 (P-384), ES512 (P-521). P-256K (ES256K) and OKP keys
      are refused: OAuth servers do not take ES256K and Key Vault offers no EdDSA.
    - ``key_id``: the JWS ``kid``, the RFC 7638 thumbprint by default;
      ``use_key_vault_kid=True`` uses the versioned Key Vault key id URL. ``kid=`` is the
      deprecated name of ``key_id=`` (it works, with a ``DeprecationWarning``).
    - ``max_concurrency``: worker threads the synchronous SDK and credentials may use at
      once (8); under trio that bounds concurrent Key Vault requests.
    - ``client_options`` go unchanged to the SDK clients: ``api_version``,
      ``verify_challenge_resource``, ``connection_verify``, ``transport``, retry settings
      (``retry_total``, ``retry_backoff_factor``, ``retry_policy``), timeouts
      (``connection_timeout``, ``read_timeout``)... A ``transport`` must fit the backend: an
      async one under asyncio, a sync one under trio. By default the SDK does not retry
      (``retry_total=0``: the token endpoint retries) and times out after 5 s connecting and
      10 s reading; SDK retries you turn on run under each of the endpoint's attempts.

    The SDK clients belong to the event loop that first uses the signer; call
    :meth:`aclose` before using it from another one.
    """

    def __init__(
        self,
        key_id_url: str | None = None,
        *,
        vault_url: str | None = None,
        key_name: str | None = None,
        key_version: str | None = None,
        credential: Any = None,
        algorithm: str | None = None,
        key_id: str | None = None,
        use_key_vault_kid: bool = False,
        max_concurrency: int = 8,
        kid: str | None = None,
        **client_options: Any,
    ) -> None:
        import_extra("azure.keyvault.keys", EXTRA)
        import_extra("azure.core.exceptions", EXTRA)
        if key_id_url is not None:
            if vault_url is not None or key_name is not None:
                raise ConfigurationError("pass a key id URL or vault_url= and key_name=, not both")
            if not isinstance(key_id_url, str) or not key_id_url.strip().lower().startswith("https://"):
                raise ConfigurationError(
                    "key_id_url is https://NAME.vault.azure.net/keys/KEY[/VERSION]; "
                    "use from_uri() or signer_from_uri() for azurekms:// URIs"
                )
            url_vault, name, version = parse_key_vault_uri(key_id_url)
            if key_version is not None and version is not None and key_version != version:
                raise ConfigurationError("key_version= differs from the version in the key id URL")
            self._vault_url = url_vault
            version = version if version is not None else _check_version(key_version)
        else:
            if vault_url is None or key_name is None:
                raise ConfigurationError(
                    "AzureKeyVaultSigner needs a key id URL, or vault_url= and key_name="
                )
            self._vault_url = _check_vault_url(vault_url)
            name = _check_key_name(key_name)
            version = _check_version(key_version)
        self._key_name = name
        self._key_version = version
        if algorithm is not None:
            if algorithm == "EdDSA":
                raise ConfigurationError("Azure Key Vault offers no EdDSA; use an RSA or EC key")
            jws_algorithm(algorithm)
        self._requested_alg = algorithm
        explicit_kid = ensure_kid(renamed_keyword("key_id", key_id, "kid", kid, owner="AzureKeyVaultSigner"))
        if explicit_kid is not None and use_key_vault_kid:
            raise ConfigurationError("use_key_vault_kid=True and an explicit kid exclude each other")
        self._explicit_kid = explicit_kid
        self._use_key_vault_kid = bool(use_key_vault_kid)
        self._credential = credential
        if credential is not None:
            _is_async_credential(credential)  # fail now on something that is no credential
        self._client_options = dict(client_options)
        self._max_concurrency = check_max_concurrency(max_concurrency)
        self._clients: OnceCell[_AsyncioClients | _ThreadedClients] = OnceCell()
        self._pinned: KeyVaultKey | None = None
        self._modulus_bytes = 0

    @classmethod
    def from_uri(cls, uri: str, **options: Any) -> AzureKeyVaultSigner:
        """``azurekms://VAULT_NAME/KEY[/VERSION]`` (vault ``https://VAULT_NAME.vault.azure.net``),
        ``azurekms://HOST[:PORT]/KEY[/VERSION]``, or ``https://NAME.vault.azure.net/keys/KEY[/VERSION]``.

        ``options`` are the constructor's keyword arguments (``credential=``,
        ``algorithm=``, ``key_id=``, SDK client options).
        """
        vault_url, name, version = parse_key_vault_uri(uri)
        if "vault_url" in options or "key_name" in options:
            raise ConfigurationError("the URI names the vault and key; do not pass vault_url= or key_name=")
        if version is not None and options.get("key_version") not in (None, version):
            raise ConfigurationError("key_version= differs from the version in the URI")
        options["key_version"] = version if version is not None else options.get("key_version")
        return cls(vault_url=vault_url, key_name=name, **options)

    @property
    def key_name(self) -> str:
        if self._pinned is not None:
            return str(self._pinned.id)
        return f"{self._vault_url}/keys/{self._key_name}" + (
            f"/{self._key_version}" if self._key_version else ""
        )

    @property
    def vault_url(self) -> str:
        return self._vault_url

    async def _clients_for_this_loop(self) -> _AsyncioClients | _ThreadedClients:
        backend = _current_backend()
        options = _with_defaults(self._client_options)
        clients = await self._clients.get_or_init(
            functools.partial(
                _open_clients, backend, self._vault_url, self._credential, options, self._max_concurrency
            )
        )
        if clients.backend != backend:
            raise ConfigurationError(
                f"this AzureKeyVaultSigner's SDK clients belong to {clients.backend}; "
                f"call aclose() there before using it under {backend}"
            )
        return clients

    async def _load_description(self) -> KeyDescription:
        clients = await self._clients_for_this_loop()
        key = await call_provider(
            functools.partial(clients.get_key, self._key_name, self._key_version),
            functools.partial(self._mapped, "get key"),
        )
        public_key, family, curve = self._public_key_of(key)
        alg = choose_algorithm(family, curve, self._requested_alg, key=self.key_name)
        key_version = _text(getattr(key.properties, "version", "") or "")
        if not key_version or (self._key_version is not None and key_version != self._key_version):
            raise SigningError(
                f"Key Vault returned key {key.id!r} for {self.key_name}; expected a versioned id"
                + (f" of version {self._key_version}" if self._key_version else ""),
                key=self.key_name,
                code="UnexpectedKeyId",
            )
        self._pinned = key  # sign with exactly this version from now on
        kid: str | None = self._explicit_kid
        if self._use_key_vault_kid:
            kid = str(key.id)
        return KeyDescription.for_public_key(public_key, alg.name, kid)

    def _public_key_of(self, key: KeyVaultKey) -> tuple[PublicKey, Any, str | None]:
        from cryptography.hazmat.primitives.asymmetric import ec, rsa

        name = str(key.id or self.key_name)
        if key.properties.enabled is False:
            raise ConfigurationError(f"key {name} is disabled in Key Vault")
        jwk: Any = key.key  # the SDK's JsonWebKey sets its members dynamically
        ops = None if jwk.key_ops is None else [_text(op) for op in jwk.key_ops]
        if ops is not None and "sign" not in ops:
            raise ConfigurationError(
                f"key {name} does not permit the sign operation (key_ops: {', '.join(ops) or 'none'}); "
                "create it with --ops sign verify"
            )
        kty = _text(jwk.kty)
        if kty in ("RSA", "RSA-HSM"):
            n, e = jwk.n, jwk.e
            if not n or not e:
                raise SigningError(f"Key Vault returned an RSA key without n/e for {name}", key=name)
            public_rsa = rsa.RSAPublicNumbers(int.from_bytes(e, "big"), int.from_bytes(n, "big")).public_key()
            if public_rsa.key_size < 2048:
                raise ConfigurationError(f"key {name}: RSA keys must have at least 2048 bits")
            self._modulus_bytes = (public_rsa.key_size + 7) // 8
            return public_rsa, "RSA", None
        if kty in ("EC", "EC-HSM"):
            crv = _text(jwk.crv)
            curves: dict[str, ec.EllipticCurve] = {
                "P-256": ec.SECP256R1(),
                "P-384": ec.SECP384R1(),
                "P-521": ec.SECP521R1(),
            }
            if crv == "P-256K":
                raise ConfigurationError(
                    f"key {name} is on P-256K (secp256k1): its ES256K signatures are not accepted by "
                    "OAuth servers; use a P-256, P-384 or P-521 key"
                )
            if crv not in curves:
                raise ConfigurationError(f"key {name}: EC curve {crv!r} has no JWS algorithm")
            if not jwk.x or not jwk.y:
                raise SigningError(f"Key Vault returned an EC key without x/y for {name}", key=name)
            try:
                public_ec = ec.EllipticCurvePublicNumbers(
                    int.from_bytes(jwk.x, "big"), int.from_bytes(jwk.y, "big"), curves[crv]
                ).public_key()
            except ValueError:
                raise SigningError(f"Key Vault returned an invalid EC point for {name}", key=name) from None
            return public_ec, "EC", crv
        if kty.startswith("OKP"):
            raise ConfigurationError(
                f"key {name} is an OKP ({_text(jwk.crv)}) key: Azure Key Vault offers no EdDSA signing; "
                "use an RSA or EC key"
            )
        if kty.startswith("oct"):
            raise ConfigurationError(f"key {name} is a symmetric key; private_key_jwt needs RSA or EC")
        raise ConfigurationError(f"key {name} has key type {kty!r}, which cannot sign JWS")

    async def _sign(self, alg: Algorithm, signing_input: bytes) -> bytes:
        key = self._pinned
        if key is None:  # pragma: no cover - sign() describes first
            raise SigningError("describe() must run before sign()", key=self.key_name)
        clients = await self._clients_for_this_loop()
        digest = alg.digest(signing_input)
        signature = await call_provider(
            functools.partial(clients.sign, key, alg.name, digest), functools.partial(self._mapped, "sign")
        )
        if not isinstance(signature, bytes):
            raise SigningError(f"Key Vault returned no signature for {self.key_name}", key=self.key_name)
        if alg.family == "RSA" and len(signature) != self._modulus_bytes:
            raise SigningError(
                f"key {self.key_name}: {alg.name} signature has {len(signature)} bytes, "
                f"expected {self._modulus_bytes}",
                key=self.key_name,
            )
        return signature

    def _mapped(self, action: str, exc: Exception) -> SigningError | None:
        """The typed error for an Azure SDK exception (``None``: not the SDK's, raised as is)."""
        from azure.core.exceptions import AzureError

        if isinstance(exc, AzureError):
            return map_azure_error(exc, key=self.key_name, action=action, vault_url=self._vault_url)
        return None

    async def aclose(self) -> None:
        """Close the SDK clients and the default credential if this signer created it.

        The signer can be used again afterwards (it creates new clients); the description
        and the pinned key version are kept.
        """
        clients = self._clients.take()  # the next user may run another event loop
        if clients is not None:
            await clients.aclose()
