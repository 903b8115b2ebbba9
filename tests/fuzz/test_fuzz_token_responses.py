"""Fuzz the token endpoint's answers: status x headers x body, through ``httpx.MockTransport``.

Properties: a call ends (bounded attempts, no hang) with a well-formed ``AccessToken`` or a
``KeylessM2MError`` that carries no secret; a ``TokenManager`` never caches anything
malformed (a valid cached token keeps being served; a cold manager keeps no entry).
"""

from __future__ import annotations

import gzip
import json
import math
from typing import Any

import httpx
from hypothesis import given
from hypothesis import strategies as st

from keyless_m2m import AccessToken, ClientSecretPost, KeylessM2MError, TokenManager
from keyless_m2m.endpoint import MAX_EXPIRES_IN, TokenEndpoint, parse_retry_after
from tests.fuzz.helpers import assert_clean, run_bounded

URL = "https://auth.example/oauth2/token"
SECRET = "fuzz-client-secret-9d2c7e"
GOOD = {"access_token": "good-token-1", "token_type": "Bearer", "expires_in": 600}
MAX_ATTEMPTS = 3
CAP = 64 * 1024
Answer = tuple[int, list[tuple[str, str]], bytes]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
# Values for the members a token response has, wrong types included.
member_values = st.one_of(
    json_values,
    st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=60),
    st.sampled_from(["Bearer", "bearer", "BEARER", "mac", "DPoP", "", " Bearer"]),
    st.integers(min_value=-5, max_value=10**12),
    st.sampled_from([0, -1, 1, 3600, 1e308, 10**30, "3600", "abc", "1e3", "0x10", True]),
    st.just(SECRET),  # a server echoing the secret
)
token_like = st.fixed_dictionaries(
    {},
    optional={
        "access_token": member_values,
        "token_type": member_values,
        "expires_in": member_values,
        "scope": member_values,
        "error": st.sampled_from(["invalid_client", "server_error", "temporarily_unavailable", "", 5])
        | st.text(max_size=20),
        "error_description": member_values,
        "error_uri": member_values,
        "refresh_token": member_values,
    },
)


def _dump(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


bodies = st.one_of(
    token_like.map(_dump),
    json_values.map(_dump),
    st.builds(lambda d, cut: _dump(d)[:cut], token_like, st.integers(0, 200)),  # truncated
    st.binary(max_size=300),
    st.text(max_size=200).map(lambda t: t.encode("utf-8")),
    st.just(b'{"access_token": "t", "token_type": "Bearer", "expires_in": ' + b"9" * 5000 + b"}"),
    st.just(b"[" * 5000 + b"]" * 5000),  # deep nesting
)
statuses = st.one_of(
    st.sampled_from([200, 200, 200, 201, 204, 301, 302, 307, 400, 401, 403, 404, 429, 500, 502, 503]),
    st.integers(min_value=100, max_value=599),
)
content_types = st.sampled_from(
    ["application/json", "application/json; charset=utf-8", "text/html", "text/plain", None]
)
retry_after_values = st.one_of(
    st.none(),
    st.integers(min_value=-10, max_value=10**12).map(str),
    st.sampled_from(["Wed, 21 Oct 2015 07:28:00 GMT", "Fri, 31 Dec 9999 23:59:59 GMT", "soon", "", "1.5"]),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
)


@st.composite
def responses(draw: st.DrawFn) -> Answer:
    status = draw(statuses)
    body = draw(bodies)
    headers: list[tuple[str, str]] = []
    content_type = draw(content_types)
    if content_type:
        headers.append(("content-type", content_type))
    retry_after = draw(retry_after_values)
    if retry_after is not None:
        headers.append(("retry-after", retry_after))
    encoding = draw(st.sampled_from([None, None, "gzip", "gzip-bomb", "gzip-broken"]))
    if encoding == "gzip":
        body = gzip.compress(body)
        headers.append(("content-encoding", "gzip"))
    elif encoding == "gzip-bomb":
        # a few KB on the wire, more than the size cap once inflated
        body = gzip.compress(b"0" * draw(st.integers(CAP // 2, 4 * CAP)))
        headers.append(("content-encoding", "gzip"))
    elif encoding == "gzip-broken":
        body = gzip.compress(body)[: draw(st.integers(0, 20))]
        headers.append(("content-encoding", "gzip"))
    return status, headers, body


def _well_formed(token: AccessToken) -> None:
    assert isinstance(token.value, str) and token.value
    assert token.value.isascii() and token.value.isprintable() and " " not in token.value
    assert token.token_type == "Bearer"
    assert math.isfinite(token.expires_in) and 0 < token.expires_in <= MAX_EXPIRES_IN
    assert token.scope is None or isinstance(token.scope, str)
    assert "access_token" not in token.raw
    assert token.value not in repr(token)


class Server:
    """Answers each request with the next canned response (the last one repeats)."""

    def __init__(self, *answers: Answer) -> None:
        self.answers = list(answers)
        self.requests = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        status, headers, body = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        return httpx.Response(status, headers=headers, content=body)


def _endpoint(server: Server, sleeps: list[float]) -> TokenEndpoint:
    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    return TokenEndpoint(
        URL,
        ClientSecretPost("fuzz-client", SECRET),
        http_client=httpx.AsyncClient(transport=httpx.MockTransport(server)),
        max_attempts=MAX_ATTEMPTS,
        max_response_bytes=CAP,
        deadline=30.0,
        sleep=sleep,
    )


@given(responses())
def test_any_answer_is_a_token_or_a_typed_clean_error(answer: Answer) -> None:
    server = Server(answer)
    sleeps: list[float] = []

    async def call() -> AccessToken:
        endpoint = _endpoint(server, sleeps)
        try:
            return await endpoint.request(scope="a b")
        finally:
            await endpoint._client().aclose()

    try:
        token = run_bounded(call)
    except KeylessM2MError as exc:
        assert_clean(exc, [SECRET])
    else:
        _well_formed(token)
        assert SECRET not in repr(token.raw) or SECRET in answer[2].decode("utf-8", "replace")
    assert 1 <= server.requests <= MAX_ATTEMPTS
    assert len(sleeps) == server.requests - 1
    assert all(0 <= s <= 30.0 for s in sleeps)  # never past the deadline


@given(responses())
def test_a_cached_token_survives_any_bad_refresh(answer: Answer) -> None:
    """Outside ``async with`` the manager refreshes inline; refresh_window covers the whole
    lifetime, so the second call refreshes with the fuzzed answer."""
    good = (200, [("content-type", "application/json")], _dump(GOOD))
    server = Server(good, answer)

    async def call() -> tuple[AccessToken, AccessToken]:
        tokens = TokenManager(
            URL,
            ClientSecretPost("fuzz-client", SECRET),
            http_client=httpx.AsyncClient(transport=httpx.MockTransport(server)),
            refresh_window=10**6,
            max_attempts=1,
            max_response_bytes=CAP,
        )
        try:
            first = await tokens.get_token()
            second = await tokens.get_token()  # a refresh with the fuzzed answer
            assert await tokens.get_token() in (first, second)
            return first, second
        finally:
            await tokens.endpoint._client().aclose()
            await tokens.aclose()

    first, second = run_bounded(call)  # no error escapes while a valid token exists
    assert first.value == "good-token-1"
    if second is not first:
        _well_formed(second)


@given(responses())
def test_a_cold_manager_caches_nothing_malformed(answer: Answer) -> None:
    server = Server(answer)

    async def call() -> None:
        tokens = TokenManager(
            URL,
            ClientSecretPost("fuzz-client", SECRET),
            http_client=httpx.AsyncClient(transport=httpx.MockTransport(server)),
            max_attempts=1,
            failure_backoff=0.0,
            max_response_bytes=CAP,
        )
        try:
            try:
                token = await tokens.get_token()
            except KeylessM2MError as exc:
                assert_clean(exc, [SECRET])
                before = server.requests
                try:
                    await tokens.get_token()
                except KeylessM2MError as again:
                    assert_clean(again, [SECRET])
                # nothing was cached: the next call asked the server again
                assert server.requests == before + 1
            else:
                _well_formed(token)
                assert await tokens.get_token() is token
                assert server.requests == 1
        finally:
            await tokens.endpoint._client().aclose()
            await tokens.aclose()

    run_bounded(call)


@given(retry_after_values, st.one_of(st.none(), retry_after_values))
def test_parse_retry_after_never_raises(value: str | None, date: str | None) -> None:
    result = parse_retry_after(value, server_date=date)
    assert result is None or (math.isfinite(result) and 0.0 <= result <= 24 * 3600)
