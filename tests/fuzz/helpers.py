"""What every fuzz property checks: only typed errors, no secret anywhere in them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

import anyio

from keyless_m2m import KeylessM2MError
from tests.helpers import exception_texts

T = TypeVar("T")


def assert_clean(exc: BaseException, secrets: Iterable[str]) -> None:
    assert isinstance(exc, KeylessM2MError), f"untyped {type(exc).__name__}: {exc!r}"
    haystack = "\n".join(exception_texts(exc))  # message, repr, attributes, traceback, chain
    for secret in secrets:
        assert secret not in haystack, f"secret {secret[:6]}... in {type(exc).__name__}"


def run_bounded(fn: Callable[[], Awaitable[T]], *, seconds: float = 10.0, backend: str = "asyncio") -> T:
    """Run ``fn`` on a fresh event loop; a hang is a failure (``TimeoutError``)."""

    async def bounded() -> Any:
        with anyio.fail_after(seconds):
            return await fn()

    result: T = anyio.run(bounded, backend=backend)
    return result
