"""What the HTTP-client integrations share: the bearer flow over one token source of the
kind their client runs (async or blocking), refused at once when it is the other kind."""

from __future__ import annotations

from typing import ClassVar, Generic, TypedDict, TypeVar, Unpack

from ..bearer import BearerFlow, is_async_source
from ..source import ResourceArg, ScopeArg, SyncTokenSource, TokenSource

__all__ = ["FlowHolder", "TokenOptions"]

SourceT = TypeVar("SourceT", TokenSource, SyncTokenSource)


class TokenOptions(TypedDict, total=False):
    """Which token an integration asks its source for (``get_token``'s arguments)."""

    scope: ScopeArg
    resource: ResourceArg
    audience: str | None


class FlowHolder(Generic[SourceT]):
    """Holds the :class:`~keyless_m2m.bearer.BearerFlow` of an integration's auth object;
    ``asynchronous`` says which kind of token source its client needs."""

    asynchronous: ClassVar[bool]

    def __init__(self, source: SourceT, **token: Unpack[TokenOptions]) -> None:
        if is_async_source(source) != self.asynchronous:
            wanted, other = (
                ("a TokenSource (TokenManager)", "SyncTokenManager")
                if self.asynchronous
                else ("a SyncTokenSource (SyncTokenManager)", "TokenManager")
            )
            kind = "an async" if self.asynchronous else "a blocking"
            raise TypeError(f"{type(self).__name__} runs on {kind} client: give it {wanted}, not a {other}")
        self._flow = BearerFlow(source, **token)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._flow!r})"
