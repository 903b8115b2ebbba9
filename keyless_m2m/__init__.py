"""keyless-m2m: OAuth 2.0 client-credentials tokens with ``private_key_jwt`` assertions
signed inside a KMS/HSM (or by a local key), cached and refreshed by an anyio token manager.

>>> from keyless_m2m import TokenManager, PrivateKeyJWT
>>> from keyless_m2m.signers import LocalSigner
"""

from __future__ import annotations

# First: in the keyless-m2m command's process, skip what it never uses (see _startup).
from . import _startup  # noqa: F401  # isort: skip
from .assertions import WorkloadIdentity
from .client_auth import (
    ClientAuth,
    ClientSecretBasic,
    ClientSecretPost,
    PrivateKeyJWT,
    SelfSignedTlsClientAuth,
    TlsClientAuth,
)
from .errors import (
    AssertionSourceError,
    CacheDecryptionError,
    CacheError,
    CacheUnavailableError,
    ConfigurationError,
    DiscoveryError,
    InvalidClientError,
    InvalidDPoPProofError,
    InvalidGrantError,
    InvalidRequestError,
    InvalidScopeError,
    InvalidTargetError,
    InvalidTokenResponseError,
    KeylessM2MError,
    ManagerClosedError,
    MissingExtraError,
    RefusedWithoutReasonError,
    ServerError,
    SigningError,
    TemporarilyUnavailableError,
    TokenRequestError,
    TransportError,
    UnauthorizedClientError,
    UnsupportedGrantTypeError,
)
from .manager import TokenManager
from .sync import SyncTokenManager
from .token import AccessToken

__version__ = "0.1.0.dev0"

__all__ = [
    "AccessToken",
    "AssertionSourceError",
    "CacheDecryptionError",
    "CacheError",
    "CacheUnavailableError",
    "ClientAuth",
    "ClientSecretBasic",
    "ClientSecretPost",
    "ConfigurationError",
    "DiscoveryError",
    "InvalidClientError",
    "InvalidDPoPProofError",
    "InvalidGrantError",
    "InvalidRequestError",
    "InvalidScopeError",
    "InvalidTargetError",
    "InvalidTokenResponseError",
    "KeylessM2MError",
    "ManagerClosedError",
    "MissingExtraError",
    "PrivateKeyJWT",
    "RefusedWithoutReasonError",
    "SelfSignedTlsClientAuth",
    "ServerError",
    "SigningError",
    "SyncTokenManager",
    "TemporarilyUnavailableError",
    "TlsClientAuth",
    "TokenManager",
    "TokenRequestError",
    "TransportError",
    "UnauthorizedClientError",
    "UnsupportedGrantTypeError",
    "WorkloadIdentity",
    "__version__",
]
