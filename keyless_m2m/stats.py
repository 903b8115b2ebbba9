"""Counters: what each component did, as frozen snapshots for tests, benchmarks and metrics.

Each component counts on its own and hands out frozen snapshots: the token endpoint what
it sends (:class:`EndpointStats` from ``endpoint.stats``); the token manager what its
callers and flights did, with its endpoint's counts, as one :class:`TokenStats` from
``manager.stats``. A snapshot never changes after it is taken. Nothing here imports
anything above it.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["EndpointStats", "TokenStats"]


@dataclass(frozen=True, slots=True)
class EndpointStats:
    """A snapshot of what one :class:`~keyless_m2m.endpoint.TokenEndpoint` sent:
    ``requests`` (HTTP attempts), ``signatures`` (client assertions signed) and
    ``dpop_proofs`` (DPoP proofs signed for token requests) (``endpoint.stats``)."""

    requests: int = 0
    signatures: int = 0
    dpop_proofs: int = 0


@dataclass(frozen=True, slots=True)
class TokenStats:
    """A snapshot of a token manager's counters (``manager.stats``).

    ``requests``: HTTP attempts at the token endpoint; ``signatures``: client assertions
    signed; ``dpop_proofs``: DPoP proofs signed (for token requests and, through
    ``auth()``, for API requests); ``failures``: token fetches (flights) that ended in
    an error; ``waits``: callers that had to wait for a flight; ``refreshes``: flights
    started (cold, background or after invalidation); ``served_stale``: calls answered
    with a still-valid token while a refresh was failing; ``shared_hits``: fetches
    answered by the shared token cache (another manager or process had fetched the
    token); ``evictions``: still-valid tokens dropped to keep the manager within
    ``max_entries``; ``handovers``: flights whose leader was cancelled (outside ``async
    with``) and that a waiter started again; ``ignored_invalidations``: ``invalidate()``
    calls refused because the entry's token had already been invalidated less than
    ``min_invalidation_interval`` ago (an API that rejects every token would otherwise
    cause one token request per API call).
    """

    requests: int = 0
    signatures: int = 0
    dpop_proofs: int = 0
    failures: int = 0
    waits: int = 0
    refreshes: int = 0
    served_stale: int = 0
    shared_hits: int = 0
    evictions: int = 0
    handovers: int = 0
    ignored_invalidations: int = 0
