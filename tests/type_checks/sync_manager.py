"""SyncTokenManager with client_secret_basic and a shared Redis cache, the httpx client."""

from __future__ import annotations

import httpx

from keyless_m2m import AccessToken, ClientSecretBasic, ClientSecretPost, SyncTokenManager
from keyless_m2m.cache import RedisTokenCache


def blocking_client() -> str:
    auth = ClientSecretBasic("my-client", "s3cr3t", encoding="raw")
    with SyncTokenManager(
        token_endpoint="https://auth.example/token", client_auth=auth, scope="pockets.read"
    ) as tokens:
        with httpx.Client(auth=tokens.auth()) as http:
            http.get("https://api.example/v2/pockets/")
        token: AccessToken = tokens.get_token()
        tokens.invalidate(token)
        return token.authorization_header()


def shared_cache() -> None:
    cache = RedisTokenCache("redis://localhost:6379/0", encryption_key=b"\0" * 32, timeout=0.5)
    auth = ClientSecretPost("my-client", "s3cr3t")
    tokens = SyncTokenManager(token_endpoint="https://auth.example/token", client_auth=auth, cache=cache)
    try:
        tokens.get_token(["a", "b"])
    finally:
        tokens.close()


async def misuse(tokens: SyncTokenManager) -> None:
    await tokens.get_token()  # type: ignore[misc]
    ClientSecretBasic("my-client", "s3cr3t", encoding="base64")  # type: ignore[arg-type]
