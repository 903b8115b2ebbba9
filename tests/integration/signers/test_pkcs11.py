"""Pkcs11Signer against a real SoftHSM2 token: the signer contract for every JWS algorithm,
the URI, the PIN's sources and its hygiene, every typed error (module, PIN, token, object,
CKA_SIGN, extractability), the session pool's bound, and tokens from the embedded
authorization server and the real oidc-provider with a token-held key.

SoftHSM2 comes from ``tests/softhsm.py`` (the system's, else Debian's packages extracted
into ``.cache/softhsm2``; under ``CI=true`` a missing one fails). The token is made once per
session with its own ``SOFTHSM2_CONF``: SoftHSM2 reads it when the module is initialised,
once per process, so every token and key the tests use is made up front.
"""

from __future__ import annotations

import logging
import os
import secrets
import traceback
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

from keyless_m2m import PrivateKeyJWT, TokenManager
from keyless_m2m.errors import ConfigurationError, SigningError
from keyless_m2m.signers import pkcs11 as backend
from keyless_m2m.signers import signer_from_uri
from keyless_m2m.signers.pkcs11 import Pkcs11Signer
from keyless_m2m.testing.authorization_server import AuthorizationServer
from tests.contract import SignerContract, sign_jws, verify_twice
from tests.frame_locals import secret_locals
from tests.helpers import IN_CI, exception_texts, missing_server, require_module
from tests.oidc_provider import harness
from tests.softhsm import ensure_softhsm, find_softhsm, init_token, write_config

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

TOKEN = "km2m-ci"
OTHER_TOKEN = "km2m-other"  # for the wrong PIN: no pool of the main token is disturbed


@dataclass(frozen=True)
class Hsm:
    module: str
    pin: str
    other_pin: str

    def signer(self, label: str, **options: Any) -> Pkcs11Signer:
        options.setdefault("pin", self.pin)
        return Pkcs11Signer(
            self.module, token_label=options.pop("token_label", TOKEN), label=label, **options
        )

    def uri(self, label: str, query: str = "") -> str:
        return f"pkcs11:token={TOKEN};object={label}?module-path={self.module}{query}"


def _generate_keys(module: str, pin: str) -> None:
    """RSA 2048, P-256/384/521 and Ed25519 keys that cannot leave the token, plus the odd
    ones the error tests need. RSA once: it is the slow one (~0.5 s)."""
    pkcs11 = require_module("pkcs11", reason="the pkcs11 extra (python-pkcs11) is not installed")
    from pkcs11.util.ec import encode_named_curve_parameters

    attribute = pkcs11.Attribute
    locked = {attribute.EXTRACTABLE: False, attribute.SENSITIVE: True, attribute.SIGN: True}
    lib = backend._load_module(pkcs11, module)  # the signer's one instance: a second would C_Finalize
    with lib.get_token(token_label=TOKEN).open(rw=True, user_pin=pin) as session:
        session.generate_keypair(pkcs11.KeyType.RSA, 2048, store=True, label="rsa", id=b"\x01",
                                 private_template=locked)  # fmt: skip

        def ec_key(
            oid: str, label: str, key_id: bytes, template: dict[Any, Any], edwards: bool = False
        ) -> None:
            key_type = pkcs11.KeyType.EC_EDWARDS if edwards else pkcs11.KeyType.EC
            params = session.create_domain_parameters(
                key_type, {attribute.EC_PARAMS: encode_named_curve_parameters(oid)}, local=True
            )
            mechanism = pkcs11.Mechanism.EC_EDWARDS_KEY_PAIR_GEN if edwards else None
            params.generate_keypair(store=True, label=label, id=key_id, mechanism=mechanism,
                                    private_template=template)  # fmt: skip

        ec_key("1.2.840.10045.3.1.7", "p256", b"\x02", locked)
        ec_key("1.3.132.0.34", "p384", b"\x03", locked)
        ec_key("1.3.132.0.35", "p521", b"\x04", locked)
        ec_key("1.3.101.112", "ed25519", b"\x05", locked, edwards=True)
        ec_key("1.2.840.10045.3.1.7", "no-sign", b"\x06", {**locked, attribute.SIGN: False})
        extractable = {attribute.EXTRACTABLE: True, attribute.SENSITIVE: False, attribute.SIGN: True}
        ec_key("1.2.840.10045.3.1.7", "extractable", b"\x07", extractable)
        ec_key("1.2.840.10045.3.1.7", "twice", b"\x08", locked)
        ec_key("1.2.840.10045.3.1.7", "twice", b"\x09", locked)


@pytest.fixture(scope="session")
def hsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hsm]:
    softhsm = find_softhsm()
    if softhsm is None and IN_CI:
        try:
            softhsm = ensure_softhsm()
        except RuntimeError as exc:
            missing_server(f"SoftHSM2 cannot be installed: {exc}")
    if softhsm is None:
        missing_server("SoftHSM2 is not installed (python -m tests.softhsm, or apt-get install softhsm2)")
        raise AssertionError("unreachable")
    require_module("pkcs11", reason="the pkcs11 extra (python-pkcs11) is not installed")
    module = str(softhsm.module)
    real = os.path.realpath(module)
    if real in backend._modules and os.environ.get("SOFTHSM2_CONF") is None:
        pytest.fail("SoftHSM2 was loaded in this process before its configuration was set")
    directory = tmp_path_factory.mktemp("softhsm")
    conf = write_config(directory)
    pin, other_pin, so_pin = secrets.token_hex(6), secrets.token_hex(6), secrets.token_hex(6)
    init_token(softhsm, conf, label=TOKEN, pin=pin, so_pin=so_pin)
    init_token(softhsm, conf, label=OTHER_TOKEN, pin=other_pin, so_pin=so_pin)
    previous = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(conf)  # read once, by C_Initialize in _load_module
    try:
        _generate_keys(module, pin)
        yield Hsm(module, pin, other_pin)
    finally:
        if previous is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = previous


# -- the contract per algorithm ------------------------------------------------------------------

CASES = [
    ("rsa", "RS256"), ("rsa", "RS384"), ("rsa", "RS512"),
    ("rsa", "PS256"), ("rsa", "PS384"), ("rsa", "PS512"),
    ("p256", "ES256"), ("p384", "ES384"), ("p521", "ES512"), ("ed25519", "EdDSA"),
]  # fmt: skip


@pytest.fixture(params=CASES, ids=[f"{k}-{a}" for k, a in CASES])
def case(request: pytest.FixtureRequest) -> tuple[str, str]:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def expected_alg(case: tuple[str, str]) -> str:
    return case[1]


@pytest.fixture
async def signer(case: tuple[str, str], hsm: Hsm) -> AsyncIterator[Pkcs11Signer]:
    signer = hsm.signer(case[0], algorithm=case[1], require_non_extractable=True)
    yield signer
    await signer.aclose()


class TestPkcs11Contract(SignerContract):
    pass


@pytest.mark.parametrize(("label", "alg"), [("rsa", "RS256"), ("p384", "ES384"), ("ed25519", "EdDSA")])
async def test_default_algorithm_follows_the_key(hsm: Hsm, label: str, alg: str) -> None:
    signer = hsm.signer(label)
    assert (await signer.describe()).algorithm == alg
    await signer.aclose()


async def test_key_found_by_id_alone(hsm: Hsm) -> None:
    by_label = hsm.signer("p256")
    by_id = Pkcs11Signer(hsm.module, token_label=TOKEN, object_id=b"\x02", pin=hsm.pin)
    assert (await by_id.describe()).public_jwk == (await by_label.describe()).public_jwk
    await by_id.aclose()
    await by_label.aclose()


# -- URIs and the PIN's sources --------------------------------------------------------------------


async def test_uri_with_a_pin_file(hsm: Hsm, tmp_path: Path) -> None:
    pin_file = tmp_path / "pin"
    pin_file.write_text(hsm.pin + "\n")
    for source in (str(pin_file), pin_file.as_uri()):
        signer = signer_from_uri(hsm.uri("p256", f"&pin-source={source}"))
        assert isinstance(signer, Pkcs11Signer)
        token = await sign_jws(signer, {"sub": "uri"})
        assert verify_twice(token, (await signer.describe()).public_jwk) == {"sub": "uri"}
        await signer.aclose()


async def test_uri_by_id_with_the_pin_from_the_environment(hsm: Hsm, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(backend.PIN_ENVIRONMENT_VARIABLE, hsm.pin)
    signer = signer_from_uri(f"pkcs11:token={TOKEN};id=%05?module-path={hsm.module}")
    assert (await signer.describe()).algorithm == "EdDSA"
    await signer.aclose()


def test_pin_value_in_the_uri_is_refused_without_echo(hsm: Hsm) -> None:
    with pytest.raises(ConfigurationError, match="pin-value") as info:
        signer_from_uri(hsm.uri("p256", f"&pin-value={hsm.pin}"))
    assert not any(hsm.pin in text for text in exception_texts(info.value))


# -- typed errors ---------------------------------------------------------------------------------


def test_missing_module_file(hsm: Hsm, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="does not exist"):
        Pkcs11Signer(tmp_path / "nope.so", token_label=TOKEN, label="p256", pin=hsm.pin)


async def test_a_file_that_is_no_pkcs11_module(hsm: Hsm, tmp_path: Path) -> None:
    fake = tmp_path / "fake.so"
    fake.write_bytes(b"not a shared object")
    signer = Pkcs11Signer(fake, token_label=TOKEN, label="p256", pin=hsm.pin)
    with pytest.raises(ConfigurationError, match="cannot load the PKCS#11 module"):
        await signer.describe()


async def test_wrong_pin_is_typed_and_never_shown(hsm: Hsm) -> None:
    wrong = "wrong-" + secrets.token_hex(8)
    signer = hsm.signer("p256", token_label=OTHER_TOKEN, pin=wrong)
    with pytest.raises(SigningError) as info:
        await signer.describe()
    assert info.value.code == "PinIncorrect" and not info.value.retryable
    assert "PIN is wrong" in str(info.value)
    texts = [*exception_texts(info.value), repr(signer), str(signer)]
    assert not [t for t in texts if wrong in t]
    assert secret_locals(info.value, [wrong, wrong.encode()]) == []
    await signer.aclose()


async def test_pin_not_in_repr_nor_in_frame_locals_of_a_failure(hsm: Hsm) -> None:
    signer = hsm.signer("no-such-key")
    assert hsm.pin not in repr(signer) and hsm.pin not in str(signer) and hsm.pin not in repr(vars(signer))
    with pytest.raises(SigningError) as info:
        await signer.describe()
    assert not [t for t in exception_texts(info.value) if hsm.pin in t]
    assert secret_locals(info.value, [hsm.pin, hsm.pin.encode()]) == []
    assert hsm.pin not in "".join(traceback.format_exception(info.value))
    await signer.aclose()


async def test_missing_token(hsm: Hsm) -> None:
    signer = hsm.signer("p256", token_label="no-such-token")
    with pytest.raises(SigningError, match="no PKCS#11 token matches") as info:
        await signer.describe()
    assert info.value.code == "no_such_token" and not info.value.retryable


async def test_missing_object(hsm: Hsm) -> None:
    signer = hsm.signer("no-such-key")
    with pytest.raises(SigningError, match="no private key object='no-such-key'") as info:
        await signer.describe()
    assert info.value.code == "no_such_object" and not info.value.retryable
    await signer.aclose()


async def test_two_keys_with_one_label(hsm: Hsm) -> None:
    signer = hsm.signer("twice")
    with pytest.raises(ConfigurationError, match="2 private keys match"):
        await signer.describe()
    await signer.aclose()


async def test_key_without_cka_sign(hsm: Hsm) -> None:
    signer = hsm.signer("no-sign")
    with pytest.raises(ConfigurationError, match="CKA_SIGN"):
        await signer.describe()
    await signer.aclose()


async def test_extractable_key_warns_once(hsm: Hsm, caplog: pytest.LogCaptureFixture) -> None:
    backend._warned_extractable.clear()
    with caplog.at_level(logging.WARNING, logger="keyless_m2m"):
        for _ in range(2):
            signer = hsm.signer("extractable")
            token = await sign_jws(signer, {"n": 1})
            assert verify_twice(token, (await signer.describe()).public_jwk) == {"n": 1}
            await signer.aclose()
    warnings = [r for r in caplog.records if "is extractable" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING


async def test_extractable_key_refused_when_strict(hsm: Hsm) -> None:
    for signer in (
        hsm.signer("extractable", require_non_extractable=True),
        signer_from_uri(hsm.uri("extractable", "&x-require-non-extractable=true"), pin=hsm.pin),
    ):
        with pytest.raises(ConfigurationError, match="is extractable"):
            await signer.describe()
        await signer.aclose()


async def test_a_second_pin_for_a_token_in_use_is_refused(hsm: Hsm) -> None:
    first = hsm.signer("p256")
    await first.describe()
    second = hsm.signer("p256", pin="not-" + hsm.pin)
    with pytest.raises(ConfigurationError, match="different PIN"):
        await second.describe()
    await first.aclose()
    await second.aclose()


# -- the session pool --------------------------------------------------------------------------


async def test_session_pool_is_bounded_and_shared(hsm: Hsm) -> None:
    one = hsm.signer("p256", max_concurrency=2)
    two = hsm.signer("ed25519", max_concurrency=2)
    await one.describe()
    await two.describe()
    public = {s: (await s.describe()).public_jwk for s in (one, two)}
    tokens: list[tuple[Pkcs11Signer, str]] = []

    async def sign(s: Pkcs11Signer, i: int) -> None:
        tokens.append((s, await sign_jws(s, {"i": i})))

    async with anyio.create_task_group() as tg:
        for i in range(40):
            tg.start_soon(sign, one if i % 2 else two, i)
    assert len(tokens) == 40
    for s, token in tokens:
        verify_twice(token, public[s])
    assert one._pool is two._pool  # one pool per token
    assert 1 <= one.sessions_opened <= 2
    assert len([p for p in backend._modules if p == os.path.realpath(hsm.module)]) == 1
    await one.aclose()
    assert two._pool is not None and two._pool.users == 1
    await two.aclose()


async def test_signing_after_aclose_is_refused(hsm: Hsm) -> None:
    signer = hsm.signer("p256")
    await signer.describe()
    await signer.aclose()
    with pytest.raises(ConfigurationError, match="closed"):
        await signer.sign(b"x")


# -- tokens from authorization servers -------------------------------------------------------------


async def test_token_from_the_embedded_server_with_a_token_held_key(hsm: Hsm) -> None:
    signer = hsm.signer("p384", require_non_extractable=True)
    description = await signer.describe()
    with AuthorizationServer(expires_in=600) as server:
        server.register_client("hsm", public_jwk=description.public_jwk, scopes=["pockets.read"])
        async with TokenManager(
            server.token_endpoint, PrivateKeyJWT("hsm", signer), scope="pockets.read"
        ) as tm:
            token = await tm.get_token()
    assert token.value and token.scope == "pockets.read"
    await signer.aclose()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_token_from_oidc_provider_with_a_token_held_rsa_key(hsm: Hsm) -> None:
    problem = harness.ensure_installed()
    if problem:
        missing_server(problem)
    signer = hsm.signer("rsa", algorithm="PS256", require_non_extractable=True)
    description = await signer.describe()
    client = {
        "client_id": "pkcs11-ps256",
        "token_endpoint_auth_method": "private_key_jwt",
        "token_endpoint_auth_signing_alg": "PS256",
        "jwks": {"keys": [dict(description.public_jwk)]},
        "scope": "pockets.read",
    }
    with harness.start_oidc_provider([client], ["pockets.read"]) as op:
        async with TokenManager(
            op.token_endpoint, PrivateKeyJWT("pkcs11-ps256", signer), scope="pockets.read"
        ) as tm:
            token = await tm.get_token()
    assert token.value and token.token_type.lower() == "bearer"
    await signer.aclose()
