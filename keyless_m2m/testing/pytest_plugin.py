"""pytest fixtures for testing code that uses keyless-m2m.

Installed with the package and loaded by pytest through the ``pytest11`` entry point, so
the fixtures are there in any test suite once ``keyless-m2m`` is installed:

- ``authorization_server``: a started
  :class:`~keyless_m2m.testing.authorization_server.AuthorizationServer` on loopback (a
  fresh one per test, with no clients), stopped after the test;
- ``in_memory_signer``: an ES256 :class:`~keyless_m2m.testing.signers.InMemorySigner`
  (a fresh key per test);
- ``manual_clock``: an installed :class:`~keyless_m2m.testing.clock.ManualClock` (the
  library's clock, moved by ``manual_clock.advance(seconds)``), restored after the test.

A fixture of the same name in your own ``conftest.py`` takes precedence. To turn the
plugin off: ``pytest -p no:keyless_m2m``. pytest imports installed plugins at start-up in
every project, so the test kit's modules are imported only when a test asks for one of
these fixtures.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .authorization_server import AuthorizationServer
    from .clock import ManualClock
    from .signers import InMemorySigner

__all__ = ["authorization_server", "in_memory_signer", "manual_clock"]


@pytest.fixture
def authorization_server() -> Iterator[AuthorizationServer]:
    """A started loopback authorization server with no clients; register yours."""
    from .authorization_server import AuthorizationServer

    with AuthorizationServer() as server:
        yield server


@pytest.fixture
def in_memory_signer() -> InMemorySigner:
    """A throwaway ES256 signer; register ``in_memory_signer.jwks`` with the server."""
    from .signers import InMemorySigner

    return InMemorySigner("ES256")


@pytest.fixture
def manual_clock() -> Iterator[ManualClock]:
    """The library's clock under the test's control: ``manual_clock.advance(3600)`` instead
    of sleeping past a token's expiry. Build the manager inside the test."""
    from .clock import ManualClock

    with ManualClock() as clock:
        yield clock
