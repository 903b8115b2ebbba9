"""``self_signed_certificate`` with every KMS backend, against the project's doubles: AWS
KMS on the session's ``moto_server``, Vault transit on the session's OpenBao, Azure Key
Vault on the HTTPS fake, Cloud KMS on the gRPC fake. Each certificate is signed by one
KMS call and verified by cryptography and by openssl (tests/certificate_checks.py), with
the public key compared with what the backend describes. One test per backend: the
algorithms are covered with local keys in tests/unit/test_certificates.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from keyless_m2m.certificates import self_signed_certificate
from keyless_m2m.signers import Signer
from tests.certificate_checks import check_certificate
from tests.vault_server import VaultServer

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


async def certify(signer: Signer, subject: str) -> None:
    """A certificate from ``signer``, checked independently; the signer is closed after."""
    try:
        cert = await self_signed_certificate(signer, subject=subject, days=30)
        check_certificate(cert, (await signer.describe()).public_jwk, subject=subject)
    finally:
        await signer.aclose()


async def test_aws_kms_on_moto_server(aws_p256_signer: Any) -> None:
    await certify(aws_p256_signer, "CN=aws-es256")  # RAW message: moto signs it right


async def test_vault_transit_on_openbao(vault_server: VaultServer) -> None:
    # PS256 from the real server: its salt (salt_length="hash") must match the certificate's.
    await certify(vault_server.signer("rsa-2048", algorithm="PS256"), "CN=vault-ps256")


async def test_azure_key_vault_on_the_fake(key_vault: Any) -> None:
    before = len(key_vault.sign_requests())
    await certify(key_vault.signer("rsa", algorithm="PS256"), "CN=azure-ps256")  # Entra ID's alg
    assert len(key_vault.sign_requests()) == before + 1


async def test_cloud_kms_on_the_fake(cloud_kms: Any) -> None:
    before = cloud_kms.calls["AsymmetricSign"]
    name = f"{cloud_kms.key_ring_name}/cryptoKeys/eddsa/cryptoKeyVersions/1"
    await certify(cloud_kms.signer(name), "CN=gcp-eddsa")  # Ed25519 signs the TBS itself
    assert cloud_kms.calls["AsymmetricSign"] == before + 1
