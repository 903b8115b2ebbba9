"""What deployed servers do that the RFCs do not, against the embedded ``AuthorizationServer``
over real loopback sockets, on asyncio and trio: a ``token_type`` other than ``Bearer``
(refused with the option that accepts it; DPoP only with a DPoP key), and ``client_secret_basic`` with a
secret that RFC 6749 form-encoding changes, against a server that form-decodes and one that
compares the raw ``id:secret``. (Metadata that omits a grant or method:
``tests/integration/test_discovery.py``.)"""

from __future__ import annotations

from urllib.parse import quote_plus

import pytest

from keyless_m2m import (
    ClientSecretBasic,
    ConfigurationError,
    InvalidClientError,
    InvalidTokenResponseError,
    TokenManager,
)
from keyless_m2m.testing.authorization_server import AuthorizationServer
from tests.frame_locals import secret_locals

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


async def test_dpop_without_a_dpop_key_is_refused_and_never_acceptable() -> None:
    with secret_server(token_type="DPoP") as srv:
        auth = ClientSecretBasic("svc", SECRET)
        async with TokenManager(srv.token_endpoint, auth) as tokens:
            with pytest.raises(InvalidTokenResponseError, match=r"DPoP key .* set dpop=True"):
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


# -- client_secret_basic encoding ---------------------------------------------------------

# Every character RFC 6749 form-encoding changes that deployed servers trip over.
ODD_SECRET = "a:b+c%2F= d-" + "z" * 16


def odd_secret_server(basic_encoding: str) -> AuthorizationServer:
    server = AuthorizationServer(basic_encoding=basic_encoding)  # type: ignore[arg-type]
    server.register_client("svc", client_secret=ODD_SECRET)
    return server


async def test_basic_with_an_encoded_secret_against_a_raw_comparing_server() -> None:
    with odd_secret_server("raw") as srv:
        auth = ClientSecretBasic("svc", ODD_SECRET)
        async with TokenManager(srv.token_endpoint, auth) as tokens:
            with pytest.raises(InvalidClientError) as info:
                await tokens.get_token()
        error = info.value
        assert error.hint is not None and "the client secret contains characters" in error.hint
        assert "encoding='raw'" in error.hint and "ClientSecretPost" in error.hint
        shown = [str(error), repr(error), error.hint, repr(auth)]
        for text in shown:
            assert ODD_SECRET not in text and quote_plus(ODD_SECRET) not in text
            assert "a:b" not in text and "%2F" not in text  # nor which characters it holds
        assert not secret_locals(error, [ODD_SECRET, quote_plus(ODD_SECRET)])

        raw = ClientSecretBasic("svc", ODD_SECRET, encoding="raw")
        async with TokenManager(srv.token_endpoint, raw) as tokens:
            assert (await tokens.get_token()).value == srv.issued[-1]


async def test_basic_form_encoding_works_against_a_form_decoding_server() -> None:
    with odd_secret_server("form") as srv:
        async with TokenManager(srv.token_endpoint, ClientSecretBasic("svc", ODD_SECRET)) as tokens:
            assert (await tokens.get_token()).value == srv.issued[-1]
        # raw against a decoding server: its '+' becomes a space, '%2F' a '/': refused, no hint
        raw = ClientSecretBasic("svc", ODD_SECRET, encoding="raw")
        async with TokenManager(srv.token_endpoint, raw) as tokens:
            with pytest.raises(InvalidClientError) as info:
                await tokens.get_token()
        assert info.value.hint is None


async def test_a_plain_secret_gets_no_encoding_hint() -> None:
    with secret_server(basic_encoding="raw") as srv:
        async with TokenManager(srv.token_endpoint, ClientSecretBasic("svc", SECRET + "x")) as tokens:
            with pytest.raises(InvalidClientError) as info:
                await tokens.get_token()
    assert info.value.hint is None  # form-encoding changed nothing: not the reason


def test_raw_encoding_refuses_a_client_id_with_a_colon() -> None:
    with pytest.raises(ConfigurationError, match="cannot send a client id that contains ':'") as info:
        ClientSecretBasic("tenant:svc", ODD_SECRET, encoding="raw")
    assert ODD_SECRET not in str(info.value)
    assert not secret_locals(info.value, [ODD_SECRET])
    with pytest.raises(ConfigurationError, match="encoding must be"):
        ClientSecretBasic("svc", ODD_SECRET, encoding="base64")  # type: ignore[arg-type]
    hint = ClientSecretBasic("tenant:svc", SECRET)._hint
    assert hint is not None and hint.startswith("the client id contains")
