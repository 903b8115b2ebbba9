"""LocalSigner under the shared signer contract."""

from __future__ import annotations

import pytest

from keyless_m2m.signers import LocalSigner
from tests.contract import SignerContract
from tests.helpers import ALG_KEYS, make_key, pem_of


@pytest.fixture(params=["RS256", "PS256", "ES256", "ES384", "ES512", "EdDSA"])
def expected_alg(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def signer(expected_alg: str) -> LocalSigner:
    return LocalSigner.from_pem(pem_of(make_key(ALG_KEYS[expected_alg])), algorithm=expected_alg)


class TestLocalSigner(SignerContract):
    pass
