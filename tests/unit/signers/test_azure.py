"""AzureKeyVaultSigner without a network: URI parsing, argument checks, error mapping."""

from __future__ import annotations

from typing import Any

import pytest

from keyless_m2m import ConfigurationError, SigningError
from keyless_m2m.signers import AzureKeyVaultSigner, signer_from_uri
from keyless_m2m.signers.azure import map_azure_error, parse_key_vault_uri
from keyless_m2m.testing.emulators.azure_key_vault import AsyncFakeKeyVaultCredential, FakeKeyVaultCredential
from tests.helpers import require_module

az = require_module("azure.core.exceptions", reason="the azure extra is not installed")
identity = require_module("azure.identity", reason="the azure extra is not installed")
require_module("azure.keyvault.keys", reason="the azure extra is not installed")

VERSION = "0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("azurekms://myvault/m2m", ("https://myvault.vault.azure.net", "m2m", None)),
        (
            "azurekms://my-vault-01/m2m-key/" + VERSION,
            ("https://my-vault-01.vault.azure.net", "m2m-key", VERSION),
        ),
        ("azurekms://myvault.vault.azure.net/m2m", ("https://myvault.vault.azure.net", "m2m", None)),
        ("azurekms://myhsm.managedhsm.azure.net/k", ("https://myhsm.managedhsm.azure.net", "k", None)),
        ("azurekms://127.0.0.1:8443/k/" + VERSION, ("https://127.0.0.1:8443", "k", VERSION)),
        ("https://myvault.vault.azure.net/keys/m2m", ("https://myvault.vault.azure.net", "m2m", None)),
        ("https://myvault.vault.azure.net/keys/m2m/", ("https://myvault.vault.azure.net", "m2m", None)),
        (
            f"https://MyVault.vault.azure.net/keys/m2m/{VERSION}",
            ("https://myvault.vault.azure.net", "m2m", VERSION),
        ),
        ("https://v.vault.azure.cn:443/keys/k", ("https://v.vault.azure.cn:443", "k", None)),
    ],
)
def test_parse_key_vault_uri(uri: str, expected: tuple[str, str, str | None]) -> None:
    assert parse_key_vault_uri(uri) == expected


@pytest.mark.parametrize(
    "uri",
    [
        "azurekms://",
        "azurekms://myvault",
        "azurekms://myvault/",
        "azurekms://myvault/a/b/c",
        "azurekms://my_vault/key",  # underscore: not a vault name
        "azurekms://ab/key",  # too short
        "azurekms://1vault/key",  # must start with a letter
        "azurekms://myvault/bad_key",
        "azurekms://myvault/key/not-a-version!",
        "azurekms://myvault:99/key",
        "azurekms://user:pw@myvault.vault.azure.net/key",
        "azurekms://myvault/key?version=1",
        "http://myvault.vault.azure.net/keys/k",
        "https://myvault.vault.azure.net/secrets/k",
        "https://myvault.vault.azure.net/keys",
        "https://myvault.vault.azure.net/keys/k/v/extra",
        "https://myvault.vault.azure.net/keys/k#frag",
        "gcpkms://projects/x",
        "https://[::1/keys/k",
    ],
)
def test_parse_key_vault_uri_rejects(uri: str) -> None:
    with pytest.raises(ConfigurationError, match=r"Key Vault|azurekms URIs look like"):
        parse_key_vault_uri(uri)


def test_signer_from_uri_routes_both_forms() -> None:
    credential = FakeKeyVaultCredential()
    a = signer_from_uri("azurekms://myvault/m2m", credential=credential)
    b = signer_from_uri(f"https://myvault.vault.azure.net/keys/m2m/{VERSION}", credential=credential)
    c = signer_from_uri("https://myhsm.managedhsm.azure.net/keys/m2m", credential=credential, key_id="k1")
    assert isinstance(a, AzureKeyVaultSigner)
    assert isinstance(b, AzureKeyVaultSigner)
    assert isinstance(c, AzureKeyVaultSigner)
    assert a.key_name == "https://myvault.vault.azure.net/keys/m2m"
    assert b.key_name == f"https://myvault.vault.azure.net/keys/m2m/{VERSION}"
    assert c.vault_url == "https://myhsm.managedhsm.azure.net"


def test_constructor_forms_agree() -> None:
    by_url = AzureKeyVaultSigner(f"https://v1.vault.azure.net/keys/k/{VERSION}")
    by_parts = AzureKeyVaultSigner(vault_url="https://v1.vault.azure.net/", key_name="k", key_version=VERSION)
    assert by_url.key_name == by_parts.key_name == f"https://v1.vault.azure.net/keys/k/{VERSION}"
    assert "AzureKeyVaultSigner(key='https://v1.vault.azure.net/keys/k/" in repr(by_url)


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((), {}, "needs a key id URL"),
        (("https://v1.vault.azure.net/keys/k",), {"vault_url": "https://v1.vault.azure.net"}, "not both"),
        ((), {"vault_url": "https://v1.vault.azure.net"}, "needs a key id URL"),
        ((), {"vault_url": "http://v1.vault.azure.net", "key_name": "k"}, "https"),
        ((), {"vault_url": "https://v1.vault.azure.net/keys", "key_name": "k"}, "base URL"),
        ((), {"vault_url": "https://v1.vault.azure.net", "key_name": "bad name"}, "key name"),
        ((), {"vault_url": "https://v1.vault.azure.net", "key_name": "k", "key_version": "x/y"}, "version"),
        ((f"https://v1.vault.azure.net/keys/k/{VERSION}",), {"key_version": "other"}, "differs"),
        (("azurekms://myvault/k",), {}, "from_uri"),
        (("https://v1.vault.azure.net/keys/k",), {"algorithm": "EdDSA"}, "no EdDSA"),
        (("https://v1.vault.azure.net/keys/k",), {"algorithm": "HS256"}, "unknown JWS algorithm"),
        (("https://v1.vault.azure.net/keys/k",), {"key_id": "a", "kid": "b"}, "not both"),
        (("https://v1.vault.azure.net/keys/k",), {"key_id": "a", "use_key_vault_kid": True}, "exclude"),
        (("https://v1.vault.azure.net/keys/k",), {"key_id": ""}, "non-empty"),
        (("https://v1.vault.azure.net/keys/k",), {"credential": object()}, "TokenCredential"),
    ],
)
def test_constructor_rejects(args: tuple[Any, ...], kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        AzureKeyVaultSigner(*args, **kwargs)


def test_from_uri_rejects_conflicting_options() -> None:
    with pytest.raises(ConfigurationError, match="differs"):
        AzureKeyVaultSigner.from_uri(f"azurekms://myvault/k/{VERSION}", key_version="other")
    with pytest.raises(ConfigurationError, match="names the vault"):
        AzureKeyVaultSigner.from_uri("azurekms://myvault/k", key_name="x")


def test_constructor_does_no_io_and_accepts_both_credential_kinds() -> None:
    for credential in (FakeKeyVaultCredential(), AsyncFakeKeyVaultCredential(), None):
        signer = AzureKeyVaultSigner("https://v1.vault.azure.net/keys/k", credential=credential)
        assert signer._clients.value is None


# -- error mapping -------------------------------------------------------------------------

KEY = "https://v1.vault.azure.net/keys/k/" + VERSION
SENSITIVE = "Bearer eyJ0eXAi.secret-token"


def _http_error(
    status: int, code: str | None = None, inner: str | None = None, cls: type[Any] = az.HttpResponseError
) -> Any:
    exc = cls(message=f"{code}: request with {SENSITIVE} failed")
    exc.status_code = status
    if code is not None:
        body: dict[str, Any] = {"code": code, "message": f"message quoting {SENSITIVE}"}
        if inner:
            body["innererror"] = {"code": inner}
        exc.error = az.ODataV4Format(body)
    return exc


@pytest.mark.parametrize(
    ("status", "code", "retryable"),
    [
        (429, "Throttled", True),
        (500, "InternalServerError", True),
        (502, None, True),
        (503, "ServiceUnavailable", True),
        (408, "RequestTimeout", True),
        (400, "BadParameter", False),
        (401, "Unauthorized", False),
        (403, "Forbidden", False),
        (404, "KeyNotFound", False),
        (409, "Conflict", False),
    ],
)
def test_http_errors(status: int, code: str | None, retryable: bool) -> None:
    error = map_azure_error(_http_error(status, code), key=KEY, action="sign")
    assert isinstance(error, SigningError)
    assert error.retryable is retryable
    assert error.code == (code or f"HTTP {status}")
    assert error.key == KEY
    assert KEY in str(error)
    assert f"HTTP {status}" in str(error)
    assert "secret-token" not in str(error)
    assert "Bearer" not in str(error)


def test_inner_code_and_hints() -> None:
    forbidden = map_azure_error(_http_error(403, "Forbidden", "ForbiddenByRbac"), key=KEY, action="sign")
    assert "(ForbiddenByRbac)" in str(forbidden)
    assert "Key Vault Crypto User" in str(forbidden)
    missing = map_azure_error(
        _http_error(404, "KeyNotFound", cls=az.ResourceNotFoundError), key=KEY, action="get key"
    )
    assert "get key" in str(missing)
    assert "no such key" in str(missing)
    assert not missing.retryable


def test_credential_failures_are_not_retryable_and_say_nothing_of_the_provider_text() -> None:
    for exc in (
        az.ClientAuthenticationError(f"AADSTS7000215: invalid secret {SENSITIVE}"),
        identity.CredentialUnavailableError(f"EnvironmentCredential: {SENSITIVE}"),
    ):
        error = map_azure_error(exc, key=KEY, action="sign", vault_url="https://v1.vault.azure.net")
        assert not error.retryable
        assert error.code == type(exc).__name__
        assert "credential could not get an access token" in str(error)
        assert "secret" not in str(error)
        assert "AADSTS" not in str(error)


def test_connection_failures_are_retryable() -> None:
    for exc_type in (az.ServiceRequestError, az.ServiceResponseError):
        error = map_azure_error(exc_type(f"connection to {SENSITIVE} failed"), key=KEY, action="sign")
        assert error.retryable
        assert error.code == exc_type.__name__
        assert "secret-token" not in str(error)


def test_other_azure_errors_are_not_retryable() -> None:
    error = map_azure_error(az.AzureError(SENSITIVE), key=KEY, action="sign")
    assert not error.retryable
    assert error.code == "AzureError"
    assert "secret-token" not in str(error)
