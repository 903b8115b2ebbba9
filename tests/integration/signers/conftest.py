"""Fixtures of the signer backends' integration tests: one ``moto_server`` and one
OpenBao (and Vault) dev server per session, shared by the backend's own tests and the
certificate and DPoP-key tests (the servers are in tests/moto_server.py and
tests/vault_server.py), LocalStack when the AWS tests run against it
(``--aws-double=localstack``, tests/localstack_server.py), and per module the Azure Key
Vault fake (an RSA key ``rsa``) and the Cloud KMS fake (an Ed25519 key ``eddsa``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from keyless_m2m.errors import MissingExtraError
from tests.helpers import make_key, missing_server, require_module
from tests.localstack_server import LocalStackServer, running_localstack
from tests.moto_server import MotoServer, running_moto_server
from tests.vault_server import SERVERS, VaultServer, running_server


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``@pytest.mark.quirk_of("moto", reason=..., raises=...)``: behaviour only that AWS
    double gets wrong, a strict xfail when the tests run against it (``--aws-double``) and
    an ordinary test against the other, so it starts failing the day the double is fixed."""
    double = config.getoption("aws_double")
    for item in items:
        for mark in item.iter_markers("quirk_of"):
            if mark.args and mark.args[0] == double:
                item.add_marker(pytest.mark.xfail(strict=True, **mark.kwargs))


@pytest.fixture(scope="session")
def aws_double(request: pytest.FixtureRequest) -> str:
    """``moto`` or ``localstack``: what the AWS KMS tests run against (``--aws-double``)."""
    return str(request.config.getoption("aws_double"))


@pytest.fixture(scope="session")
def localstack_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStackServer]:
    """A LocalStack process with KMS only (``--aws-double=localstack``; its interpreter
    from ``KEYLESS_M2M_LOCALSTACK_PYTHON``); clients bring their own dummy credentials."""
    with running_localstack(tmp_path_factory.mktemp("localstack")) as server:
        yield server


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


@pytest.fixture(scope="module")
def key_vault() -> Iterator[Any]:
    require_module("azure.keyvault.keys", reason="the azure extra is not installed")
    require_module("azure.identity", reason="the azure extra is not installed")
    from keyless_m2m.testing.emulators.azure_key_vault import FakeKeyVault

    with FakeKeyVault() as vault:
        vault.add_key("rsa", make_key("rsa"))
        yield vault


@pytest.fixture(scope="module")
def cloud_kms() -> Iterator[Any]:
    from keyless_m2m.testing.emulators.gcp_kms import FakeCloudKms

    try:
        kms = FakeCloudKms()
    except MissingExtraError as exc:
        missing_server(f"{exc} (the fake Cloud KMS needs the gcp extra)")
    kms.add_key("eddsa", "EC_SIGN_ED25519", private_key=make_key("ed25519"))
    kms.start()
    try:
        yield kms
    finally:
        kms.stop()


@pytest.fixture
def aws_p256_signer(moto_server: MotoServer) -> Iterator[Any]:
    """An ``AwsKmsSigner`` of a new ECC_NIST_P256 key on the session's ``moto_server``
    (dummy credentials given to the client: nothing from the environment is needed)."""
    boto3 = require_module("boto3", reason="the aws extra (boto3) is not installed")
    from keyless_m2m.signers import AwsKmsSigner

    client = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
    ).client("kms", endpoint_url=moto_server.endpoint)
    try:
        arn = client.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["Arn"]
        yield AwsKmsSigner(arn, client=client)
    finally:
        client.close()
