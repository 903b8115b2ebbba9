"""What the HTTP-client integrations share: the bearer flow over one token source of the
kind their client runs (async or blocking), refused at once when it is the other kind."""

from __future__ import annotations

from typing import ClassVar, Generic, TypeVar

from ..bearer import BearerFlow, is_async_source
from ..source import ResourceArg, ScopeArg, SyncTokenSource, TokenSource

__all__ = ["FlowHolder"]

SourceT = TypeVar("SourceT", TokenSource, SyncTokenSource)


class FlowHolder(Generic[SourceT]):
    """Holds the :class:`~keyless_m2m.bearer.BearerFlow` of an integration's auth object;
    ``asynchronous`` says which kind of token source its client needs."""

    asynchronous: ClassVar[bool]

    def __init__(
        self,
        source: SourceT,
        *,
        scope: ScopeArg = None,
        resource: ResourceArg = None,
        audience: str | None = None,
    ) -> None:
        if is_async_source(source) != self.asynchronous:
            wanted, other = (
                ("a TokenSource (TokenManager)", "SyncTokenManager")
                if self.asynchronous
                else ("a SyncTokenSource (SyncTokenManager)", "TokenManager")
            )
            kind = "an async" if self.asynchronous else "a blocking"
            raise TypeError(f"{type(self).__name__} runs on {kind} client: give it {wanted}, not a {other}")
        self._flow = BearerFlow(source, scope=scope, resource=resource, audience=audience)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._flow!r})"
