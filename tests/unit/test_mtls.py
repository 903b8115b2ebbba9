"""Mutual TLS pieces without a network: how a TLS alert is named, which combinations of
certificate and ``verify=`` are refused, a certificate file that is not one, and the
``mtls_endpoint_aliases`` of a metadata document."""

from __future__ import annotations

import ssl
from datetime import UTC, datetime
from pathlib import Path

import pytest

from keyless_m2m import ClientSecretPost, ConfigurationError, DiscoveryError, TlsClientAuth
from keyless_m2m._http import transport_failure
from keyless_m2m.discovery import _parse
from keyless_m2m.endpoint import TokenEndpoint
from keyless_m2m.mtls import ClientCertificate, client_ssl_context
from keyless_m2m.testing.tls import TestAuthority


def _alert(reason: str) -> ssl.SSLError:
    error = ssl.SSLError(1, f"[SSL: {reason}] alert")
    error.reason = reason
    return error


@pytest.mark.parametrize(
    ("reason", "said"),
    [
        ("TLSV13_ALERT_CERTIFICATE_REQUIRED", "requires a TLS client certificate and none was presented"),
        ("TLSV1_ALERT_UNKNOWN_CA", "does not trust the issuer of the TLS client certificate"),
        ("SSLV3_ALERT_CERTIFICATE_EXPIRED", "it has expired"),
    ],
)
def test_client_certificate_alerts_are_named(reason: str, said: str) -> None:
    kind, text, retryable = transport_failure(_alert(reason), "auth.example")
    assert kind == "tls_client_certificate" and said in text and not retryable


def test_other_tls_failures_keep_their_kind() -> None:
    assert transport_failure(_alert("WRONG_VERSION_NUMBER"), "auth.example")[0] == "tls"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, str]:
    authority = TestAuthority(str(tmp_path_factory.mktemp("ca")))
    client = authority.issue_client("unit")
    return client.certificate, client.key, authority.ca_file


def test_refused_combinations(files: tuple[str, str, str]) -> None:
    cert, key, ca = files
    auth = TlsClientAuth("unit", cert, key)
    with pytest.raises(ConfigurationError, match="load the certificate into your context"):
        TokenEndpoint("https://auth.example/token", auth, verify=ssl.create_default_context(cafile=ca))
    with pytest.raises(ConfigurationError, match="do not pass client_certificate= too"):
        TokenEndpoint("https://auth.example/token", auth, client_certificate=ClientCertificate(cert, key))
    with pytest.raises(ConfigurationError, match="client_certificate must be"):
        TokenEndpoint("https://auth.example/token", auth, client_certificate=cert)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="has no client certificate"):
        client_ssl_context(ClientSecretPost("unit", "a-secret"))
    with pytest.raises(ConfigurationError, match="load the client certificate into it yourself"):
        client_ssl_context(auth, verify=ssl.create_default_context())
    with pytest.raises(ConfigurationError, match="does not belong to the certificate"):
        ClientCertificate(cert, TestAuthority(str(Path(key).parent)).issue_client("other").key)
    endpoint = TokenEndpoint("https://auth.example/token", auth, verify=ca)
    assert endpoint.client_certificate is auth.client_certificate
    context = client_ssl_context(endpoint, verify=ca)
    assert isinstance(context, ssl.SSLContext) and context.verify_mode == ssl.CERT_REQUIRED


def test_a_file_without_a_certificate(tmp_path: Path, files: tuple[str, str, str]) -> None:
    _, key, _ = files
    with pytest.raises(ConfigurationError, match="holds no PEM certificate"):
        ClientCertificate(key)
    with pytest.raises(ConfigurationError, match="cannot read it"):
        ClientCertificate(tmp_path / "missing.pem", key)
    with pytest.raises(ConfigurationError, match="needs certificate="):
        ClientCertificate()


def _metadata(aliases: object, url: str = "https://auth.example/.well-known/openid-configuration") -> object:
    data = {"issuer": "https://auth.example", "token_endpoint": "https://auth.example/token"}
    data["mtls_endpoint_aliases"] = aliases  # type: ignore[assignment]
    return _parse("https://auth.example", url, data, None, datetime.now(UTC), False)


def test_mtls_endpoint_aliases_are_checked() -> None:
    metadata = _metadata({"token_endpoint": "https://mtls.auth.example/token", "other": 3})
    assert metadata.mtls_endpoint_aliases == {"token_endpoint": "https://mtls.auth.example/token"}  # type: ignore[attr-defined]
    with pytest.raises(DiscoveryError, match="not an object"):
        _metadata(["https://mtls.auth.example/token"])
    with pytest.raises(DiscoveryError, match="not a URL string") as info:
        _metadata({"token_endpoint": 42})
    assert info.value.reason == "unusable_token_endpoint"
    with pytest.raises(DiscoveryError, match=r"plain http:// mtls_endpoint_aliases\.token_endpoint"):
        _metadata({"token_endpoint": "http://127.0.0.1:9/token"})
