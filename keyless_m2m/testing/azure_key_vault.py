"""Deprecated import path: use :mod:`keyless_m2m.testing.emulators.azure_key_vault`.

The fake Key Vault moved into ``keyless_m2m.testing.emulators`` with the other vendor
emulators; this module re-exports its names so that existing imports keep working.
"""

from __future__ import annotations

from .emulators.azure_key_vault import (
    DEFAULT_KEY_OPS,
    DEFAULT_TENANT,
    DEFAULT_TOKEN,
    KEY_VAULT_RESOURCE,
    AsyncFakeKeyVaultCredential,
    FakeKeyVault,
    FakeKeyVaultCredential,
    KeyVaultFault,
    RecordedRequest,
)

__all__ = [
    "DEFAULT_KEY_OPS",
    "DEFAULT_TENANT",
    "DEFAULT_TOKEN",
    "KEY_VAULT_RESOURCE",
    "AsyncFakeKeyVaultCredential",
    "FakeKeyVault",
    "FakeKeyVaultCredential",
    "KeyVaultFault",
    "RecordedRequest",
]
