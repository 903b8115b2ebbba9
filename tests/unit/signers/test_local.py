"""LocalSigner: every alg x key type signs and verifies with PyJWT; PEM formats; errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwcrypto import jwk as jwcrypto_jwk

from keyless_m2m import ConfigurationError
from keyless_m2m._jose import b64url, encode_segment, jwk_thumbprint
from keyless_m2m.signers import LocalSigner, Signer, signer_from_uri
from tests.helpers import ALG_KEYS, make_key, pem_of, verify_jws

pytestmark = pytest.mark.anyio


async def _jws(signer: LocalSigner, claims: dict[str, object]) -> str:
    description = await signer.describe()
    header = {"alg": description.algorithm, "kid": description.key_id, "typ": "JWT"}
    signing_input = f"{encode_segment(header)}.{encode_segment(claims)}".encode()
    return f"{signing_input.decode()}.{b64url(await signer.sign(signing_input))}"


@pytest.mark.parametrize("alg", sorted(ALG_KEYS))
async def test_every_algorithm_verifies_independently(alg: str) -> None:
    signer = LocalSigner.from_pem(pem_of(make_key(ALG_KEYS[alg])), algorithm=alg)
    description = await signer.describe()
    assert description.algorithm == alg
    assert description.public_jwk["use"] == "sig"
    assert description.key_id == jwk_thumbprint(description.public_jwk) == description.public_jwk["kid"]
    assert isinstance(signer, Signer)
    claims = {"sub": "me", "n": 1}
    assert verify_jws(await _jws(signer, claims), dict(description.public_jwk)) == claims


@pytest.mark.parametrize(
    ("kind", "alg"),
    [("rsa", "RS256"), ("p256", "ES256"), ("p384", "ES384"), ("p521", "ES512"), ("ed25519", "EdDSA")],
)
def test_algorithm_is_inferred(kind: str, alg: str) -> None:
    assert LocalSigner.from_pem(pem_of(make_key(kind)))._alg.name == alg


# Ed25519 has no traditional (PKCS#1/SEC1) encoding, only PKCS#8.
@pytest.mark.parametrize(
    ("kind", "fmt"),
    [
        ("rsa", "pkcs8"),
        ("rsa", "traditional"),
        ("p256", "pkcs8"),
        ("p256", "traditional"),
        ("p521", "traditional"),
        ("ed25519", "pkcs8"),
    ],
)
def test_pem_formats_and_encryption(kind: str, fmt: str) -> None:
    key = make_key(kind)
    plain = LocalSigner.from_pem(pem_of(key, fmt=fmt))
    encrypted = pem_of(key, fmt=fmt, password=b"s3cret-pass")
    assert b"ENCRYPTED" in encrypted
    assert LocalSigner.from_pem(encrypted, password="s3cret-pass")._description == plain._description
    with pytest.raises(ConfigurationError, match="encrypted"):
        LocalSigner.from_pem(encrypted)
    with pytest.raises(ConfigurationError) as info:
        LocalSigner.from_pem(encrypted, password="wrong")
    assert "s3cret" not in str(info.value) and "PRIVATE" not in str(info.value)


def test_pkcs1_and_sec1_headers_are_what_we_think() -> None:
    assert b"BEGIN RSA PRIVATE KEY" in pem_of(make_key("rsa"), fmt="traditional")
    assert b"BEGIN EC PRIVATE KEY" in pem_of(make_key("p256"), fmt="traditional")


def test_mismatched_algorithm_is_a_configuration_error_at_construction() -> None:
    with pytest.raises(ConfigurationError, match="ES256 does not fit"):
        LocalSigner.from_pem(pem_of(make_key("rsa")), algorithm="ES256")
    with pytest.raises(ConfigurationError, match="PS256 does not fit"):
        LocalSigner.from_pem(pem_of(make_key("p256")), algorithm="PS256")
    with pytest.raises(ConfigurationError, match="ES384 does not fit"):
        LocalSigner.from_pem(pem_of(make_key("p256")), algorithm="ES384")


def test_unsupported_keys_are_refused() -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(ConfigurationError, match="2048"):
        LocalSigner(small)
    k1 = ec.generate_private_key(ec.SECP256K1())
    with pytest.raises(ConfigurationError, match="secp256k1"):
        LocalSigner(k1)
    with pytest.raises(ConfigurationError, match="not a valid PEM"):
        LocalSigner.from_pem(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")


def test_key_file_and_uri(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    path.write_bytes(pem_of(make_key("p256")))
    a = LocalSigner.from_pem_file(path)
    b = signer_from_uri(f"file://{path}")
    assert isinstance(b, LocalSigner)
    assert a._description == b._description
    with pytest.raises(ConfigurationError, match="cannot read key file"):
        LocalSigner.from_pem_file(tmp_path / "missing.pem")
    with pytest.raises(ConfigurationError, match="known schemes"):
        signer_from_uri("nope://x")


async def test_from_jwk_honours_alg_and_kid() -> None:
    key = jwcrypto_jwk.JWK.from_pem(pem_of(make_key("rsa")))
    members = json.loads(key.export_private())
    members.update(alg="PS384", kid="my-kid")
    signer = LocalSigner.from_jwk(members)
    description = await signer.describe()
    assert (description.algorithm, description.key_id) == ("PS384", "my-kid")
    assert verify_jws(await _jws(signer, {"a": 1}), dict(description.public_jwk)) == {"a": 1}
    public_only = json.loads(key.export_public())
    with pytest.raises(ConfigurationError, match="no private key"):
        LocalSigner.from_jwk(public_only)
    with pytest.raises(ConfigurationError, match="not valid JSON"):
        LocalSigner.from_jwk("{not json")


def test_repr_holds_no_key_material() -> None:
    key = make_key("rsa")
    signer = LocalSigner.from_pem(pem_of(key))
    text = repr(signer) + repr(signer._description)
    assert "PRIVATE" not in text and str(key.private_numbers().d)[:20] not in text
    assert "RS256" in text


def test_errors_name_the_key_file_as_given_in_plain_words(tmp_path: Path) -> None:
    # issue 20: "key key file 'k.pem': ... does not fit a OKP" named only the basename.
    path = tmp_path / "ed.pem"
    path.write_bytes(pem_of(make_key("ed25519")))
    with pytest.raises(ConfigurationError) as caught:
        LocalSigner.from_pem_file(path, algorithm="ES256")
    assert str(caught.value) == f"key file {str(path)!r}: ES256 does not fit an OKP Ed25519 key"
    with pytest.raises(ConfigurationError) as caught:
        LocalSigner.from_pem_file(tmp_path / "missing.pem")
    assert repr(str(tmp_path / "missing.pem")) in str(caught.value)
    with pytest.raises(ConfigurationError, match=r"^local key: ES256 does not fit an RSA key$"):
        LocalSigner(make_key("rsa"), algorithm="ES256")


@pytest.mark.parametrize("query", ["password=hunter2", "alg=ES256&x=1", "kid"])
def test_a_file_uri_query_is_refused_without_its_values(tmp_path: Path, query: str) -> None:
    path = tmp_path / "key.pem"
    path.write_bytes(pem_of(make_key("p256")))
    with pytest.raises(ConfigurationError, match="take no query") as caught:
        signer_from_uri(f"{path.as_uri()}?{query}")
    assert "hunter2" not in str(caught.value) and "ES256" not in str(caught.value)
    with pytest.raises(ConfigurationError, match="fragment"):
        signer_from_uri(f"{path.as_uri()}#frag")
