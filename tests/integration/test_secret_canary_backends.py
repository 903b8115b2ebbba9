"""Canary for every backend: a token flow through a ``TokenManager`` against the embedded
``AuthorizationServer`` for each signer backend's test double and for the Redis cache,
error paths included (wrong key registered, unknown scope, permission denied, key disabled,
Redis down), with every logger at DEBUG. No log record (message, args, exc_info), repr of
a signer, manager, cache, client auth or token, nor any raised exception (str, repr,
``__dict__``, and its whole ``__cause__``/``__context__`` chain) may hold an access token,
a client assertion, a client secret, a backend credential (Vault token, Azure bearer
token, AWS secret key, Redis password, cache encryption key) or private key material.
"""

from __future__ import annotations

import base64
import logging
import secrets
import traceback
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from keyless_m2m import (
    ClientSecretBasic,
    InvalidClientError,
    InvalidScopeError,
    PrivateKeyJWT,
    SigningError,
    TokenManager,
)
from keyless_m2m.signers import Signer
from keyless_m2m.testing.authorization_server import AuthorizationServer
from keyless_m2m.testing.signers import InMemorySigner
from tests.aws_faults import KmsSignFaults
from tests.helpers import make_key, pem_of, require_module

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

CLIENT_SECRET = "canary-client-secret-" + secrets.token_hex(8)
FAST: dict[str, Any] = {
    "max_attempts": 1,
    "backoff": 0.0,
    "failure_backoff": 0.01,
    "max_failure_backoff": 0.02,
}


def _b64url_int(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class Canary:
    """What must never show up (``forbid``) and everything that was shown (``see``...)."""

    def __init__(self) -> None:
        self.forbidden: dict[str, str] = {}  # value -> what it is, for the failure message
        self.texts: list[str] = []
        self.errors: list[BaseException] = []
        self.exempt: dict[str, str] = {}  # value -> a third-party logger that does log it

    def forbid(self, what: str, value: str | bytes | None, *, except_in_logs_of: str | None = None) -> None:
        if isinstance(value, bytes):
            self.forbid(what + " (hex)", value.hex())
            self.forbid(what + " (base64)", base64.b64encode(value).decode())
            self.forbid(what + " (base64url)", base64.urlsafe_b64encode(value).rstrip(b"=").decode())
            self.forbid(what + " (repr)", repr(value)[2:-1])
            return
        if value:
            assert len(value) >= 12, f"{what} is too short to be a meaningful canary"
            self.forbidden[value] = what
            if except_in_logs_of:
                self.exempt[value] = except_in_logs_of

    def forbid_private_key(self, what: str, key: Any) -> None:
        for fmt in ("pkcs8", "traditional"):
            for line in pem_of(key, fmt=fmt).decode().splitlines()[1:-1]:
                if len(line) >= 16:  # the short last line could match by chance
                    self.forbid(f"{what} PEM ({fmt})", line)
        numbers: list[int] = []
        if isinstance(key, ec.EllipticCurvePrivateKey):
            numbers = [key.private_numbers().private_value]
        elif isinstance(key, rsa.RSAPrivateKey):
            private = key.private_numbers()
            numbers = [private.d, private.p, private.q]
        elif isinstance(key, ed25519.Ed25519PrivateKey):
            from cryptography.hazmat.primitives import serialization

            raw = key.private_bytes(
                serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
            )
            self.forbid(f"{what} raw private bytes", raw)
        for number in numbers:
            self.forbid(f"{what} private number", str(number))
            self.forbid(f"{what} private number (hex)", f"{number:x}")
            self.forbid(f"{what} private number (JWK)", _b64url_int(number))

    def watch(self, server: AuthorizationServer) -> None:
        """Every assertion and form-posted secret the server receives is forbidden."""

        def on_request(form: dict[str, list[str]]) -> None:
            for value in form.get("client_assertion", []):
                self.forbid("client assertion", value)
                self.forbid("client assertion signature", value.rsplit(".", 1)[-1])
            for value in form.get("client_secret", []):
                self.forbid("client secret (posted)", value)

        server.on_request = on_request

    def see(self, *objects: object) -> None:
        for obj in objects:
            self.texts += [repr(obj), str(obj)]

    def raised(self, exc: BaseException) -> None:
        self.errors.append(exc)
        self.texts.append("".join(traceback.format_exception(exc)))
        seen: set[int] = set()
        todo: list[BaseException] = [exc]
        while todo:  # the whole graph: __cause__ and __context__, even a suppressed context
            current = todo.pop()
            if id(current) in seen:
                continue
            seen.add(id(current))
            self.texts += [str(current), repr(current), repr(getattr(current, "__dict__", {}))]
            todo += [e for e in (current.__cause__, current.__context__) if e is not None]
            if isinstance(current, BaseExceptionGroup):
                todo += list(current.exceptions)

    async def expect(self, error: type[BaseException], call: Awaitable[Any]) -> BaseException:
        with pytest.raises(error) as info:
            await call
        self.raised(info.value)
        return info.value

    def check(self, caplog: pytest.LogCaptureFixture) -> None:
        """Nothing forbidden in what was seen, raised or logged (message, args, exc_info)."""
        formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
        records = caplog.records
        assert records, "nothing was logged: is DEBUG logging on?"
        logged = [(r.name, text) for r in records for text in (formatter.format(r), repr(r.args))]
        haystack = "\n".join(self.texts)
        leaked = {what for value, what in self.forbidden.items() if value in haystack}
        for name, text in logged:
            for value, what in self.forbidden.items():
                exempt = self.exempt.get(value)
                if value in text and not (exempt and (name == exempt or name.startswith(exempt + "."))):
                    leaked.add(f"{what} (in a {name} log record)")
        assert not leaked, f"secrets leaked: {sorted(leaked)}"


@pytest.fixture
def canary(caplog: pytest.LogCaptureFixture) -> Canary:
    caplog.set_level(logging.DEBUG)  # the root logger: the SDKs' loggers too
    return Canary()


async def token_flow(
    canary: Canary,
    signer: Signer,
    faults: dict[str, tuple[Callable[[], None], Callable[[], None]]],
) -> None:
    """A token, the token used on an API, an unknown scope, a wrong key registered, then
    each backend fault (inject, expect a ``SigningError`` from a manager with no token, heal)."""
    with AuthorizationServer(expires_in=600) as server:
        canary.watch(server)
        description = await signer.describe()
        server.register_client("svc", public_jwk=description.public_jwk, scopes=["pockets.read"])
        server.register_client("wrong-key", public_jwk=InMemorySigner().public_jwk)  # a key nobody signs with
        auth = PrivateKeyJWT("svc", signer)
        async with TokenManager(server.token_endpoint, auth, scope="pockets.read", **FAST) as tokens:
            token = await tokens.get_token()
            canary.forbid("access token", token.value)
            seen_headers: list[str] = []

            def api(request: httpx.Request) -> httpx.Response:
                seen_headers.append(request.headers["authorization"])
                return httpx.Response(200)

            async with httpx.AsyncClient(auth=tokens.auth(), transport=httpx.MockTransport(api)) as http:
                await http.get("https://api.example/")
            assert seen_headers == [f"Bearer {token.value}"]
            canary.see(signer, tokens, auth, token, tokens.endpoint, tokens.stats, description)
            await canary.expect(InvalidScopeError, tokens.get_token(scope="no.such.scope"))

        wrong = TokenManager(server.token_endpoint, PrivateKeyJWT("wrong-key", signer), **FAST)
        canary.see(wrong)
        await canary.expect(InvalidClientError, wrong.get_token())
        await wrong.aclose()

        for inject, heal in faults.values():
            inject()
            try:
                cold = TokenManager(server.token_endpoint, PrivateKeyJWT("svc", signer), **FAST)
                error = await canary.expect(SigningError, cold.get_token())
                assert isinstance(error, SigningError) and not error.retryable, error
                canary.see(cold)
                await cold.aclose()
            finally:
                heal()
        assert server.refusals, "the wrong-key and scope refusals reached the server"
    assert len(canary.errors) == 2 + len(faults)


# -- AWS KMS: moto in process -------------------------------------------------------------------


@pytest.fixture
def aws_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    require_module("boto3", reason="the aws extra is not installed")
    require_module("moto")
    credentials = {
        "AWS_ACCESS_KEY_ID": "AKIA" + secrets.token_hex(8).upper(),
        "AWS_SECRET_ACCESS_KEY": "canary-aws-secret-" + secrets.token_hex(12),
        "AWS_SESSION_TOKEN": "canary-aws-session-" + secrets.token_hex(12),
    }
    for name in ("AWS_PROFILE", "AWS_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_KMS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {
        **credentials,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(tmp_path / "absent"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "absent"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(name, value)
    return credentials


async def test_aws_kms(
    canary: Canary, caplog: pytest.LogCaptureFixture, aws_credentials: dict[str, str]
) -> None:
    import boto3
    from botocore.config import Config
    from moto import mock_aws

    from keyless_m2m.signers import AwsKmsSigner

    canary.forbid("AWS secret access key", aws_credentials["AWS_SECRET_ACCESS_KEY"])
    # botocore's own DEBUG logs print the request headers, X-Amz-Security-Token included:
    # third-party logging this library cannot redact (keep botocore at INFO or above).
    canary.forbid("AWS session token", aws_credentials["AWS_SESSION_TOKEN"], except_in_logs_of="botocore")
    sign_faults = KmsSignFaults()

    def fault(code: str) -> tuple[Callable[[], None], Callable[[], None]]:
        def inject() -> None:
            sign_faults.fault = (400, code)

        def heal() -> None:
            sign_faults.fault = None

        return inject, heal

    with mock_aws():
        client = boto3.client(  # explicit credentials: mock_aws replaces the environment's
            "kms",
            region_name="us-east-1",
            aws_access_key_id=aws_credentials["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=aws_credentials["AWS_SECRET_ACCESS_KEY"],
            aws_session_token=aws_credentials["AWS_SESSION_TOKEN"],
            config=Config(retries={"total_max_attempts": 1}),  # one attempt, like the signer's own
        )
        try:
            key = client.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["Arn"]
            sign_faults.install(client)
            signer = AwsKmsSigner(key, client=client)
            faults = {"denied": fault("AccessDeniedException"), "disabled": fault("DisabledException")}
            try:
                await token_flow(canary, signer, faults)
            finally:
                await signer.aclose()
        finally:
            client.close()
    canary.check(caplog)


# -- GCP Cloud KMS: the gRPC fake ----------------------------------------------------------------


@pytest.fixture(scope="module")
def gcp_kms() -> Iterator[Any]:
    require_module("google.cloud.kms_v1", reason="the gcp extra is not installed")
    from keyless_m2m.testing.emulators.gcp_kms import FakeCloudKms

    with FakeCloudKms() as kms:
        kms.add_key("canary", "EC_SIGN_P256_SHA256", private_key=make_key("p256"))
        yield kms


async def test_gcp_kms(canary: Canary, caplog: pytest.LogCaptureFixture, gcp_kms: Any) -> None:
    name = f"{gcp_kms.key_ring_name}/cryptoKeys/canary/cryptoKeyVersions/1"
    canary.forbid_private_key("the GCP fake's key", make_key("p256"))
    signer = gcp_kms.signer(name)
    faults = {
        "denied": (lambda: gcp_kms.deny(name), lambda: gcp_kms.allow(name)),
        "disabled": (
            lambda: gcp_kms.set_state(name, "DISABLED"),
            lambda: gcp_kms.set_state(name, "ENABLED"),
        ),
    }
    try:
        await token_flow(canary, signer, faults)
    finally:
        await signer.aclose()
    canary.check(caplog)


# -- Azure Key Vault: the HTTPS fake -------------------------------------------------------------


async def test_azure_key_vault(canary: Canary, caplog: pytest.LogCaptureFixture) -> None:
    require_module("azure.keyvault.keys", reason="the azure extra is not installed")
    from keyless_m2m.testing.emulators.azure_key_vault import (
        AsyncFakeKeyVaultCredential,
        FakeKeyVault,
        KeyVaultFault,
    )

    bearer = "canary-azure-bearer-" + secrets.token_urlsafe(18)
    rejected = "canary-azure-rejected-" + secrets.token_urlsafe(18)
    canary.forbid("Azure credential token", bearer)
    canary.forbid("Azure credential token (rejected)", rejected)
    canary.forbid_private_key("the Azure fake's key", make_key("p256"))
    with FakeKeyVault(token=bearer) as vault:
        vault.add_key("canary", make_key("p256"))
        signer = vault.signer("canary")
        canary.see(signer)
        faults = {
            "denied": (
                lambda: vault.fail_next(KeyVaultFault(403, operation="sign", count=10)),
                vault.clear_faults,
            ),
            "disabled": (
                lambda: vault.set_enabled("canary", False),
                lambda: vault.set_enabled("canary", True),
            ),
        }
        try:
            await token_flow(canary, signer, faults)
        finally:
            await signer.aclose()
        # a credential whose token the vault rejects: 401 on the first request
        impostor = vault.signer("canary", credential=AsyncFakeKeyVaultCredential(rejected))
        try:
            await canary.expect(SigningError, impostor.describe())
        finally:
            await impostor.aclose()
    canary.check(caplog)


# -- Vault / OpenBao transit: the real dev server ------------------------------------------------


@pytest.fixture(scope="module")
def openbao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    require_module("hvac", reason="the vault extra is not installed")
    from tests.vault_server import running_server  # imports hvac

    with running_server("openbao", tmp_path_factory.mktemp("openbao-canary")) as server:
        yield server


async def test_vault_transit(canary: Canary, caplog: pytest.LogCaptureFixture, openbao: Any) -> None:
    from keyless_m2m.signers.vault import VaultTransitSigner

    canary.forbid("Vault root token", openbao.token)
    key = openbao.new_key("ecdsa-p256")
    policy = f"canary-{uuid.uuid4().hex[:8]}"
    openbao.admin.sys.create_or_update_policy(
        name=policy,
        policy=f'path "transit/keys/{key}" {{ capabilities = ["read"] }}\n'
        f'path "transit/sign/{key}" {{ capabilities = ["update"] }}\n',
    )

    def new_token() -> str:
        created = openbao.admin.auth.token.create(policies=[policy], ttl="10m", no_default_policy=True)
        token = str(created["auth"]["client_token"])
        canary.forbid("Vault token", token)
        return token

    tokens = {"signer": new_token()}
    signer = VaultTransitSigner(key, url=openbao.url, token=tokens["signer"])
    read_only = f"{policy}-ro"
    openbao.admin.sys.create_or_update_policy(
        name=read_only, policy=f'path "transit/keys/{key}" {{ capabilities = ["read"] }}\n'
    )

    def revoke() -> None:  # the signer's token is revoked mid-run
        openbao.admin.auth.token.revoke(tokens["signer"])

    faults = {"revoked": (revoke, lambda: None)}
    try:
        await token_flow(canary, signer, faults)
    finally:
        await signer.aclose()
    # a token that may read the key but not sign with it
    created = openbao.admin.auth.token.create(policies=[read_only], ttl="10m", no_default_policy=True)
    limited_token = str(created["auth"]["client_token"])
    canary.forbid("Vault token (read-only)", limited_token)
    limited = VaultTransitSigner(key, url=openbao.url, token=limited_token)
    try:
        await limited.describe()
        canary.see(limited)
        await canary.expect(SigningError, limited.sign(b"header.claims"))
    finally:
        await limited.aclose()
    canary.check(caplog)


# -- the Redis shared cache ------------------------------------------------------------------------


@dataclass
class Redis:
    server: Any
    user: str
    password: str

    @property
    def url(self) -> str:
        return f"redis://{self.user}:{self.password}@127.0.0.1:{self.server.port}/0"


@pytest.fixture
async def redis(canary: Canary) -> AsyncIterator[Redis]:
    require_module("redis", reason="the redis extra is not installed")
    from keyless_m2m.cache import RedisTokenCache
    from tests.redis_server import RedisServer, require_redis_server

    server = RedisServer(require_redis_server()).start()
    try:
        password = "canary-redis-password-" + secrets.token_hex(10)
        canary.forbid("Redis password", password)
        async with RedisTokenCache(server.url) as admin:  # the default user, no password yet
            await admin._call(
                "execute_command", "ACL", "SETUSER", "canary", "on", f">{password}", "~*", "&*", "+@all"
            )
            await admin._call("execute_command", "ACL", "SETUSER", "default", "off")
        yield Redis(server, "canary", password)
    finally:
        server.close()


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
async def test_redis_cache(
    canary: Canary, caplog: pytest.LogCaptureFixture, redis: Redis, encrypted: bool
) -> None:
    from keyless_m2m.cache import RedisTokenCache
    from keyless_m2m.errors import CacheUnavailableError

    options: dict[str, Any] = {"namespace": f"canary-{uuid.uuid4().hex[:8]}", "timeout": 0.5}
    key = other_key = None
    if encrypted:
        key, other_key = RedisTokenCache.generate_key(), RedisTokenCache.generate_key()
        canary.forbid("cache encryption key", key)
        canary.forbid("cache encryption key (other)", other_key)
    canary.forbid("client secret", CLIENT_SECRET)
    wrong_password = "canary-wrong-redis-password-" + secrets.token_hex(8)
    canary.forbid("Redis password (wrong)", wrong_password)
    wrong_secret = "canary-wrong-client-secret-" + secrets.token_hex(8)
    canary.forbid("client secret (wrong)", wrong_secret)

    with AuthorizationServer(expires_in=600) as server:
        canary.watch(server)
        server.register_client("svc", client_secret=CLIENT_SECRET, scopes=["pockets.read"])
        auth = ClientSecretBasic("svc", CLIENT_SECRET)

        def manager(cache: RedisTokenCache, client_auth: Any = auth) -> TokenManager:
            return TokenManager(server.token_endpoint, client_auth, scope="pockets.read", cache=cache, **FAST)

        async with (
            RedisTokenCache(redis.url, encryption_key=key, **options) as cache_a,
            RedisTokenCache(redis.url, encryption_key=key, **options) as cache_b,
            manager(cache_a) as a,
            manager(cache_b) as b,
        ):
            token = await a.get_token()
            canary.forbid("access token", token.value)
            assert await b.get_token() == token  # shared through Redis
            assert server.token_requests == 1
            canary.see(cache_a, cache_b, a, b, auth, token, a.stats, b.stats)
            await canary.expect(InvalidScopeError, a.get_token(scope="no.such.scope"))

            # another reader: the wrong encryption key (or none), then the wrong password
            async with (
                RedisTokenCache(redis.url, encryption_key=other_key, **options) as reader,
                manager(reader) as c,
            ):
                read = await c.get_token()  # encrypted: the entry is ignored, fetched locally
                assert (read == token) is not encrypted
                canary.forbid("access token (reader)", read.value)
                canary.see(reader, c)
            intruder_url = f"redis://{redis.user}:{wrong_password}@127.0.0.1:{redis.server.port}/0"
            async with (
                RedisTokenCache(intruder_url, encryption_key=key, **options) as intruder,
                manager(intruder) as locally,
            ):
                canary.see(intruder, locally)
                other = await locally.get_token()  # Redis refuses it: fetched locally
                canary.forbid("access token (fetched locally)", other.value)
                await canary.expect(CacheUnavailableError, intruder.get("anything"))

            # the wrong client secret, through the cache (another namespace: no shared token)
            async with (
                RedisTokenCache(
                    redis.url, encryption_key=key, **{**options, "namespace": "canary-c"}
                ) as cache_c,
                manager(cache_c, ClientSecretBasic("svc", wrong_secret)) as refused,
            ):
                canary.see(refused)
                await canary.expect(InvalidClientError, refused.get_token())

            # Redis goes away: tokens are still fetched, locally
            redis.server.stop()
            assert await a.invalidate(token)
            fallback = await a.get_token()
            canary.forbid("access token (Redis down)", fallback.value)
            await canary.expect(CacheUnavailableError, cache_b.get("anything"))
            canary.see(cache_a, a)
    # every refusal above was checked by the canary (an empty list would prove nothing)
    assert [type(e) for e in canary.errors] == [
        InvalidScopeError,
        CacheUnavailableError,
        InvalidClientError,
        CacheUnavailableError,
    ]
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING and "unavailable" in r.getMessage()]
    assert warnings, "the Redis failures were logged"
    canary.check(caplog)


# -- the net itself catches what it should ------------------------------------------------------


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_the_canary_catches_planted_leaks(canary: Canary, caplog: pytest.LogCaptureFixture) -> None:
    key = make_key("p256")
    canary.forbid_private_key("planted key", key)
    canary.forbid("planted secret", "planted-secret-value-1234")
    pem_line = pem_of(key).decode().splitlines()[1]
    try:
        try:
            raise ValueError("request body: client_secret=planted-secret-value-1234")
        except ValueError:
            raise SigningError("clean message") from None  # suppressed, but still __context__
    except SigningError as exc:
        canary.raised(exc)
    logging.getLogger("keyless_m2m.planted").debug("key %s", pem_line)
    with pytest.raises(AssertionError, match="planted secret") as info:
        canary.check(caplog)
    assert "planted key PEM (pkcs8) (in a keyless_m2m.planted log record)" in str(info.value)
    canary.texts.clear()
    canary.see(key.private_numbers().private_value)
    with pytest.raises(AssertionError, match="planted key private number"):
        canary.check(caplog)
