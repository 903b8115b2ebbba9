"""Fixtures of the signer backends' integration tests: one ``moto_server`` and one
OpenBao (and Vault) dev server per session, shared by the backend's own tests and the
certificate tests (the servers are in tests/moto_server.py and tests/vault_server.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.moto_server import MotoServer, running_moto_server
from tests.vault_server import SERVERS, VaultServer, running_server


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """A ``moto_server`` process; clients bring their own dummy credentials and region."""
    with running_moto_server(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture(scope="session", params=SERVERS)
def vault_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VaultServer]:
    """A dev server with the transit engine and one key of each type (``KEY_TYPES``)."""
    with running_server(request.param, tmp_path_factory.mktemp(request.param)) as server:
        yield server
