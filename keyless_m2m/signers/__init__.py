"""Signers: where the client assertion's signature is made.

A signer is anything that satisfies the :class:`Signer` protocol. The backends shipped
here wrap a local PEM key or a KMS/HSM key whose private half never leaves the service::

    from keyless_m2m.signers import signer_from_uri
    signer = signer_from_uri("awskms:///alias/payments-m2m")

Backend classes are imported lazily: ``from keyless_m2m.signers import AwsKmsSigner``
loads boto3 only then, and a missing extra raises ``MissingExtraError`` naming it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

from ..errors import ConfigurationError
from ._base import CachedDescriptionSigner, KeyDescription

if TYPE_CHECKING:
    from .local import LocalSigner

__all__ = [
    "AwsKmsSigner",
    "AzureKeyVaultSigner",
    "CachedDescriptionSigner",
    "GcpKmsSigner",
    "KeyDescription",
    "LocalSigner",
    "Pkcs11Signer",
    "Signer",
    "VaultTransitSigner",
    "known_schemes",
    "signer_from_uri",
]


@runtime_checkable
class Signer(Protocol):
    """Makes JWS signatures with a key it describes.

    ``describe()`` is resolved once and cached by implementations; ``sign()`` returns the
    final JWS signature bytes (raw ``r || s`` for ECDSA, PSS salt = hash length).
    """

    async def describe(self) -> KeyDescription: ...

    async def sign(self, signing_input: bytes) -> bytes: ...

    async def aclose(self) -> None: ...


# scheme -> (module, class); each class has a ``from_uri(uri: str)`` classmethod.
_SCHEMES: dict[str, tuple[str, str]] = {
    "file": ("local", "LocalSigner"),
    "awskms": ("aws", "AwsKmsSigner"),
    "gcpkms": ("gcp", "GcpKmsSigner"),
    "azurekms": ("azure", "AzureKeyVaultSigner"),
    "hashivault": ("vault", "VaultTransitSigner"),
    "pkcs11": ("pkcs11", "Pkcs11Signer"),  # RFC 7512: pkcs11:ATTRIBUTES, no "//"
}
_LAZY = {cls: mod for mod, cls in _SCHEMES.values()}


def known_schemes() -> list[str]:
    return sorted(_SCHEMES)


def _backend(module: str, name: str) -> Any:
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def signer_from_uri(uri: str, **options: Any) -> Signer:
    """One URI names any key (the scheme names cosign made familiar).

    - ``file:///path/key.pem``
    - ``awskms:///alias/name``, ``awskms:///arn:aws:kms:...``, ``awskms://HOST:PORT/alias/x``
    - ``gcpkms://projects/P/locations/L/keyRings/R/cryptoKeys/K/cryptoKeyVersions/N``
    - ``azurekms://VAULT_NAME/KEY[/VERSION]`` or ``https://NAME.vault.azure.net/keys/KEY[/V]``
    - ``hashivault://KEY[?version=N&mount=transit]`` (address/token from ``VAULT_ADDR``/``VAULT_TOKEN``)
    - ``pkcs11:token=LABEL;object=LABEL?module-path=/path/module.so&pin-source=FILE`` (RFC 7512)

    ``options`` (``algorithm=``, ``key_id=``, backend specifics) go to the backend.
    """
    if isinstance(uri, str) and uri[:7].lower() == "pkcs11:":
        signer: Signer = _backend(*_SCHEMES["pkcs11"]).from_uri(uri, **options)
        return signer
    if not isinstance(uri, str) or "://" not in uri:
        raise ConfigurationError(
            "not a signer URI (expected SCHEME://... or pkcs11:...); "
            f"known schemes: {', '.join(known_schemes())}"
        )
    try:
        scheme = urlsplit(uri).scheme.lower()
    except ValueError:
        scheme = ""
    if scheme == "https":
        host = (urlsplit(uri).hostname or "").lower()
        if host.endswith((".vault.azure.net", ".managedhsm.azure.net")):
            scheme = "azurekms"
    target = _SCHEMES.get(scheme)
    if target is None:
        raise ConfigurationError(
            f"unknown signer URI scheme {scheme!r}; known schemes: {', '.join(known_schemes())}"
        )
    signer = _backend(*target).from_uri(uri, **options)
    return signer


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return _backend(module, name)
