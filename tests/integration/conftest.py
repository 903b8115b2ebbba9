"""Integration fixtures: a real oidc-provider authorization server on loopback (its
clients and constants are in tests/oidc_provider/clients.py); a throwaway CA and one
client certificate it issued, per module (the mutual-TLS tests); the summary of the
documentation's examples that ran (tests/integration/test_docs_run.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from keyless_m2m.testing.tls import ClientFiles, TestAuthority
from tests.oidc_provider.clients import AuthServer, ProviderPool


@pytest.fixture(scope="module")
def authority(tmp_path_factory: pytest.TempPathFactory) -> TestAuthority:
    return TestAuthority(str(tmp_path_factory.mktemp("ca")))


@pytest.fixture(scope="module")
def billing(authority: TestAuthority) -> ClientFiles:
    """A client certificate for ``billing.svc.example``."""
    return authority.issue_client("billing", dns_names=("billing.svc.example",))


@pytest.fixture(scope="session")
def oidc_servers() -> Iterator[ProviderPool]:
    """oidc-provider in each configuration profile, each started when a test first asks
    for it (``oidc_servers.get("fapi2")``), all stopped when the session ends."""
    with ProviderPool() as pool:
        yield pool


@pytest.fixture(scope="session")
def oidc_provider(oidc_servers: ProviderPool) -> AuthServer:
    """The ``default`` configuration: every method and algorithm, any usual ``aud``."""
    return oidc_servers.get("default")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """How many examples of each document ran and were skipped (test_docs_run.py records
    them; with pytest-xdist the reports come back to the controller with the counts)."""
    counts = [
        (report.nodeid.partition("[")[2].rstrip("]"), value)
        for report in terminalreporter.getreports("passed") + terminalreporter.getreports("failed")
        if report.when == "call"
        for name, value in report.user_properties
        if name == "docs_examples"
    ]
    if not counts:
        return
    terminalreporter.section("documentation examples")
    for case, (ran, skipped) in sorted(counts):
        terminalreporter.write_line(f"{case}: {ran} ran, {skipped} skipped")
    ran = sum(r for _, (r, _) in counts)
    skipped = sum(s for _, (_, s) in counts)
    terminalreporter.write_line(f"total: {ran} ran, {skipped} skipped, in {len(counts)} files")
