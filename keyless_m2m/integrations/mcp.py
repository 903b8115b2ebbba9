"""The Model Context Protocol's Python SDK (``mcp``): its client-credentials provider with
``private_key_jwt``, with the client assertion signed by any of this library's signers
(KMS, HSM, local key) or taken from a workload-identity source.

(Skipped when the documentation's examples run, as they need an MCP server and a KMS key;
the MCP integration page's examples run the same calls against the embedded servers.)

>>> provider = oauth_provider(                                        # doctest: +SKIP
...     "https://mcp.example/mcp",
...     PrivateKeyJWT("my-agent", AwsKmsSigner("alias/agent")),
...     issuer="https://auth.example",
...     scope="tools.call",
... )
>>> async with httpx2.AsyncClient(auth=provider) as http:              # doctest: +SKIP
...     async with Client(streamable_http_client(url, http_client=http)) as client: ...

The SDK's ``PrivateKeyJWTOAuthProvider`` discovers the authorization server from the MCP
server's protected-resource metadata (RFC 9728) and that server's metadata (RFC 8414),
then calls an *assertion callback* with the audience the assertion must carry: the
authorization server's issuer identifier (draft-ietf-oauth-rfc7523bis). :func:`assertion_provider`
makes that callback:

- from a :class:`~keyless_m2m.PrivateKeyJWT`: a fresh assertion per call, signed by its
  signer, ``aud`` = the issuer the SDK passes (or the ``audience=`` you configured), with
  ``typ: client-authentication+jwt``; a ``PrivateKeyJWT(issuer=...)`` that names another
  issuer is refused (the assertion would be made for a server it was not meant for), and so
  is ``audience_policy="token_endpoint"`` (the SDK does not pass the token endpoint URL);
- from a :class:`~keyless_m2m.assertions.WorkloadIdentity` or an
  :class:`~keyless_m2m.assertions.AssertionSource` (GitHub Actions, GCP metadata, a
  projected Kubernetes token): the platform's JWT of that moment, whose audience the
  platform fixed (the SDK's audience is not used). The SDK always sends it as
  ``client_assertion_type`` ``jwt-bearer``: a SPIFFE source (``jwt-spiffe``) is refused.

:func:`oauth_provider` builds the SDK's provider around it, with the client id taken from
the credentials and an in-memory token storage. The SDK then keeps the token itself (not
a :class:`~keyless_m2m.TokenManager`).

When the token endpoint is known, the simpler path needs no discovery and no SDK auth at
all: the SDK's streamable HTTP client takes an ``httpx2.AsyncClient``, whose ``auth=`` can be
a manager's ``tokens.auth(library="httpx2")`` (one token for many calls, one retry after
``invalid_token``, DPoP). This module imports ``mcp`` when it is imported: ``pip install
'keyless-m2m[mcp]'``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from .._runtime import import_extra
from ..assertions import JWT_BEARER, AssertionSource, WorkloadIdentity, fresh_assertion
from ..client_auth import PrivateKeyJWT
from ..errors import ConfigurationError

_client_credentials: Any = import_extra("mcp.client.auth.extensions.client_credentials", "mcp")

__all__ = ["AssertionCallback", "MemoryTokenStorage", "assertion_provider", "oauth_provider"]

AssertionCallback = Callable[[str], Awaitable[str]]
"""What the SDK calls for a client assertion: ``audience -> JWT``."""

Credentials = PrivateKeyJWT | WorkloadIdentity | AssertionSource


def assertion_provider(credentials: Credentials, *, min_validity: float = 5.0) -> AssertionCallback:
    """The SDK's ``assertion_provider`` callback from ``credentials`` (see the module
    docstring). ``min_validity``: for a platform's JWT, the seconds it must still be valid
    (one about to expire is fetched again, as :func:`~keyless_m2m.assertions.fresh_assertion`)."""
    if isinstance(credentials, PrivateKeyJWT):
        return _signed(credentials)
    if isinstance(credentials, WorkloadIdentity):
        source, min_validity = credentials.source, credentials.min_validity
    elif isinstance(credentials, AssertionSource):
        source = credentials
    else:
        raise ConfigurationError(
            "credentials must be a PrivateKeyJWT, a WorkloadIdentity or an AssertionSource, "
            f"not {type(credentials).__name__}"
        )
    if source.assertion_type != JWT_BEARER:
        raise ConfigurationError(
            f"the MCP SDK sends client_assertion_type {JWT_BEARER!r} only; {source!r} gives "
            f"{source.assertion_type!r} assertions"
        )
    return _platform(source, min_validity)


def _signed(auth: PrivateKeyJWT) -> AssertionCallback:
    if auth.audience is None and auth.audience_policy == "token_endpoint":
        raise ConfigurationError(
            "the MCP SDK gives the assertion callback the issuer identifier only, not the token "
            "endpoint URL: use audience_policy='auto' or 'issuer', or audience='<the aud your "
            "server wants>'"
        )

    async def provide(audience: str) -> str:
        if not isinstance(audience, str) or not audience:
            raise ConfigurationError("the MCP SDK passed no audience for the client assertion")
        if auth.issuer is not None and auth.issuer != audience:
            raise ConfigurationError(
                f"the MCP SDK asks for an assertion for the issuer {audience!r}, but the "
                f"PrivateKeyJWT is for {auth.issuer!r}: pass the same issuer to both"
            )
        # aud = the issuer (audience_policy "auto" or "issuer"), or the audience= configured.
        return await auth.assertion(audience, issuer=audience)

    return provide


def _platform(source: AssertionSource, min_validity: float) -> AssertionCallback:
    async def provide(audience: str) -> str:
        assertion, _ = await fresh_assertion(source, min_validity)
        return assertion.reveal()

    return provide


class MemoryTokenStorage:
    """The SDK's ``TokenStorage`` in memory: the tokens and client information of one
    provider, gone with the process. Its ``repr`` shows neither."""

    def __init__(self) -> None:
        self._tokens: Any = None
        self._client_info: Any = None

    def __repr__(self) -> str:
        return f"MemoryTokenStorage(tokens={'set' if self._tokens is not None else 'none'})"

    async def get_tokens(self) -> Any:
        return self._tokens

    async def set_tokens(self, tokens: Any) -> None:
        self._tokens = tokens

    async def get_client_info(self) -> Any:
        return self._client_info

    async def set_client_info(self, client_info: Any) -> None:
        self._client_info = client_info


def oauth_provider(
    server_url: str,
    credentials: Credentials,
    *,
    issuer: str,
    scope: str | None = None,
    client_id: str | None = None,
    storage: Any = None,
    min_validity: float = 5.0,
) -> Any:
    """The SDK's ``PrivateKeyJWTOAuthProvider`` (an ``httpx2.Auth``) for the MCP server at
    ``server_url``, authenticating with ``credentials`` at the authorization server whose
    issuer identifier is ``issuer`` (the SDK refuses metadata of any other). ``client_id``:
    the credentials' own by default (needed for a bare ``AssertionSource``); ``storage``:
    a :class:`MemoryTokenStorage` by default."""
    if not isinstance(issuer, str) or not issuer:
        raise ConfigurationError("issuer must be the authorization server's issuer identifier")
    client_id = client_id or getattr(credentials, "client_id", None)
    if not isinstance(client_id, str) or not client_id:
        raise ConfigurationError("client_id= is needed for an AssertionSource (it has no client id)")
    return _client_credentials.PrivateKeyJWTOAuthProvider(
        server_url=server_url,
        storage=storage if storage is not None else MemoryTokenStorage(),
        client_id=client_id,
        assertion_provider=assertion_provider(credentials, min_validity=min_validity),
        scope=scope,
        issuer=issuer,
    )
