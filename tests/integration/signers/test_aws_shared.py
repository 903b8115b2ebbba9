"""AwsKmsSigners share boto3 clients (issue 21), against a real ``moto_server`` over HTTP.

Counted, never timed: boto3 client builds (``boto3.session.Session.client`` wrapped), the
builds and SDK calls in flight at once, the shared client's users and closes. Signatures
are verified by PyJWT with the public key read from moto through a boto3 client of the
test's own.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from typing import Any

import anyio
import anyio.to_thread
import jwt
import pytest
from cryptography.hazmat.primitives.serialization import load_der_public_key

from keyless_m2m import SigningError
from keyless_m2m.signers import AwsKmsSigner, _base
from keyless_m2m.signers import aws as aws_module
from tests.contract import sign_jws
from tests.helpers import require_module
from tests.moto_server import MotoServer, dummy_aws_environment

boto3 = require_module("boto3", reason="the aws extra (boto3) is not installed")

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

REGION = "us-east-1"
SIGNERS = 50
CANARY_KEY_ID = "AKIACANARY7Q2ZL5X9WV"
CANARY_SECRET = "canary-secret-9f3b1c7e2a6d4058b1e3c7a9d2f4e6b8"
CANARY_TOKEN = "canary-session-token-5d1e9a7c3b2f4068a1c3e5b7d9f2a4c6"


@pytest.fixture(scope="module")
def shared_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pytest.MonkeyPatch]:
    """Dummy credentials and a region, no user AWS config; the MonkeyPatch lets a test
    change the credential environment (and puts it back)."""
    with pytest.MonkeyPatch.context() as mp:
        dummy_aws_environment(mp, tmp_path_factory.mktemp("aws-shared"), REGION)
        yield mp


@pytest.fixture(scope="module")
def kms(shared_env: pytest.MonkeyPatch, moto_server: MotoServer) -> Iterator[Any]:
    client = boto3.session.Session().client("kms", region_name=REGION, endpoint_url=moto_server.endpoint)
    yield client
    client.close()


@pytest.fixture(scope="module")
def arns(kms: Any) -> list[str]:
    return [
        str(kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["Arn"])
        for _ in range(SIGNERS)
    ]


class Builds:
    """Counts boto3 KMS client builds (and how many run at once); can hold them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.count = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.hold: threading.Event | None = None

    def wrap(self, real: Any) -> Any:
        def client(session: Any, service: str, *args: Any, **kwargs: Any) -> Any:
            with self.lock:
                self.count += 1
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                if self.hold is not None:
                    assert self.hold.wait(30), "the test never released the held build"
                return real(session, service, *args, **kwargs)
            finally:
                with self.lock:
                    self.in_flight -= 1

        return client


@pytest.fixture
def builds(monkeypatch: pytest.MonkeyPatch, kms: Any) -> Builds:
    counter = Builds()
    monkeypatch.setattr(boto3.session.Session, "client", counter.wrap(boto3.session.Session.client))
    return counter


def verify(kms: Any, arn: str, token: str) -> dict[str, Any]:
    """PyJWT, with the public key moto gives the test's own client."""
    public_key = load_der_public_key(kms.get_public_key(KeyId=arn)["PublicKey"])
    return jwt.decode(token, key=public_key, algorithms=["ES256"])  # type: ignore[arg-type]


async def sign_all(signers: list[AwsKmsSigner]) -> list[str]:
    tokens = [""] * len(signers)

    async def one(i: int) -> None:
        tokens[i] = await sign_jws(signers[i], {"n": i})

    async with anyio.create_task_group() as tg:
        for i in range(len(signers)):
            tg.start_soon(one, i)
    return tokens


async def test_fifty_signers_of_one_configuration_build_one_client(
    moto_server: MotoServer, kms: Any, arns: list[str], builds: Builds
) -> None:
    signers = [AwsKmsSigner(arn, endpoint_url=moto_server.endpoint, region=REGION) for arn in arns]
    try:
        tokens = await sign_all(signers)
        assert builds.count == 1
        assert len({id(s._client) for s in signers}) == 1
        key = signers[0]._client_key
        assert key is not None and aws_module._CLIENTS.users(key) == SIGNERS
        for i, (arn, token) in enumerate(zip(arns, tokens, strict=True)):
            assert verify(kms, arn, token) == {"n": i}
    finally:
        for signer in signers:
            await signer.aclose()
    assert aws_module._CLIENTS.users(key) == 0  # the last aclose() closed and dropped it


async def test_different_credentials_and_endpoints_build_different_clients(
    moto_server: MotoServer, kms: Any, arns: list[str], builds: Builds, shared_env: pytest.MonkeyPatch
) -> None:
    localhost = f"http://localhost:{moto_server.port}"  # the same moto, another endpoint URL
    groups: list[list[AwsKmsSigner]] = []
    try:
        for access_key, endpoint in (
            ("testing", moto_server.endpoint),
            ("testing-other", moto_server.endpoint),
            ("testing", localhost),
        ):
            shared_env.setenv("AWS_ACCESS_KEY_ID", access_key)
            group = [AwsKmsSigner(arn, endpoint_url=endpoint, region=REGION) for arn in arns[:5]]
            groups.append(group)
            for arn, token in zip(arns, await sign_all(group), strict=False):
                verify(kms, arn, token)
        shared_env.setenv("AWS_ACCESS_KEY_ID", "testing")
        assert builds.count == 3
        clients = [{id(s._client) for s in group} for group in groups]
        assert [len(c) for c in clients] == [1, 1, 1]  # one client per configuration
        assert len(set.union(*clients)) == 3
    finally:
        for group in groups:
            for signer in group:
                await signer.aclose()


async def test_one_signers_aclose_leaves_the_shared_client_to_the_others(
    moto_server: MotoServer, kms: Any, arns: list[str], builds: Builds, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed: list[Any] = []
    real_close = aws_module._CLIENTS._close

    def close(client: Any) -> None:
        closed.append(client)
        real_close(client)

    monkeypatch.setattr(aws_module._CLIENTS, "_close", close)
    first, second = (AwsKmsSigner(arn, endpoint_url=moto_server.endpoint, region=REGION) for arn in arns[:2])
    await sign_all([first, second])
    client = second._client
    assert first._client is client
    await first.aclose()
    assert closed == []
    verify(kms, arns[1], await sign_jws(second, {"after": "aclose"}))
    with pytest.raises(SigningError, match="closed"):
        await first.sign(b"a.b")
    await second.aclose()
    assert closed == [client]
    assert builds.count == 1


async def test_a_collected_signer_gives_its_client_back(
    moto_server: MotoServer, arns: list[str], builds: Builds
) -> None:
    signer = AwsKmsSigner(arns[0], endpoint_url=moto_server.endpoint, region=REGION)
    await signer.describe()
    key = signer._client_key
    assert key is not None and aws_module._CLIENTS.users(key) == 1
    del signer
    gc.collect()
    assert aws_module._CLIENTS.users(key) == 0


async def test_cold_signers_leave_the_users_threads_alone(
    moto_server: MotoServer, kms: Any, arns: list[str], builds: Builds, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While 50 cold signers wait for their (held) client build, a user's to_thread call
    runs: one build in one thread, no token of anyio's default limiter taken; afterwards
    at most SDK_THREADS KMS calls run at once."""
    calls = Builds()  # reused as an in-flight counter of the signers' KMS calls
    real_call = AwsKmsSigner._call_now

    def counted(self: AwsKmsSigner, *args: Any) -> Any:
        with calls.lock:
            calls.in_flight += 1
            calls.max_in_flight = max(calls.max_in_flight, calls.in_flight)
        try:
            return real_call(self, *args)
        finally:
            with calls.lock:
                calls.in_flight -= 1

    monkeypatch.setattr(AwsKmsSigner, "_call_now", counted)
    builds.hold = threading.Event()
    signers = [AwsKmsSigner(arn, endpoint_url=moto_server.endpoint, region=REGION) for arn in arns]
    default = anyio.to_thread.current_default_thread_limiter()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(sign_all, signers)
            with anyio.fail_after(30):
                while builds.in_flight == 0:
                    await anyio.sleep(0.001)
            # The build is held: every signer is waiting for it.
            assert default.borrowed_tokens == 0
            assert await anyio.to_thread.run_sync(lambda: "user") == "user"
            assert builds.in_flight == 1 and builds.count == 1
            assert _base.sdk_thread_limiter().borrowed_tokens == 1  # the build; no signer waits in a thread
            builds.hold.set()
        assert builds.max_in_flight == 1 and builds.count == 1
        assert 0 < calls.max_in_flight <= _base.SDK_THREADS
    finally:
        builds.hold.set()
        for signer in signers:
            await signer.aclose()


async def test_credentials_stay_out_of_the_shared_client_key(
    moto_server: MotoServer,
    arns: list[str],
    shared_env: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("DEBUG", logger="keyless_m2m")
    shared_env.setenv("AWS_ACCESS_KEY_ID", CANARY_KEY_ID)
    shared_env.setenv("AWS_SECRET_ACCESS_KEY", CANARY_SECRET)
    shared_env.setenv("AWS_SESSION_TOKEN", CANARY_TOKEN)
    texts: list[str] = []
    try:
        signer = AwsKmsSigner(arns[0], endpoint_url=moto_server.endpoint, region=REGION)
        await signer.sign(b"header.claims")
        texts += [repr(signer._client_key), str(signer._client_key), repr(signer)]
        await signer.aclose()
        unreachable = AwsKmsSigner(arns[0], endpoint_url="http://127.0.0.1:1", region=REGION)
        with pytest.raises(SigningError) as caught:
            await unreachable.sign(b"header.claims")
        texts += [repr(unreachable._client_key), str(caught.value), repr(caught.value)]
        error: BaseException | None = caught.value
        while error is not None:
            texts.append(repr(error))
            error = error.__cause__ or error.__context__
        await unreachable.aclose()
    finally:
        for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
            shared_env.setenv(var, "testing")
    texts += [r.getMessage() + repr(r.args) for r in caplog.records]
    for canary in (CANARY_KEY_ID, CANARY_SECRET, CANARY_TOKEN):
        assert all(canary not in text for text in texts), canary
