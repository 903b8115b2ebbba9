"""A signer whose key lives in HashiCorp Vault's or OpenBao's transit secrets engine.

The private key never leaves Vault: ``describe()`` reads the public half of one key version
(``GET /v1/<mount>/keys/<name>``) and ``sign()`` asks Vault to sign
(``POST /v1/<mount>/sign/<name>``). hvac is synchronous, so every call runs in a worker
thread under a capacity limiter; a cancelled caller is released at once, even while a call
hangs. One HTTP request per ``sign()``/``describe()``: neither hvac nor requests retries
(requests' adapter allows urllib3 no retries), the client the signer builds has a 5 s
connect and 10 s read timeout, and the token endpoint retries a retryable ``SigningError``.

The version is pinned at ``describe()`` time (the one given, or the latest then): after a
rotation in Vault the signer keeps signing with the version its ``kid`` names, and a new
signer picks up the new version and a new ``kid``.
"""

from __future__ import annotations

import base64
import functools
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlsplit

import anyio
from cryptography.hazmat.primitives.asymmetric import ed25519

from .._jose import (
    Algorithm,
    KeyFamily,
    PublicKey,
    b64url_decode,
    choose_algorithm,
    jws_algorithm,
    key_family,
)
from .._jose import load_public_pem as _load_public_pem
from ..errors import ConfigurationError, KeylessM2MError, SigningError
from ._base import (
    CachedDescriptionSigner,
    KeyDescription,
    ProviderErrors,
    call_provider,
    check_max_concurrency,
    ensure_kid,
    import_extra,
    refuse_uri_credentials,
    run_blocking,
)

if TYPE_CHECKING:
    import hvac

__all__ = ["VaultTransitSigner"]

#: Transit key types that can make JWS signatures: type -> (JWK family, curve).
KEY_TYPES: dict[str, tuple[KeyFamily, str | None]] = {
    "rsa-2048": ("RSA", None),
    "rsa-3072": ("RSA", None),
    "rsa-4096": ("RSA", None),
    "ecdsa-p256": ("EC", "P-256"),
    "ecdsa-p384": ("EC", "P-384"),
    "ecdsa-p521": ("EC", "P-521"),
    "ed25519": ("OKP", "Ed25519"),
}

#: JWS hash -> transit ``hash_algorithm``. Vault defaults to sha2-256 for every key type,
#: P-384 and P-521 included, so the hash is always sent explicitly.
_HASH_ALGORITHMS = {"sha256": "sha2-256", "sha384": "sha2-384", "sha512": "sha2-512"}

#: hvac's connection pool holds 10 connections; more threads than that would only queue.
_DEFAULT_MAX_CONCURRENCY = 10

#: (connect, read) seconds for the client the signer builds (hvac's default is 30 s).
_TIMEOUT = (5.0, 10.0)

_DEFAULT_ADDRESS = "https://127.0.0.1:8200"  # the Vault CLI's default, not hvac's
_NAME = re.compile(r"\w(?:[\w.-]*\w)?", re.ASCII)  # Vault's GenericNameRegex for transit key names
_SIGNATURE = re.compile(r"vault:v(\d+):([A-Za-z0-9+/_=-]+)")
_TRUE = frozenset({"1", "t", "true"})  # what Go's strconv.ParseBool accepts, lower-cased

# Error codes are the HTTP status. 412 is Vault Enterprise's "performance standby not caught
# up yet"; 503 a sealed or standby node; 501 an uninitialised Vault (an operator's job). Any
# other status reaches us as hvac's UnexpectedError (a proxy's 504, ...): retryable.
_ERRORS = ProviderErrors(
    retryable=frozenset({"412", "429", "500", "502", "503", "unexpected"}),
    final=frozenset({"400", "401", "403", "404", "501"}),
)


def _env(*names: str) -> str | None:
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return None


def _token_from_env() -> str | None:
    """``VAULT_TOKEN`` (``BAO_TOKEN``), else the CLI token helper's ``~/.vault-token``."""
    token = _env("VAULT_TOKEN", "BAO_TOKEN")
    if token:
        return token
    try:
        stored = (Path.home() / ".vault-token").read_text(encoding="utf-8").strip()
    except (OSError, RuntimeError, UnicodeDecodeError):
        return None
    return stored or None


def _tls_from_env() -> tuple[bool | str, tuple[str, str] | None]:
    """``verify`` and ``cert`` for requests, from the Vault CLI's TLS variables."""
    verify: bool | str = _env("VAULT_CACERT", "BAO_CACERT") or _env("VAULT_CAPATH", "BAO_CAPATH") or True
    if (_env("VAULT_SKIP_VERIFY", "BAO_SKIP_VERIFY") or "").strip().lower() in _TRUE:
        verify = False
    cert_file = _env("VAULT_CLIENT_CERT", "BAO_CLIENT_CERT")
    key_file = _env("VAULT_CLIENT_KEY", "BAO_CLIENT_KEY")
    cert = (cert_file, key_file) if cert_file and key_file else None
    return verify, cert


def _decode_signature(text: str) -> bytes:
    """Signature bytes from base64url (``marshaling_algorithm=jws``) or standard base64."""
    return b64url_decode(text.replace("+", "-").replace("/", "_"))


def _one_line(errors: Any, limit: int = 300) -> str:
    """Vault's ``errors`` list as one short line (it wraps them as "1 error occurred: * ...")."""
    items = errors if isinstance(errors, list | tuple) else [errors]
    text = "; ".join(str(e) for e in items if e)
    text = re.sub(r"\d+ errors? occurred:", "", text)
    text = " ".join(text.replace("*", " ").split())
    return text[:limit] + ("..." if len(text) > limit else "")


class VaultTransitSigner(CachedDescriptionSigner):
    """Signs with a transit key in HashiCorp Vault or OpenBao.

    >>> signer = VaultTransitSigner("payments-m2m")
    >>> signer = VaultTransitSigner("payments-m2m", algorithm="PS256",
    ...                             client=hvac.Client(url="https://vault.internal:8200", token=token))

    Without ``client`` the address, token and namespace come from ``url``/``token``/
    ``namespace`` or, as the Vault CLI does, from ``VAULT_ADDR``, ``VAULT_TOKEN`` (then
    ``~/.vault-token``) and ``VAULT_NAMESPACE``; TLS from ``VAULT_CACERT``, ``VAULT_CAPATH``,
    ``VAULT_SKIP_VERIFY``, ``VAULT_CLIENT_CERT``/``VAULT_CLIENT_KEY``. OpenBao's ``BAO_*``
    names are read when the ``VAULT_*`` one is unset. For AppRole, Kubernetes, JWT or any
    other auth method, pass an authenticated ``hvac.Client`` (it is not closed by
    :meth:`aclose`, and is used as configured: a session that retries runs its retries
    under each of the token endpoint's attempts).

    Key types: rsa-2048/3072/4096 (RS256 by default; RS384/512, PS256/384/512 on request),
    ecdsa-p256/p384/p521 (ES256/384/512), ed25519 (EdDSA). ``key_version`` pins a version;
    by default the latest version at ``describe()`` time is pinned. ``key_id`` defaults to
    the RFC 7638 thumbprint of that version's public key. At most ``max_concurrency`` Vault
    requests (worker threads) run at once per signer.
    """

    def __init__(
        self,
        key_name: str,
        *,
        client: hvac.Client | None = None,
        url: str | None = None,
        token: str | None = None,
        mount_point: str = "transit",
        key_version: int | None = None,
        namespace: str | None = None,
        algorithm: str | None = None,
        key_id: str | None = None,
        max_concurrency: int = _DEFAULT_MAX_CONCURRENCY,
    ) -> None:
        if not isinstance(key_name, str) or not _NAME.fullmatch(key_name):
            raise ConfigurationError(
                f"invalid transit key name {key_name!r}: letters, digits, '_', '-' and '.' only"
            )
        mount = mount_point.strip("/") if isinstance(mount_point, str) else ""
        if not mount or any(not part for part in mount.split("/")):
            raise ConfigurationError(f"invalid transit mount point {mount_point!r}")
        if key_version is not None and (
            isinstance(key_version, bool) or not isinstance(key_version, int) or key_version < 1
        ):
            raise ConfigurationError("key_version must be a positive integer")
        if algorithm is not None:
            jws_algorithm(algorithm)
        self._max_concurrency = check_max_concurrency(max_concurrency)

        hvac_module = import_extra("hvac", "vault")
        self._hvac_exceptions = import_extra("hvac.exceptions", "vault")
        self._requests_exceptions = import_extra("requests.exceptions", "vault")
        self._key = key_name
        self._mount = mount
        self._requested_version = key_version
        self._requested_alg = algorithm
        self._key_id = ensure_kid(key_id)
        self._version: int | None = None
        self._limiter: anyio.CapacityLimiter | None = None

        if client is not None:
            if url is not None or token is not None or namespace is not None:
                raise ConfigurationError("pass either client= or url=/token=/namespace=, not both")
            self._client = client
            self._owns_client = False
        else:
            address = url or _env("VAULT_ADDR", "BAO_ADDR") or _DEFAULT_ADDRESS
            try:
                parts = urlsplit(address)
                parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
                usable = parts.scheme in ("http", "https") and bool(parts.hostname)
            except ValueError:
                usable = False
            if not usable or "@" in parts.netloc:
                # Not echoed: a malformed address may hold credentials.
                raise ConfigurationError(
                    "the Vault address must be an http(s) URL without credentials, with a port from "
                    "1 to 65535 if any, e.g. https://vault:8200"
                )
            verify, cert = _tls_from_env()
            self._client = hvac_module.Client(
                url=address,
                token=token if token is not None else _token_from_env(),
                namespace=namespace if namespace is not None else _env("VAULT_NAMESPACE", "BAO_NAMESPACE"),
                verify=verify,
                cert=cert,
                timeout=_TIMEOUT,
            )
            self._owns_client = True

    @classmethod
    def from_uri(cls, uri: str, **options: Any) -> VaultTransitSigner:
        """``hashivault://KEY[?mount=transit&version=N]``.

        Address and token come from ``VAULT_ADDR``/``VAULT_TOKEN`` unless ``options`` give
        ``url=``/``token=``/``client=``; ``algorithm=`` and ``key_id=`` go through too.
        """
        refuse_uri_credentials(uri, "hashivault URIs", ": set VAULT_TOKEN or pass token=")
        parts = urlsplit(uri)
        name = unquote(parts.netloc or parts.path.strip("/"))
        if parts.scheme != "hashivault" or not name or (parts.netloc and parts.path.strip("/")):
            raise ConfigurationError(
                "a Vault transit signer URI looks like hashivault://KEY?mount=transit&version=N"
            )
        try:
            query = dict(parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query)))
        except ValueError:
            # Not echoed: the query may hold a token pasted there by mistake.
            raise ConfigurationError("cannot parse the hashivault URI's query") from None
        unknown = set(query) - {"mount", "version"}
        if unknown:
            raise ConfigurationError(
                f"unknown hashivault URI parameter(s) {', '.join(sorted(unknown))}; known: mount, version"
            )
        if "mount" in query:
            if "mount_point" in options:
                raise ConfigurationError("the mount is given both in the URI and as mount_point=")
            options["mount_point"] = query["mount"]
        if "version" in query:
            if "key_version" in options:
                raise ConfigurationError("the version is given both in the URI and as key_version=")
            if not re.fullmatch(r"[0-9]+", query["version"]):
                raise ConfigurationError("the hashivault URI's version must be a positive integer")
            options["key_version"] = int(query["version"])
        return cls(name, **options)

    @property
    def key_name(self) -> str:
        return f"{self._mount}/keys/{self._key}"

    @property
    def key_version(self) -> int | None:
        """The pinned key version (``None`` until ``describe()`` when not given)."""
        return self._version if self._version is not None else self._requested_version

    def __repr__(self) -> str:
        alg = self._description.algorithm if self._description else "?"
        version = self.key_version if self.key_version is not None else "latest"
        return f"{type(self).__name__}(key={self.key_name!r}, version={version}, alg={alg})"

    async def aclose(self) -> None:
        """Close the HTTP session of a client this signer created (a passed client stays open)."""
        if self._owns_client:
            self._client.adapter.close()

    # -- Vault calls ------------------------------------------------------------------------

    async def _call(self, operation: str, function: Callable[..., Any], **kwargs: Any) -> Any:
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self._max_concurrency)
        # requests keeps the prepared request (X-Vault-Token header and all) on its
        # exceptions, hvac the response text: call_provider cuts them from the chain.
        return await call_provider(
            functools.partial(run_blocking, functools.partial(function, **kwargs), self._limiter),
            functools.partial(self._map_error, operation),
        )

    def _map_error(self, operation: str, exc: Exception) -> KeylessM2MError | None:
        if isinstance(exc, self._hvac_exceptions.VaultError):
            return self._vault_error(operation, exc)
        if isinstance(exc, self._requests_exceptions.RequestException):
            return self._transport_error(exc)
        return None

    def _redact(self, text: str) -> str:
        token = getattr(self._client, "token", None)
        if isinstance(token, str) and len(token) >= 4:
            text = text.replace(token, "***")
        return text

    def _status_of(self, exc: Exception) -> int | None:
        exceptions = self._hvac_exceptions
        by_class: list[tuple[type[Exception], int]] = [
            (exceptions.InvalidRequest, 400),
            (exceptions.Unauthorized, 401),
            (exceptions.Forbidden, 403),
            (exceptions.InvalidPath, 404),
            (exceptions.PreconditionFailed, 412),
            (exceptions.RateLimitExceeded, 429),
            (exceptions.InternalServerError, 500),
            (exceptions.VaultNotInitialized, 501),
            (exceptions.BadGateway, 502),
            (exceptions.VaultDown, 503),
        ]
        for cls, status in by_class:
            if isinstance(exc, cls):
                return status
        return None

    def _policy_hint(self, operation: str) -> str:
        if operation == "sign":
            return f'path "{self._mount}/sign/{self._key}" {{ capabilities = ["update"] }}'
        return f'path "{self._mount}/keys/{self._key}" {{ capabilities = ["read"] }}'

    def _vault_error(self, operation: str, exc: Exception) -> KeylessM2MError:
        path = f"{self._mount}/{'sign' if operation == 'sign' else 'keys'}/{self._key}"
        if isinstance(exc, self._hvac_exceptions.ParamValidationError):
            return ConfigurationError(f"hvac rejected the {operation} request for {path}")
        status = self._status_of(exc)
        detail = self._redact(_one_line(getattr(exc, "errors", None) or (exc.args[0] if exc.args else "")))
        where = f"HTTP {status}" if status is not None else f"unexpected HTTP status, {type(exc).__name__}"
        hint = ""
        if status == 403:
            if getattr(self._client, "token", None):
                hint = f"the token is invalid or expired, or its policy lacks {self._policy_hint(operation)}"
            else:
                hint = "no Vault token was sent: pass token= or client=, or set VAULT_TOKEN"
        elif status == 404 or (status == 400 and "not found" in detail):
            hint = f"check the key name and that transit is mounted at {self._mount!r}"
        elif status == 503:
            hint = "Vault is sealed or in standby"
        return _ERRORS.error(
            f"Vault refused {operation} on {path}",
            str(status) if status is not None else "unexpected",
            key=self.key_name,
            status=status,
            shown=f"{where}: {detail}" if detail else where,
            hint=hint,
        )

    def _transport_error(self, exc: Exception) -> KeylessM2MError:
        requests_exceptions = self._requests_exceptions
        kind = type(exc).__name__
        if isinstance(exc, requests_exceptions.SSLError):
            return SigningError(
                f"TLS to Vault failed for {self.key_name} ({kind}); check VAULT_CACERT / the CA bundle",
                retryable=False,
                key=self.key_name,
                code=kind,
            )
        retryable = isinstance(exc, requests_exceptions.ConnectionError | requests_exceptions.Timeout)
        return SigningError(
            f"cannot reach Vault for {self.key_name} ({kind})",
            retryable=retryable,
            key=self.key_name,
            code=kind,
        )

    # -- describe -----------------------------------------------------------------------------

    async def _load_description(self) -> KeyDescription:
        transit = self._client.secrets.transit
        response = await self._call("read", transit.read_key, name=self._key, mount_point=self._mount)
        data = response.get("data") if isinstance(response, Mapping) else None
        if not isinstance(data, Mapping):
            raise SigningError(f"Vault returned no key data for {self.key_name}", key=self.key_name)

        key_type = str(data.get("type"))
        family_curve = KEY_TYPES.get(key_type)
        if family_curve is None or data.get("supports_signing") is False:
            raise ConfigurationError(
                f"key {self.key_name} is of type {key_type}, which cannot make JWS signatures; "
                f"use one of {', '.join(KEY_TYPES)}"
            )
        if data.get("derived"):
            raise ConfigurationError(
                f"key {self.key_name} is a derived key (one public key per context); create it "
                "without derived=true"
            )

        version = self._pick_version(data)
        public_key = self._public_key(data, version, key_type)
        if key_family(public_key) != family_curve:
            raise SigningError(
                f"Vault returned a public key that does not fit a {key_type} key for {self.key_name}",
                key=self.key_name,
            )
        alg = choose_algorithm(*family_curve, self._requested_alg, key=self.key_name)
        self._version = version
        return KeyDescription.for_public_key(public_key, alg.name, self._key_id)

    def _pick_version(self, data: Mapping[str, Any]) -> int:
        latest = data.get("latest_version")
        if isinstance(latest, bool) or not isinstance(latest, int) or latest < 1:
            raise SigningError(f"Vault returned no latest_version for {self.key_name}", key=self.key_name)
        version = self._requested_version if self._requested_version is not None else latest
        if version > latest:
            raise ConfigurationError(f"key {self.key_name} has no version {version}; the latest is {latest}")
        minimum = data.get("min_encryption_version")
        if isinstance(minimum, int) and not isinstance(minimum, bool) and version < minimum:
            raise ConfigurationError(
                f"key {self.key_name}: version {version} is below min_encryption_version {minimum}, "
                "so Vault no longer signs with it"
            )
        return version

    def _public_key(self, data: Mapping[str, Any], version: int, key_type: str) -> PublicKey:
        versions = data.get("keys")
        entry = versions.get(str(version)) if isinstance(versions, Mapping) else None
        public = entry.get("public_key") if isinstance(entry, Mapping) else None
        if not isinstance(public, str) or not public:
            raise ConfigurationError(
                f"key {self.key_name} has no public key for version {version} (trimmed or missing)"
            )
        try:
            if key_type == "ed25519":  # raw 32 bytes, standard base64
                return ed25519.Ed25519PublicKey.from_public_bytes(base64.b64decode(public, validate=True))
            return _load_public_pem(public.encode("ascii"))
        except (ValueError, TypeError, UnicodeEncodeError):
            raise SigningError(
                f"Vault returned an unreadable public key for {self.key_name} version {version}",
                key=self.key_name,
            ) from None

    # -- sign ---------------------------------------------------------------------------------

    def _sign_parameters(self, alg: Algorithm, signing_input: bytes) -> dict[str, Any]:
        """The ``transit/sign`` parameters (hvac ``sign_data`` keywords) for one signature."""
        params: dict[str, Any] = {
            "name": self._key,
            "mount_point": self._mount,
            "hash_input": base64.b64encode(signing_input).decode("ascii"),
            "key_version": self._version,
            # JWS form: ECDSA as raw r||s, and every signature base64url encoded.
            "marshaling_algorithm": "jws",
        }
        if alg.hash_name is not None:  # Ed25519 hashes internally; Vault ignores the field
            params["hash_algorithm"] = _HASH_ALGORITHMS[alg.hash_name]
        if alg.family == "RSA":
            params["signature_algorithm"] = alg.padding
            if alg.padding == "pss":
                # RFC 7518: salt = hash length. Vault's default ("auto") is the maximum.
                params["salt_length"] = "hash"
        return params

    async def _sign(self, alg: Algorithm, signing_input: bytes) -> bytes:
        params = self._sign_parameters(alg, signing_input)
        response = await self._call("sign", self._client.secrets.transit.sign_data, **params)
        return self._signature_from(response, alg)

    def _signature_from(self, response: Any, alg: Algorithm) -> bytes:
        data = response.get("data") if isinstance(response, Mapping) else None
        signature = data.get("signature") if isinstance(data, Mapping) else None
        if not isinstance(signature, str):
            raise SigningError(f"Vault returned no signature for {self.key_name}", key=self.key_name)
        warnings = response.get("warnings") if isinstance(response, Mapping) else None
        if alg.padding == "pss" and warnings and "salt_length" in str(warnings):
            raise SigningError(
                f"this Vault ignores salt_length (Vault 1.12+ and OpenBao support it), so "
                f"{alg.name} signatures from {self.key_name} would have the wrong PSS salt; "
                "upgrade Vault or use RS256",
                key=self.key_name,
            )
        match = _SIGNATURE.fullmatch(signature)
        if match is None:
            raise SigningError(f"Vault returned a malformed signature for {self.key_name}", key=self.key_name)
        version = int(match.group(1))
        reported = data.get("key_version", version) if isinstance(data, Mapping) else version
        if version != self._version or reported != self._version:
            raise SigningError(
                f"Vault signed with version {version} of {self.key_name}, not the pinned version "
                f"{self._version}",
                key=self.key_name,
            )
        try:
            return _decode_signature(match.group(2))
        except ValueError:
            raise SigningError(
                f"Vault returned a signature that is not base64 for {self.key_name}", key=self.key_name
            ) from None
