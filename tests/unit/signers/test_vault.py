"""VaultTransitSigner against a fake hvac client (``tests/vault_stubs.py``): the request
sent per alg, version pinning, error mapping, URIs and environment defaults. No network.

The fake signs like Vault does when a parameter is left out (sha2-256, PSS with the
maximum salt, ASN.1 DER in standard base64), so a forgotten parameter shows up as a
signature that does not verify, not only as a missing keyword.
"""

from __future__ import annotations

import base64
from typing import Any

import anyio
import hvac
import hvac.exceptions
import pytest
import requests.exceptions
from cryptography.hazmat.primitives.asymmetric import ec

from keyless_m2m.errors import ConfigurationError, SigningError
from keyless_m2m.signers import signer_from_uri
from keyless_m2m.signers.vault import VaultTransitSigner
from tests.contract import SignerContract, sign_jws
from tests.helpers import make_key, verify_jws
from tests.vault_stubs import KEY_FOR_TYPE, TOKEN, FakeClient

pytestmark = pytest.mark.anyio


@pytest.fixture
def client() -> FakeClient:
    fake = FakeClient()
    for key_type, kind in KEY_FOR_TYPE.items():
        fake.transit.add(key_type, key_type, make_key(kind))
    fake.transit.add("aes", "aes256-gcm96", object())
    return fake


# -- the contract, through the fake ----------------------------------------------------------

CASES = [
    ("rsa-2048", "RS256"),
    ("rsa-2048", "RS512"),
    ("rsa-2048", "PS256"),
    ("rsa-2048", "PS384"),
    ("ecdsa-p256", "ES256"),
    ("ecdsa-p384", "ES384"),
    ("ecdsa-p521", "ES512"),
    ("ed25519", "EdDSA"),
]


@pytest.fixture(params=CASES, ids=[f"{t}-{a}" for t, a in CASES])
def case(request: pytest.FixtureRequest) -> tuple[str, str]:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def expected_alg(case: tuple[str, str]) -> str:
    return case[1]


@pytest.fixture
def signer(case: tuple[str, str], client: FakeClient) -> VaultTransitSigner:
    return VaultTransitSigner(case[0], client=client, algorithm=case[1])


class TestVaultTransitSignerWithFakeClient(SignerContract):
    pass


# -- what is sent ----------------------------------------------------------------------------

EXPECTED_PARAMS: dict[str, dict[str, Any]] = {
    "RS256": {"hash_algorithm": "sha2-256", "signature_algorithm": "pkcs1v15"},
    "RS512": {"hash_algorithm": "sha2-512", "signature_algorithm": "pkcs1v15"},
    "PS256": {"hash_algorithm": "sha2-256", "signature_algorithm": "pss", "salt_length": "hash"},
    "PS384": {"hash_algorithm": "sha2-384", "signature_algorithm": "pss", "salt_length": "hash"},
    "ES256": {"hash_algorithm": "sha2-256"},
    "ES384": {"hash_algorithm": "sha2-384"},
    "ES512": {"hash_algorithm": "sha2-512"},
    "EdDSA": {},
}


async def test_request_parameters_per_alg(
    case: tuple[str, str], signer: VaultTransitSigner, client: FakeClient
) -> None:
    key_type, alg = case
    await signer.sign(b"header.claims")
    (sent,) = client.transit.sign_calls
    assert sent == {
        "name": key_type,
        "mount_point": "transit",
        "hash_input": base64.b64encode(b"header.claims").decode(),
        "key_version": 1,
        "marshaling_algorithm": "jws",
        **EXPECTED_PARAMS[alg],
    }


async def test_rsa_defaults_to_rs256(client: FakeClient) -> None:
    signer = VaultTransitSigner("rsa-2048", client=client)
    assert (await signer.describe()).algorithm == "RS256"


async def test_custom_mount_and_kid(client: FakeClient) -> None:
    signer = VaultTransitSigner("ecdsa-p256", client=client, mount_point="/team/transit/", key_id="kid-1")
    description = await signer.describe()
    assert description.key_id == description.public_jwk["kid"] == "kid-1"
    await signer.sign(b"x.y")
    assert client.transit.sign_calls[0]["mount_point"] == "team/transit"
    assert signer.key_name == "team/transit/keys/ecdsa-p256"


async def test_describe_reads_the_key_once_under_concurrency(client: FakeClient) -> None:
    signer = VaultTransitSigner("ecdsa-p256", client=client)
    async with anyio.create_task_group() as tg:
        for _ in range(10):
            tg.start_soon(signer.describe)
    assert client.transit.read_calls == 1


# -- version pinning -------------------------------------------------------------------------


async def test_latest_version_is_pinned_across_rotation(client: FakeClient) -> None:
    client.transit.add("rot", "ecdsa-p256", make_key("p256"))
    pinned = VaultTransitSigner("rot", client=client)
    first = await pinned.describe()
    assert pinned.key_version == 1
    client.transit.keys["rot"]["versions"].append(ec.generate_private_key(ec.SECP256R1()))

    token = await sign_jws(pinned, {"v": 1})
    assert client.transit.sign_calls[-1]["key_version"] == 1
    assert verify_jws(token, dict(first.public_jwk)) == {"v": 1}

    fresh = VaultTransitSigner("rot", client=client)
    second = await fresh.describe()
    assert fresh.key_version == 2
    assert second.key_id != first.key_id
    assert verify_jws(await sign_jws(fresh, {"v": 2}), dict(second.public_jwk)) == {"v": 2}

    explicit = VaultTransitSigner("rot", client=client, key_version=1)
    assert (await explicit.describe()).key_id == first.key_id


async def test_a_signature_from_another_version_is_refused(client: FakeClient) -> None:
    signer = VaultTransitSigner("ecdsa-p256", client=client)
    await signer.describe()
    client.transit.response_patch = {"key_version": 2}
    with pytest.raises(SigningError, match="version 1") as info:
        await signer.sign(b"x.y")
    assert not info.value.retryable


async def test_version_beyond_latest_is_a_configuration_error(client: FakeClient) -> None:
    with pytest.raises(ConfigurationError, match="no version 3"):
        await VaultTransitSigner("ecdsa-p256", client=client, key_version=3).describe()


async def test_version_below_min_encryption_version(client: FakeClient) -> None:
    client.transit.add("old", "ecdsa-p256", make_key("p256"), make_key("p256"), min_encryption_version=2)
    with pytest.raises(ConfigurationError, match="min_encryption_version"):
        await VaultTransitSigner("old", client=client, key_version=1).describe()


# -- key types and algorithms ----------------------------------------------------------------


@pytest.mark.parametrize("key_type", ["aes256-gcm96", "chacha20-poly1305", "hmac", "ml-dsa", "managed_key"])
async def test_non_signing_key_types_are_configuration_errors(client: FakeClient, key_type: str) -> None:
    client.transit.add("k", key_type, object())
    with pytest.raises(ConfigurationError, match=key_type):
        await VaultTransitSigner("k", client=client).describe()


async def test_derived_ed25519_is_refused(client: FakeClient) -> None:
    client.transit.add("derived", "ed25519", make_key("ed25519"), derived=True)
    with pytest.raises(ConfigurationError, match="derived"):
        await VaultTransitSigner("derived", client=client).describe()


@pytest.mark.parametrize(
    ("key_type", "alg"), [("rsa-2048", "ES256"), ("ecdsa-p384", "ES256"), ("ed25519", "RS256")]
)
async def test_alg_that_does_not_fit_the_key(client: FakeClient, key_type: str, alg: str) -> None:
    with pytest.raises(ConfigurationError, match=alg):
        await VaultTransitSigner(key_type, client=client, algorithm=alg).describe()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"key_name": "a/b"}, "invalid transit key name 'a/b'"),
        ({"key_name": ""}, "invalid transit key name ''"),
        ({"key_name": "-x"}, "invalid transit key name '-x'"),
        ({"key_name": "cl\u00e9"}, "invalid transit key name"),
        ({"key_name": "k", "mount_point": "//"}, "invalid transit mount point"),
        ({"key_name": "k", "key_version": 0}, "key_version must"),
        ({"key_name": "k", "key_version": True}, "key_version must"),
        ({"key_name": "k", "algorithm": "HS256"}, "unknown JWS algorithm 'HS256'"),
        ({"key_name": "k", "url": "http://vault:8200"}, "not both"),
    ],
)
def test_bad_arguments(client: FakeClient, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        VaultTransitSigner(client=client, **kwargs)


async def test_pss_on_a_vault_that_ignores_salt_length(client: FakeClient) -> None:
    signer = VaultTransitSigner("rsa-2048", client=client, algorithm="PS256")
    client.transit.warnings = ["Endpoint ignored these unrecognized parameters: [salt_length]"]
    with pytest.raises(SigningError, match="salt_length"):
        await signer.sign(b"x.y")


async def test_standard_base64_signatures_are_accepted(client: FakeClient) -> None:
    signer = VaultTransitSigner("ed25519", client=client)
    description = await signer.describe()
    raw = make_key("ed25519").sign(b"x.y")
    client.transit.response_patch = {"signature": "vault:v1:" + base64.b64encode(raw).decode()}
    assert await signer.sign(b"x.y") == raw
    assert description.algorithm == "EdDSA"


# -- errors ----------------------------------------------------------------------------------


def _vault_error(status: int, *errors: str) -> Exception:
    error: Exception = hvac.exceptions.VaultError.from_status(
        status, None, errors=list(errors) or None, method="post", url="http://vault/v1/transit/sign/k"
    )
    return error


@pytest.mark.parametrize(
    ("status", "retryable"),
    [
        (400, False),
        (401, False),
        (403, False),
        (404, False),
        (429, True),
        (500, True),
        (501, False),
        (502, True),
        (503, True),
        (504, True),  # hvac's UnexpectedError: a proxy in front of Vault
    ],
)
@pytest.mark.parametrize("operation", ["read", "sign"])
async def test_http_status_to_retryable(
    client: FakeClient, status: int, retryable: bool, operation: str
) -> None:
    signer = VaultTransitSigner("ecdsa-p256", client=client)
    if operation == "sign":
        await signer.describe()
    client.transit.fail_with = _vault_error(status, "something")
    with pytest.raises(SigningError) as info:
        await (signer.sign(b"x.y") if operation == "sign" else signer.describe())
    error = info.value
    assert error.retryable is retryable
    assert error.key == "transit/keys/ecdsa-p256"
    assert error.code == (str(status) if status != 504 else "unexpected")
    assert error.__cause__ is None
    assert error.__context__ is None


@pytest.mark.parametrize(
    ("exc", "retryable"),
    [
        (requests.exceptions.ConnectionError("refused"), True),
        (requests.exceptions.ReadTimeout("slow"), True),
        (requests.exceptions.SSLError("bad cert"), False),
        (requests.exceptions.InvalidURL("bad url"), False),
    ],
)
async def test_transport_errors(client: FakeClient, exc: Exception, retryable: bool) -> None:
    client.transit.fail_with = exc
    with pytest.raises(SigningError) as info:
        await VaultTransitSigner("ecdsa-p256", client=client).describe()
    assert info.value.retryable is retryable
    assert info.value.code == type(exc).__name__
    assert info.value.__cause__ is None
    assert info.value.__context__ is None


async def test_permission_denied_on_sign_suggests_the_policy(client: FakeClient) -> None:
    signer = VaultTransitSigner("ecdsa-p256", client=client, mount_point="pki-transit")
    await signer.describe()
    client.transit.fail_with = _vault_error(403, f"1 error occurred:\n\t* permission denied {TOKEN}\n\n")
    with pytest.raises(SigningError) as info:
        await signer.sign(b"x.y")
    text = str(info.value)
    assert 'path "pki-transit/sign/ecdsa-p256" { capabilities = ["update"] }' in text
    assert "permission denied" in text
    assert TOKEN not in text
    assert TOKEN not in repr(info.value)
    assert TOKEN not in repr(signer)
    assert not info.value.retryable


async def test_permission_denied_on_read_suggests_the_policy(client: FakeClient) -> None:
    client.transit.fail_with = _vault_error(403, "permission denied")
    with pytest.raises(SigningError, match=r'path "transit/keys/ed25519" \{ capabilities = \["read"\] \}'):
        await VaultTransitSigner("ed25519", client=client).describe()


async def test_permission_denied_without_a_token(client: FakeClient) -> None:
    client.token = None
    client.transit.fail_with = _vault_error(403, "permission denied")
    with pytest.raises(SigningError, match="no Vault token was sent"):
        await VaultTransitSigner("ed25519", client=client).describe()


async def test_unknown_key(client: FakeClient) -> None:
    with pytest.raises(SigningError, match="transit/keys/nope") as info:
        await VaultTransitSigner("nope", client=client).describe()
    assert not info.value.retryable
    assert info.value.code == "404"


# -- construction: URI, environment, closing -------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> pytest.MonkeyPatch:
    for name in (
        "ADDR",
        "TOKEN",
        "NAMESPACE",
        "CACERT",
        "CAPATH",
        "SKIP_VERIFY",
        "CLIENT_CERT",
        "CLIENT_KEY",
    ):
        monkeypatch.delenv(f"VAULT_{name}", raising=False)
        monkeypatch.delenv(f"BAO_{name}", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return monkeypatch


def test_from_uri(client: FakeClient) -> None:
    signer = VaultTransitSigner.from_uri(
        "hashivault://payments.m2m?mount=team/transit&version=3", client=client
    )
    assert signer.key_name == "team/transit/keys/payments.m2m"
    assert signer.key_version == 3
    via_registry = signer_from_uri("hashivault://k1", client=client, algorithm="ES256")
    assert isinstance(via_registry, VaultTransitSigner)
    assert via_registry.key_name == "transit/keys/k1"
    assert via_registry.key_version is None


@pytest.mark.parametrize(
    "uri",
    [
        "hashivault://",
        "hashivault://k?color=blue",
        "hashivault://k?version=x",
        "hashivault://k?version=-1",
        "hashivault://k?version=\u00b2",
        "hashivault://user@k",
        "hashivault://k/extra",
        "hashivault://k?mount=",
    ],
)
def test_bad_uris(client: FakeClient, uri: str) -> None:
    with pytest.raises(ConfigurationError, match=r"hashivault|mount point"):
        VaultTransitSigner.from_uri(uri, client=client)


def test_uri_and_option_conflict(client: FakeClient) -> None:
    with pytest.raises(ConfigurationError, match="both"):
        VaultTransitSigner.from_uri("hashivault://k?version=2", client=client, key_version=1)


def test_defaults_from_the_environment(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("VAULT_ADDR", "https://vault.internal:8200")
    clean_env.setenv("VAULT_TOKEN", TOKEN)
    clean_env.setenv("VAULT_NAMESPACE", "team-a")
    clean_env.setenv("VAULT_CACERT", "/etc/ssl/vault-ca.pem")
    signer = signer_from_uri("hashivault://k?mount=transit")
    assert isinstance(signer, VaultTransitSigner)
    created = signer._client
    assert isinstance(created, hvac.Client)
    assert created.url == "https://vault.internal:8200"
    assert created.token == TOKEN
    assert created.adapter.namespace == "team-a"
    assert created.adapter._kwargs["verify"] == "/etc/ssl/vault-ca.pem"
    assert TOKEN not in repr(signer)

    clean_env.setenv("VAULT_SKIP_VERIFY", "true")
    assert VaultTransitSigner("k")._client.adapter._kwargs["verify"] is False


def test_arguments_beat_the_environment(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("VAULT_ADDR", "https://env:8200")
    clean_env.setenv("VAULT_TOKEN", "env-token")
    signer = VaultTransitSigner("k", url="http://127.0.0.1:8200", token=TOKEN, namespace="ns")
    assert signer._client.url == "http://127.0.0.1:8200"
    assert signer._client.token == TOKEN
    assert signer._client.adapter.namespace == "ns"


def test_cli_defaults_without_environment(clean_env: pytest.MonkeyPatch, tmp_path: Any) -> None:
    signer = VaultTransitSigner("k")
    assert signer._client.url == "https://127.0.0.1:8200"
    assert signer._client.token is None
    (tmp_path / ".vault-token").write_text(TOKEN + "\n")
    assert VaultTransitSigner("k")._client.token == TOKEN


def test_openbao_variable_names(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("BAO_ADDR", "http://127.0.0.1:8300")
    clean_env.setenv("BAO_TOKEN", TOKEN)
    signer = VaultTransitSigner("k")
    assert signer._client.url == "http://127.0.0.1:8300"
    assert signer._client.token == TOKEN


@pytest.mark.parametrize(
    "url", ["vault:8200", "ftp://vault", "https://user:pw@vault:8200", "ftp://user:pw@vault", "http://[pw"]
)
def test_bad_address(clean_env: pytest.MonkeyPatch, url: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        VaultTransitSigner("k", url=url)
    assert "pw" not in str(info.value)


async def test_aclose_closes_only_its_own_session(client: FakeClient, clean_env: pytest.MonkeyPatch) -> None:
    await VaultTransitSigner("k", client=client).aclose()
    assert client.adapter.closed == 0

    owned = VaultTransitSigner("k", url="http://127.0.0.1:8200", token=TOKEN)
    closed: list[bool] = []
    owned._client.adapter.session.close = lambda: closed.append(True)
    await owned.aclose()
    assert closed == [True]


@pytest.mark.parametrize("address", ["https://vault:99999", "https://vault:-1", "https://vault:port"])
def test_an_address_with_a_bad_port_is_refused(clean_env: pytest.MonkeyPatch, address: str) -> None:
    # issue 20: the port was only checked when the first request went out.
    with pytest.raises(ConfigurationError, match="Vault address"):
        VaultTransitSigner("k", url=address, token=TOKEN)
    clean_env.setenv("VAULT_ADDR", address)
    with pytest.raises(ConfigurationError, match="Vault address"):
        signer_from_uri("hashivault://k")
