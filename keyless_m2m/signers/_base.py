"""What every signer backend shares: the key description, describe-once caching, the
lazy import of an optional SDK, and the one way blocking SDK calls leave the event loop."""

from __future__ import annotations

import importlib
import re
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType, ModuleType
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from .._jose import ALGORITHMS, Algorithm, PublicKey, check_signature_length, jwk_thumbprint, public_jwk
from ..errors import ConfigurationError, MissingExtraError

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class KeyDescription:
    """What a signer says about its key.

    ``algorithm`` is the JWS ``alg``; ``key_id`` the ``kid`` put in every assertion header
    (by default the RFC 7638 thumbprint of the public key); ``public_jwk`` the public key as a
    JWK with ``kid``, ``alg`` and ``use="sig"``, ready to register with the authorization server.
    """

    algorithm: str
    key_id: str
    public_jwk: Mapping[str, str] = field(repr=False)

    @classmethod
    def for_public_key(
        cls, public_key: PublicKey, algorithm: str, key_id: str | None = None
    ) -> KeyDescription:
        jwk = public_jwk(public_key)
        kid = key_id if key_id is not None else jwk_thumbprint(jwk)
        full = {**jwk, "kid": kid, "alg": algorithm, "use": "sig"}
        return cls(algorithm=algorithm, key_id=kid, public_jwk=MappingProxyType(full))

    @property
    def jws_algorithm(self) -> Algorithm:
        return ALGORITHMS[self.algorithm]


def running_async_library() -> str | None:
    """``"trio"``, ``"asyncio"``, or ``None`` outside an event loop.

    Backends whose SDK has an asyncio-only async client (grpc.aio, aiohttp) pick their
    client by this. It is what anyio does itself, without depending on ``sniffio`` (which
    recent anyio no longer installs).
    """
    trio = sys.modules.get("trio")
    if trio is not None:
        try:
            trio.lowlevel.current_task()
        except RuntimeError:
            pass
        else:
            return "trio"
    import asyncio  # detection only; the library uses no asyncio primitive

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return None
    return "asyncio"


async def run_blocking(func: Callable[[], _T], limiter: anyio.CapacityLimiter | None = None) -> _T:
    """Run one blocking SDK call (boto3, hvac, the synchronous Azure and Cloud KMS clients)
    in a worker thread, without holding a caller that is cancelled.

    A cancellation (the caller's own scope, the token endpoint's deadline) releases the
    caller at once even while the SDK call hangs: the thread is abandoned, runs on until
    the SDK's own connect/read timeouts end it (every client a signer builds has finite
    ones), and its result or error is dropped. An abandoned thread no longer counts against
    ``limiter``.
    """
    return await anyio.to_thread.run_sync(func, abandon_on_cancel=True, limiter=limiter)


def refuse_uri_credentials(uri: str, what: str, hint: str = "") -> None:
    """Refuse ``user:password@`` in a signer URI's authority, before any part of the URI is
    shown in a message: no backend takes credentials there, and one pasted by mistake
    must not come back in this or any later error."""
    authority = re.split(r"[/?#]", uri.partition("://")[2].lstrip("/"), maxsplit=1)[0]
    if "@" in authority:
        raise ConfigurationError(f"{what} must not carry credentials{hint}")


def import_extra(module: str, extra: str) -> ModuleType:
    """Import an optional SDK, or raise :class:`MissingExtraError` naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(extra, module) from None


class CachedDescriptionSigner(ABC):
    """Base for backends: ``describe()`` runs ``_load_description()`` once and caches it;
    ``sign()`` checks the signature length the backend returns.

    Users' own signers need not inherit from this: the :class:`~keyless_m2m.signers.Signer`
    protocol is all the library relies on.
    """

    _description: KeyDescription | None = None
    _describe_lock: anyio.Lock | None = None

    @property
    @abstractmethod
    def key_name(self) -> str:
        """A printable name of the key (id, ARN, URL; never key material)."""

    @abstractmethod
    async def _load_description(self) -> KeyDescription:
        """Fetch the public key and decide the algorithm (called once)."""

    @abstractmethod
    async def _sign(self, alg: Algorithm, signing_input: bytes) -> bytes:
        """The raw JWS signature of ``signing_input``."""

    async def describe(self) -> KeyDescription:
        if self._description is not None:
            return self._description
        if self._describe_lock is None:
            self._describe_lock = anyio.Lock()
        async with self._describe_lock:
            if self._description is None:
                self._description = await self._load_description()
        return self._description

    async def sign(self, signing_input: bytes) -> bytes:
        description = self._description or await self.describe()
        alg = description.jws_algorithm
        signature = await self._sign(alg, signing_input)
        return check_signature_length(alg, signature, key=self.key_name)

    async def aclose(self) -> None:  # noqa: B027 - most backends hold nothing to close
        """Release SDK clients the signer created (clients passed in are left open)."""

    def __repr__(self) -> str:
        alg = self._description.algorithm if self._description else "?"
        return f"{type(self).__name__}(key={self.key_name!r}, alg={alg})"


def ensure_kid(kid: Any) -> str | None:
    if kid is None:
        return None
    if not isinstance(kid, str) or not kid:
        raise ConfigurationError("key_id must be a non-empty string")
    return kid
