"""A loopback MCP server (the SDK's ``MCPServer`` over streamable HTTP, served by uvicorn
in its own thread) that requires a bearer token from the embedded authorization server.

Its token verifier asks the authorization server what a token is
(:meth:`~keyless_m2m.testing.authorization_server.AuthorizationServer.introspect`: active,
client, granted scopes, the resources it was issued for); the SDK's bearer middleware
refuses a request without a token, with an unknown one, or with one lacking the required
scopes, and answers with the protected-resource metadata (RFC 9728) its client needs to
find the authorization server. One tool, ``whoami``, returns the client id of the token.
"""

from __future__ import annotations

import socket
import threading
from types import TracebackType
from typing import Any, Self

import uvicorn
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import MCPServer

from keyless_m2m.testing.authorization_server import AuthorizationServer

SCOPE = "tools.call"


class IntrospectingVerifier:
    """The SDK's ``TokenVerifier``, asking the embedded authorization server."""

    def __init__(self, auth_server: AuthorizationServer, resource: str) -> None:
        self.auth_server = auth_server
        self.resource = resource
        self.verified: list[str] = []  # every token presented, accepted or not
        self.revoked: set[str] = set()  # refused even while the authorization server knows them

    async def verify_token(self, token: str) -> AccessToken | None:
        self.verified.append(token)
        facts = self.auth_server.introspect(token)
        if not facts["active"] or token in self.revoked:
            return None
        audiences = facts.get("aud", [])
        return AccessToken(
            token=token,
            client_id=facts["client_id"],
            scopes=facts["scope"].split(),
            expires_at=facts["exp"],
            resource=self.resource if self.resource in audiences else None,
        )


class McpTestServer:
    def __init__(self, auth_server: AuthorizationServer) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", 0))
        self.port = self._socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self.verifier = IntrospectingVerifier(auth_server, self.url)
        server: MCPServer[Any] = MCPServer(
            "keyless-m2m-test",
            token_verifier=self.verifier,
            auth=AuthSettings(
                issuer_url=auth_server.issuer,  # type: ignore[arg-type]
                resource_server_url=self.url,  # type: ignore[arg-type]
                required_scopes=[SCOPE],
                validate_token_resource=True,
            ),
            log_level="WARNING",
        )

        @server.tool()
        def whoami() -> str:
            """The client id the caller's token was issued to."""
            token = get_access_token()
            return token.client_id if token is not None else "nobody"

        config = uvicorn.Config(server.streamable_http_app(), log_level="warning", lifespan="on")
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Self:
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )
        self._thread.start()
        for _ in range(500):  # bounded: 5 s
            if self._server.started:
                return self
            if not self._thread.is_alive():
                break
            threading.Event().wait(0.01)
        self.__exit__(None, None, None)
        raise RuntimeError("the MCP test server did not start")

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self._socket.close()
