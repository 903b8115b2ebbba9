"""Pkcs11Signer without a token: RFC 7512 URI parsing, the PIN's sources and refusals, the
missing extra, and the extractability check against both python-pkcs11's and PyKCS11's
ways of not telling (the real token is in tests/integration/signers/test_pkcs11.py)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import pytest

from keyless_m2m.errors import ConfigurationError, MissingExtraError
from keyless_m2m.signers import pkcs11 as backend
from keyless_m2m.signers import signer_from_uri
from tests.helpers import exception_texts, require_module

pkcs11 = require_module("pkcs11", reason="the pkcs11 extra (python-pkcs11) is not installed")


@pytest.fixture
def module(tmp_path: Path) -> Path:
    path = tmp_path / "libfake-pkcs11.so"
    path.write_bytes(b"")  # the constructor checks only that the file exists
    return path


def test_parse_path_and_query() -> None:
    parsed = backend.parse_pkcs11_uri(
        "pkcs11:token=My%20Token;object=m2m;id=%01%ff;slot-id=3?module-path=/x/p11.so&pin-source=file:///run/pin"
    )
    assert parsed.path == {"token": "My Token", "object": "m2m", "id": b"\x01\xff", "slot-id": "3"}
    assert parsed.query == {"module-path": "/x/p11.so", "pin-source": "file:///run/pin"}


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("pkcs11:token=a;token=b", "twice"),
        ("pkcs11:token=a;colour=red", "unknown pkcs11 URI path attribute 'colour'"),
        ("pkcs11:token=a?verbose=1", "unknown pkcs11 URI query attribute 'verbose'"),
        ("pkcs11:token", "NAME=VALUE"),
        ("pkcs11:token=%ff", "UTF-8"),
        ("pkcs:token=a", "looks like pkcs11:"),
    ],
)
def test_malformed_uris(uri: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        backend.parse_pkcs11_uri(uri)


def test_pin_value_is_refused_and_never_echoed(module: Path) -> None:
    pin = "7a3f91c2e4d6"
    with pytest.raises(ConfigurationError, match="must not carry the PIN") as info:
        signer_from_uri(f"pkcs11:token=t;object=k?module-path={module}&pin-value={pin}")
    assert not [t for t in exception_texts(info.value) if pin in t]


def test_unknown_attribute_shows_its_name_not_its_value() -> None:
    secret = "hunter2-but-longer"
    with pytest.raises(ConfigurationError) as info:
        signer_from_uri(f"pkcs11:token=t;object=k?pin={secret}")
    assert "'pin'" in str(info.value) and secret not in str(info.value)


@pytest.mark.parametrize("source", ["|/bin/cat /run/pin", "https://example.invalid/pin", "file://host/pin"])
def test_pin_source_must_be_a_local_file(module: Path, source: str) -> None:
    with pytest.raises(ConfigurationError, match="pin-source must be"):
        backend.Pkcs11Signer(module, token_label="t", label="k", pin_source=source)


def test_pin_file_newline_is_not_the_pins(module: Path, tmp_path: Path) -> None:
    pin_file = tmp_path / "pin"
    pin_file.write_text("1234\n")
    signer = backend.Pkcs11Signer(module, token_label="t", label="k", pin_source=pin_file)
    assert signer._pin.reveal() == "1234"
    assert "1234" not in repr(signer) and "1234" not in repr(vars(signer))


def test_pin_from_the_environment(module: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(backend.PIN_ENVIRONMENT_VARIABLE, "5678")
    signer = signer_from_uri(f"pkcs11:token=t;object=k?module-path={module}")
    assert isinstance(signer, backend.Pkcs11Signer) and signer._pin.reveal() == "5678"


def test_no_pin_at_all(module: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(backend.PIN_ENVIRONMENT_VARIABLE, raising=False)
    with pytest.raises(ConfigurationError, match="no PIN"):
        backend.Pkcs11Signer(module, token_label="t", label="k")


def test_uri_options_and_conflicts(module: Path) -> None:
    uri = f"pkcs11:token=t;object=k;slot-id=2?module-path={module}&x-require-non-extractable=true"
    signer = signer_from_uri(uri, pin="1")
    assert isinstance(signer, backend.Pkcs11Signer)
    assert signer._strict is True and signer._slot_id == 2 and signer._token_label == "t"
    with pytest.raises(ConfigurationError, match="both in the URI"):
        signer_from_uri(uri, pin="1", label="other")
    with pytest.raises(ConfigurationError, match="true or false"):
        signer_from_uri(
            f"pkcs11:token=t;object=k?module-path={module}&x-require-non-extractable=maybe", pin="1"
        )
    with pytest.raises(ConfigurationError, match="private key"):
        signer_from_uri(f"pkcs11:token=t;object=k;type=cert?module-path={module}", pin="1")


def test_module_must_exist_and_be_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(backend.MODULE_ENVIRONMENT_VARIABLE, raising=False)
    with pytest.raises(ConfigurationError, match="does not exist"):
        backend.Pkcs11Signer(tmp_path / "missing.so", token_label="t", label="k", pin="1")
    with pytest.raises(ConfigurationError, match="absolute"):
        backend.Pkcs11Signer("relative.so", token_label="t", label="k", pin="1")
    with pytest.raises(ConfigurationError, match="no PKCS#11 module"):
        backend.Pkcs11Signer(token_label="t", label="k", pin="1")


def test_missing_extra(module: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pkcs11", None)
    with pytest.raises(MissingExtraError) as info:
        backend.Pkcs11Signer(module, token_label="t", label="k", pin="1")
    assert info.value.extra == "pkcs11" and "keyless-m2m[pkcs11]" in str(info.value)


# -- extractability: "unknown" is never "false" ------------------------------------------------------


class FakeKey:
    """A key whose attributes come from a dict; a missing one behaves as ``missing`` says:
    PyKCS11 returns ``None`` for a sensitive attribute, python-pkcs11 raises."""

    def __init__(self, values: dict[Any, Any], missing: str) -> None:
        self.values = values
        self.missing = missing

    def __getitem__(self, attribute: Any) -> Any:
        if attribute in self.values:
            return self.values[attribute]
        if self.missing == "none":
            return None
        raise pkcs11.exceptions.AttributeSensitive()


@pytest.mark.parametrize("missing", ["none", "raise"])
def test_unreadable_extractability_is_refused_when_strict(
    module: Path, missing: str, caplog: pytest.LogCaptureFixture
) -> None:
    key = FakeKey({pkcs11.Attribute.SIGN: True}, missing)
    strict = backend.Pkcs11Signer(module, token_label="t", label="k", pin="1", require_non_extractable=True)
    with pytest.raises(ConfigurationError, match="does not say whether it is extractable"):
        strict._check_key(key)
    backend._warned_extractable.clear()
    lenient = backend.Pkcs11Signer(module, token_label="t", label="k", pin="1")
    with caplog.at_level(logging.WARNING, logger="keyless_m2m"):
        lenient._check_key(key)
    assert [r.levelno for r in caplog.records] == [logging.WARNING]


@pytest.mark.parametrize("missing", ["none", "raise"])
def test_no_sign_attribute_is_refused(module: Path, missing: str) -> None:
    signer = backend.Pkcs11Signer(module, token_label="t", label="k", pin="1")
    with pytest.raises(ConfigurationError, match="CKA_SIGN"):
        signer._check_key(FakeKey({}, missing))


def test_non_extractable_key_passes_silently(module: Path, caplog: pytest.LogCaptureFixture) -> None:
    attribute = pkcs11.Attribute
    key = FakeKey({attribute.SIGN: True, attribute.EXTRACTABLE: False, attribute.SENSITIVE: True}, "raise")
    signer = backend.Pkcs11Signer(module, token_label="t", label="k", pin="1", require_non_extractable=True)
    with caplog.at_level(logging.WARNING, logger="keyless_m2m"):
        signer._check_key(key)
    assert caplog.records == []


@pytest.mark.parametrize(
    ("data", "point"),
    [
        (bytes.fromhex("0441") + b"\x04" + b"\x01" * 64, b"\x04" + b"\x01" * 64),
        (bytes.fromhex("0420") + b"\x02" * 32, b"\x02" * 32),
        (bytes.fromhex("048185") + b"\x04" + b"\x03" * 132, b"\x04" + b"\x03" * 132),
        (b"\x04" + b"\x01" * 64, b"\x04" + b"\x01" * 64),  # a raw point, not wrapped
    ],
)
def test_ec_point_octet_string(data: bytes, point: bytes) -> None:
    assert backend._der_octet_string(data) == point
