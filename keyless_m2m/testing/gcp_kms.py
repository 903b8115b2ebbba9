"""Deprecated import path: use :mod:`keyless_m2m.testing.emulators.gcp_kms`.

The fake Cloud KMS moved into ``keyless_m2m.testing.emulators`` with the other vendor
emulators; this module re-exports its names so that existing imports keep working.
"""

from __future__ import annotations

from .emulators.gcp_kms import (
    GET_PUBLIC_KEY,
    SERVICE,
    SIGN,
    CorruptResponse,
    FakeCloudKms,
    FakeKeyVersion,
    RpcFault,
)

__all__ = [
    "GET_PUBLIC_KEY",
    "SERVICE",
    "SIGN",
    "CorruptResponse",
    "FakeCloudKms",
    "FakeKeyVersion",
    "RpcFault",
]
