"""What deployed servers do that the RFCs do not, against the embedded ``AuthorizationServer``
over real loopback sockets, on asyncio and trio: a ``token_type`` other than ``Bearer``
(refused with the option that accepts it; never DPoP), and ``client_secret_basic`` with a
secret that RFC 6749 form-encoding changes, against a server that form-decodes and one that
compares the raw ``id:secret``. (Metadata that omits a grant or method:
``tests/integration/test_discovery.py``.)"""

from __future__ import annotations

import pytest

from keyless_m2m import ClientSecretBasic, ConfigurationError, InvalidTokenResponseError, TokenManager
from keyless_m2m.testing.authorization_server import AuthorizationServer

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

SECRET = "the-client-secret-" + "q" * 12


def secret_server(**options: object) -> AuthorizationServer:
    server = AuthorizationServer(**options)  # type: ignore[arg-type]
    server.register_client("svc", client_secret=SECRET)
    return server


# -- token_type -----------------------------------------------------------------------------


async def test_a_token_type_other_than_bearer_names_the_option_that_accepts_it() -> None:
    with secret_server(token_type="access_token") as srv:
        auth = ClientSecretBasic("svc", SECRET)
        async with TokenManager(srv.token_endpoint, auth) as tokens:
            with pytest.raises(InvalidTokenResponseError) as info:
                await tokens.get_token()
        message = str(info.value)
        assert "token_type must be Bearer, got 'access_token'" in message
        assert "set accept_token_types=('access_token',) if this server's tokens are Bearer tokens" in message
        assert srv.token_requests == 1  # a malformed success is not retried

        lenient = TokenManager(srv.token_endpoint, auth, accept_token_types=("ACCESS_TOKEN",))
        async with lenient:
            token = await lenient.get_token()
        assert token.value == srv.issued[-1] and token.token_type == "Bearer"


async def test_from_issuer_passes_accept_token_types_to_its_endpoint() -> None:
    with secret_server(token_type="Access_Token") as srv:
        auth = ClientSecretBasic("svc", SECRET)
        async with TokenManager.from_issuer(srv.issuer, auth, accept_token_types={"access_token"}) as tokens:
            assert (await tokens.get_token()).value == srv.issued[-1]


async def test_dpop_is_refused_and_never_acceptable() -> None:
    with secret_server(token_type="DPoP") as srv:
        auth = ClientSecretBasic("svc", SECRET)
        async with TokenManager(srv.token_endpoint, auth) as tokens:
            with pytest.raises(InvalidTokenResponseError, match=r"DPoP-bound .* not supported yet"):
                await tokens.get_token()
        with pytest.raises(ConfigurationError, match="cannot accept DPoP"):
            TokenManager(srv.token_endpoint, auth, accept_token_types=("dpop",))


async def test_an_odd_token_type_is_described_never_echoed() -> None:
    odd = "x" * 40 + "\x1b[31m"
    with secret_server(token_type=odd) as srv:
        async with TokenManager(srv.token_endpoint, ClientSecretBasic("svc", SECRET)) as tokens:
            with pytest.raises(InvalidTokenResponseError) as info:
                await tokens.get_token()
    message = str(info.value)
    assert "x" * 20 not in message and "\x1b" not in message
    assert "45-character value not shown" in message and "accept_token_types=" in message
