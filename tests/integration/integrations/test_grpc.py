"""gRPC call credentials and interceptors (keyless_m2m.integrations.grpc) against a real
gRPC server on loopback that checks the ``authorization`` metadata, with tokens from the
embedded authorization server. ``grpc.aio`` runs on asyncio only: its tests do not run on
trio."""

from __future__ import annotations

import pickle
import threading
from collections.abc import Iterator
from typing import Any

import anyio
import grpc
import grpc.aio
import jwt
import pytest

from keyless_m2m import (
    ClientSecretPost,
    ConfigurationError,
    InvalidClientError,
    PrivateKeyJWT,
    SyncTokenManager,
    TokenManager,
    TransportError,
)
from keyless_m2m.integrations.grpc import (
    TokenUnavailableError,
    aio_interceptors,
    call_credentials,
    interceptors,
)
from keyless_m2m.testing.authorization_server import AuthorizationServer
from keyless_m2m.testing.signers import InMemorySigner
from tests.frame_locals import chain_of, secret_locals
from tests.grpc_server import STREAM_UNARY, UNARY, UNARY_STREAM, CheckingGrpcServer

CANARY = "canary-s3cr3t-7f1d9a"
FAST: dict[str, Any] = {"backoff": 0.01, "max_backoff": 0.02, "max_attempts": 2}


@pytest.fixture
def auth_server() -> Iterator[AuthorizationServer]:
    with AuthorizationServer() as server:
        yield server


@pytest.fixture
def signer(auth_server: AuthorizationServer) -> InMemorySigner:
    signer = InMemorySigner()
    auth_server.register_client("svc", jwks=signer.jwks)
    return signer


@pytest.fixture
def api(auth_server: AuthorizationServer) -> Iterator[CheckingGrpcServer]:
    with CheckingGrpcServer(lambda token: token in auth_server.issued) as server:
        yield server


def sync_tokens(auth_server: AuthorizationServer, signer: InMemorySigner, **options: Any) -> SyncTokenManager:
    return SyncTokenManager(auth_server.token_endpoint, PrivateKeyJWT("svc", signer), **options)


def secure(target: str, *credentials: Any) -> grpc.Channel:
    local = grpc.local_channel_credentials()
    if credentials:
        local = grpc.composite_channel_credentials(local, *credentials)
    return grpc.secure_channel(target, local)


def unsecret(error: BaseException, *secrets: str) -> None:
    """No secret in anything a caller or an error tracker sees of the gRPC error."""
    texts = [str(error), repr(error)]
    for e in chain_of(error):
        texts += [str(e), repr(e)]
    for method in ("details", "debug_error_string"):
        if callable(getattr(error, method, None)):
            texts.append(str(getattr(error, method)()))
    for secret in secrets:
        assert not any(secret in text for text in texts), texts
    assert secret_locals(error, secrets) == []  # what an error tracker records of its frames


# -- call credentials ---------------------------------------------------------------------


def test_call_credentials_send_the_bearer_token_and_a_call_without_them_is_refused(
    auth_server: AuthorizationServer, signer: InMemorySigner, api: CheckingGrpcServer
) -> None:
    with sync_tokens(auth_server, signer) as tokens, secure(api.target, call_credentials(tokens)) as channel:
        assert channel.unary_unary(UNARY)(b"hi", timeout=10) == b"echo:hi"
        assert list(channel.unary_stream(UNARY_STREAM)(b"x", timeout=10)) == [b"one:x", b"two:x"]
        token = tokens.get_token().value
    with secure(api.target) as bare, pytest.raises(grpc.RpcError) as refused:
        bare.unary_unary(UNARY)(b"hi", timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert api.seen == [f"Bearer {token}", f"Bearer {token}", None]
    assert auth_server.token_requests == 1


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_call_credentials_many_concurrent_calls_one_token_request(
    auth_server: AuthorizationServer, signer: InMemorySigner, api: CheckingGrpcServer, backend: str
) -> None:
    auth_server.latency = 0.2  # the first fetch is still in flight when the others ask
    results: list[bytes] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(24)
    # backend: the manager's own loop, trio as well (the blocking grpc does not care).
    with (
        sync_tokens(auth_server, signer, backend=backend) as tokens,
        secure(api.target, call_credentials(tokens)) as channel,
    ):
        call = channel.unary_unary(UNARY)

        def one(i: int) -> None:
            barrier.wait(timeout=10)
            try:
                results.append(call(b"%d" % i, timeout=20))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(24)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    assert not errors and len(results) == 24
    assert auth_server.token_requests == 1 and signer.signatures == 1
    assert len(set(api.seen)) == 1 and len(api.seen) == 24


def test_call_credentials_token_failure_is_a_grpc_error_without_the_secret(
    auth_server: AuthorizationServer, api: CheckingGrpcServer
) -> None:
    auth_server.register_client("svc", client_secret="another-secret")
    with (
        SyncTokenManager(auth_server.token_endpoint, ClientSecretPost("svc", CANARY), **FAST) as tokens,
        secure(api.target, call_credentials(tokens)) as channel,
        pytest.raises(grpc.RpcError) as failed,
    ):
        channel.unary_unary(UNARY)(b"hi", timeout=10)
    # gRPC picks the status of a failed credentials plugin itself.
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "InvalidClientError" in failed.value.details()
    assert api.seen == []  # the call never reached the server
    unsecret(failed.value, CANARY)


class LeakySource:
    """A token source of the user's own whose exception carries a secret."""

    def __init__(self) -> None:
        self.invalidated = 0

    def get_token(self, scope: Any = None, *, resource: Any = None, audience: Any = None) -> Any:
        raise RuntimeError(f"vault said no for {CANARY}")

    def invalidate(self, token: Any) -> bool:
        self.invalidated += 1
        return False


def test_a_foreign_exception_is_named_by_its_type_only(api: CheckingGrpcServer) -> None:
    with (
        secure(api.target, call_credentials(LeakySource())) as channel,
        pytest.raises(grpc.RpcError) as failed,
    ):
        channel.unary_unary(UNARY)(b"hi", timeout=10)
    assert "RuntimeError" in failed.value.details()
    unsecret(failed.value, CANARY)
    channel = grpc.intercept_channel(secure(api.target), *interceptors(LeakySource()))
    with channel, pytest.raises(TokenUnavailableError) as refused:
        channel.unary_unary(UNARY)(b"hi", timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert refused.value.__cause__ is None
    unsecret(refused.value, CANARY)


def test_call_credentials_refuse_an_async_source(auth_server: AuthorizationServer) -> None:
    tokens = TokenManager(auth_server.token_endpoint, ClientSecretPost("svc", "s"))
    with pytest.raises(ConfigurationError, match="blocking SyncTokenSource"):
        call_credentials(tokens)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="async TokenSource"):
        aio_interceptors(LeakySource())  # type: ignore[arg-type]


def test_call_credentials_send_a_dpop_proof_for_the_call(signer: InMemorySigner) -> None:
    with AuthorizationServer(dpop="required") as auth_server:
        auth_server.register_client("svc", jwks=signer.jwks)
        with (
            CheckingGrpcServer(lambda token: token in auth_server.issued) as api,
            sync_tokens(auth_server, signer, dpop=True) as tokens,
            secure(api.target, call_credentials(tokens)) as channel,
        ):
            assert channel.unary_unary(UNARY)(b"hi", timeout=10) == b"echo:hi"
            token = tokens.get_token()
    assert token.is_dpop and api.seen == [f"DPoP {token.value}"]
    proof = api.dpop[0]
    assert proof is not None
    header = jwt.get_unverified_header(proof)
    claims = jwt.decode(proof, jwt.PyJWK(header["jwk"]).key, algorithms=[header["alg"]])
    assert claims["htm"] == "POST"
    assert claims["htu"] == f"https://{api.target}{UNARY}"
    assert jwt.PyJWK(header["jwk"]).key is not None and header["typ"] == "dpop+jwt"


# -- interceptors (blocking) ----------------------------------------------------------------


def test_interceptor_retries_a_unary_call_once_after_unauthenticated(
    auth_server: AuthorizationServer, signer: InMemorySigner, api: CheckingGrpcServer
) -> None:
    with sync_tokens(auth_server, signer) as tokens:
        first = tokens.get_token().value
        api.revoked.add(first)  # the server no longer takes it; the manager still caches it
        with grpc.intercept_channel(secure(api.target), *interceptors(tokens)) as channel:
            assert channel.unary_unary(UNARY)(b"hi", timeout=10) == b"echo:hi"
            second = tokens.get_token().value
    assert api.seen == [f"Bearer {first}", f"Bearer {second}"] and first != second
    assert auth_server.token_requests == 2


def test_interceptor_retries_once_only_and_never_a_stream(
    auth_server: AuthorizationServer, signer: InMemorySigner
) -> None:
    with (
        CheckingGrpcServer(lambda token: False) as api,
        sync_tokens(auth_server, signer) as tokens,
        grpc.intercept_channel(secure(api.target), *interceptors(tokens)) as channel,
    ):
        with pytest.raises(grpc.RpcError) as refused:
            channel.unary_unary(UNARY)(b"hi", timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert len(api.seen) == 2  # one retry, not more
        with pytest.raises(grpc.RpcError):
            list(channel.unary_stream(UNARY_STREAM)(b"x", timeout=10))
        with pytest.raises(grpc.RpcError):
            channel.stream_unary(STREAM_UNARY)(iter([b"a", b"b"]), timeout=10)
        assert len(api.seen) == 4  # the streams: not replayed
    assert auth_server.token_requests == 2


def test_interceptor_on_streams_adds_the_token(
    auth_server: AuthorizationServer, signer: InMemorySigner, api: CheckingGrpcServer
) -> None:
    with (
        sync_tokens(auth_server, signer) as tokens,
        grpc.intercept_channel(secure(api.target), *interceptors(tokens)) as channel,
    ):
        assert list(channel.unary_stream(UNARY_STREAM)(b"x", timeout=10)) == [b"one:x", b"two:x"]
        assert channel.stream_unary(STREAM_UNARY)(iter([b"a", b"b"]), timeout=10) == b"a+b"
        token = tokens.get_token().value
    assert api.seen == [f"Bearer {token}"] * 2


def test_interceptor_token_failure_codes_and_no_secret(
    auth_server: AuthorizationServer, api: CheckingGrpcServer
) -> None:
    auth_server.register_client("svc", client_secret="another-secret")
    with SyncTokenManager(auth_server.token_endpoint, ClientSecretPost("svc", CANARY), **FAST) as tokens:
        channel = grpc.intercept_channel(secure(api.target), *interceptors(tokens))
        with channel, pytest.raises(TokenUnavailableError) as refused:
            channel.unary_unary(UNARY)(b"hi", timeout=10)
        assert isinstance(refused.value, grpc.RpcError)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED  # refused: not retryable
        assert isinstance(refused.value.__cause__, InvalidClientError)
        unsecret(refused.value, CANARY)
        copy = pickle.loads(pickle.dumps(refused.value))  # noqa: S301 - our own bytes: errors survive pickling
        assert (copy.code(), copy.details()) == (refused.value.code(), refused.value.details())
    auth_server.stop()  # now the authorization server is down: retryable
    with SyncTokenManager(auth_server.token_endpoint, ClientSecretPost("svc", CANARY), **FAST) as tokens:
        channel = grpc.intercept_channel(secure(api.target), *interceptors(tokens))
        with channel, pytest.raises(TokenUnavailableError) as down:
            channel.unary_unary(UNARY)(b"hi", timeout=10)
        assert down.value.code() == grpc.StatusCode.UNAVAILABLE
        assert isinstance(down.value.__cause__, TransportError)
        unsecret(down.value, CANARY)
    assert api.seen == []


# -- grpc.aio (asyncio only) ----------------------------------------------------------------


def aio_channel(target: str, tokens: TokenManager) -> grpc.aio.Channel:
    return grpc.aio.secure_channel(
        target, grpc.local_channel_credentials(), interceptors=aio_interceptors(tokens)
    )


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_aio_many_concurrent_calls_one_token_request(
    auth_server: AuthorizationServer, signer: InMemorySigner, api: CheckingGrpcServer
) -> None:
    auth_server.latency = 0.2
    results: list[bytes] = []
    async with TokenManager(auth_server.token_endpoint, PrivateKeyJWT("svc", signer)) as tokens:
        async with aio_channel(api.target, tokens) as channel:
            call = channel.unary_unary(UNARY)

            async def one(i: int) -> None:
                results.append(await call(b"%d" % i, timeout=20))

            async with anyio.create_task_group() as tg:
                for i in range(32):
                    tg.start_soon(one, i)
            stream = channel.unary_stream(UNARY_STREAM)(b"x", timeout=10)
            assert [m async for m in stream] == [b"one:x", b"two:x"]
            token = (await tokens.get_token()).value
    assert sorted(results) == sorted(b"echo:%d" % i for i in range(32))
    assert auth_server.token_requests == 1 and signer.signatures == 1
    assert api.seen == [f"Bearer {token}"] * 33


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_aio_retries_a_unary_call_once_and_never_a_stream(
    auth_server: AuthorizationServer, signer: InMemorySigner, api: CheckingGrpcServer
) -> None:
    async with TokenManager(auth_server.token_endpoint, PrivateKeyJWT("svc", signer)) as tokens:
        first = (await tokens.get_token()).value
        api.revoked.add(first)
        async with aio_channel(api.target, tokens) as channel:
            assert await channel.unary_unary(UNARY)(b"hi", timeout=10) == b"echo:hi"
            second = (await tokens.get_token()).value
            assert api.seen == [f"Bearer {first}", f"Bearer {second}"] and first != second
            api.revoked.add(second)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                [m async for m in channel.unary_stream(UNARY_STREAM)(b"x", timeout=10)]
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert len(api.seen) == 3  # the stream: not replayed
            api.accepts = lambda token: False
            with pytest.raises(grpc.aio.AioRpcError):
                await channel.unary_unary(UNARY)(b"hi", timeout=10)
            assert len(api.seen) == 5  # one retry, not more
    # The retry asked for a fresh token, but the manager refreshes an entry at most once per
    # min_invalidation_interval (10 s): the retry went with the token it had.
    assert auth_server.token_requests == 2


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_aio_token_failure_is_an_aio_rpc_error_without_the_secret(
    auth_server: AuthorizationServer, api: CheckingGrpcServer
) -> None:
    auth_server.register_client("svc", client_secret="another-secret")
    async with TokenManager(auth_server.token_endpoint, ClientSecretPost("svc", CANARY), **FAST) as tokens:
        async with aio_channel(api.target, tokens) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await channel.unary_unary(UNARY)(b"hi", timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "InvalidClientError" in refused.value.details()
            unsecret(refused.value, CANARY)
    auth_server.stop()
    async with TokenManager(auth_server.token_endpoint, ClientSecretPost("svc", CANARY), **FAST) as tokens:
        async with aio_channel(api.target, tokens) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as down:
                await channel.unary_unary(UNARY)(b"hi", timeout=10)
            assert down.value.code() == grpc.StatusCode.UNAVAILABLE
            assert isinstance(down.value.__cause__, TransportError)
            unsecret(down.value, CANARY)
    assert api.seen == []


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_aio_dpop_proof_for_the_calls_url(signer: InMemorySigner) -> None:
    with AuthorizationServer(dpop="required") as auth_server:
        auth_server.register_client("svc", jwks=signer.jwks)
        with CheckingGrpcServer(lambda token: token in auth_server.issued) as api:
            auth = PrivateKeyJWT("svc", signer)
            async with TokenManager(auth_server.token_endpoint, auth, dpop=True) as tokens:
                async with grpc.aio.secure_channel(
                    api.target,
                    grpc.local_channel_credentials(),
                    interceptors=aio_interceptors(tokens, authority=api.target),
                ) as channel:
                    assert await channel.unary_unary(UNARY)(b"hi", timeout=10) == b"echo:hi"
                token = await tokens.get_token()
                async with aio_channel(api.target, tokens) as channel:  # no authority=
                    with pytest.raises(grpc.aio.AioRpcError, match="authority=") as refused:
                        await channel.unary_unary(UNARY)(b"hi", timeout=10)
                    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
                    assert isinstance(refused.value.__cause__, ConfigurationError)
    assert token.is_dpop and api.seen == [f"DPoP {token.value}"]
    proof = api.dpop[0]
    assert proof is not None
    header = jwt.get_unverified_header(proof)
    claims = jwt.decode(proof, jwt.PyJWK(header["jwk"]).key, algorithms=[header["alg"]])
    assert claims["htm"] == "POST" and claims["htu"] == f"https://{api.target}{UNARY}"
