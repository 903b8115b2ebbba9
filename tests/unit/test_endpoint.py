"""TokenEndpoint with httpx.MockTransport: retries, Retry-After, validation, typed errors."""

from __future__ import annotations

import dataclasses
import gzip
import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from keyless_m2m import (
    AccessToken,
    ClientSecretPost,
    ConfigurationError,
    InvalidClientError,
    InvalidScopeError,
    InvalidTokenResponseError,
    KeylessM2MError,
    PrivateKeyJWT,
    RefusedWithoutReasonError,
    ServerError,
    TokenRequestError,
    TransportError,
)
from keyless_m2m._jose import b64url_decode
from keyless_m2m.endpoint import TokenEndpoint, parse_retry_after
from keyless_m2m.signers import LocalSigner
from tests.helpers import make_key, pem_of

pytestmark = pytest.mark.anyio
URL = "https://auth.example/api/oauth2/token"
SECRET = "sup3r-s3cret-value"
GOOD = {"access_token": "tok-abc.def", "token_type": "Bearer", "expires_in": 900}

Handler = Callable[[httpx.Request], httpx.Response]


class Recorder:
    def __init__(self, *responses: httpx.Response | Exception) -> None:
        self.responses = list(responses)
        self.requests: list[httpx.Request] = []
        self.forms: list[dict[str, list[str]]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        self.forms.append(parse_qs(request.content.decode()))
        item = self.responses.pop(0) if len(self.responses) > 1 else self.responses[0]
        if isinstance(item, Exception):
            raise item
        return item


def endpoint(handler: Handler, *, auth: Any = None, **options: Any) -> tuple[TokenEndpoint, list[float]]:
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    ep = TokenEndpoint(
        URL, auth or ClientSecretPost("client", SECRET), http_client=client, sleep=sleep, **options
    )
    return ep, sleeps


def ok(body: Any = None, status: int = 200, **kw: Any) -> httpx.Response:
    return httpx.Response(status, json=GOOD if body is None else body, **kw)


async def test_success_and_request_shape() -> None:
    rec = Recorder(ok({**GOOD, "scope": "b a", "extra": 1}))
    ep, _ = endpoint(rec)
    token = await ep.request(
        scope="a b", resource=["https://r1", "https://r2"], audience="aud", extra_params={"x": "1"}
    )
    assert isinstance(token, AccessToken)
    assert token.value == "tok-abc.def" and token.token_type == "Bearer" and token.scope == "b a"
    assert token.raw == {"token_type": "Bearer", "expires_in": 900, "scope": "b a", "extra": 1}
    assert token.expires_at.tzinfo is not None
    assert timedelta(seconds=890) < token.expires_at - datetime.now(UTC) <= timedelta(seconds=900)
    form = rec.forms[0]
    assert form["grant_type"] == ["client_credentials"] and form["scope"] == ["a b"]
    assert form["resource"] == ["https://r1", "https://r2"] and form["audience"] == ["aud"]
    assert form["x"] == ["1"] and form["client_secret"] == [SECRET]
    assert rec.requests[0].headers["content-type"] == "application/x-www-form-urlencoded"
    assert "tok-abc" not in repr(token)


async def test_missing_scope_means_requested_and_missing_expires_uses_default() -> None:
    ep, _ = endpoint(Recorder(ok({"access_token": "t", "token_type": "bearer"})), default_expires_in=123)
    token = await ep.request(scope="s1")
    assert token.scope == "s1" and token.expires_in == 123


async def test_retries_5xx_then_succeeds_with_backoff() -> None:
    rec = Recorder(httpx.Response(503), httpx.Response(502, text="<html>bad gateway</html>"), ok())
    ep, sleeps = endpoint(rec)
    assert (await ep.request()).value == "tok-abc.def"
    assert len(rec.requests) == 3 and ep.stats.requests == 3
    assert len(sleeps) == 2 and 0.25 <= sleeps[0] <= 0.5 and 0.5 <= sleeps[1] <= 1.0


async def test_retry_after_seconds_and_http_date_are_honoured() -> None:
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=5), usegmt=True)
    rec = Recorder(
        httpx.Response(429, headers={"Retry-After": "3"}),
        httpx.Response(503, headers={"Retry-After": later}),
        ok(),
    )
    ep, sleeps = endpoint(rec)
    await ep.request()
    assert sleeps[0] >= 3 and 3.5 <= sleeps[1] <= 5.5


async def test_gives_up_after_max_attempts_with_the_last_error() -> None:
    rec = Recorder(httpx.Response(500, json={"error": "server_error"}))
    ep, sleeps = endpoint(rec, max_attempts=3)
    with pytest.raises(ServerError) as info:
        await ep.request()
    assert info.value.retryable and info.value.status_code == 500
    assert len(rec.requests) == 3 and len(sleeps) == 2


async def test_deadline_bounds_retry_after() -> None:
    rec = Recorder(httpx.Response(503, headers={"Retry-After": "120"}))
    ep, sleeps = endpoint(rec, deadline=30)
    with pytest.raises(InvalidTokenResponseError) as info:
        await ep.request()
    assert info.value.retryable and len(rec.requests) == 1 and sleeps == []


async def test_temporarily_unavailable_is_retried() -> None:
    rec = Recorder(httpx.Response(400, json={"error": "temporarily_unavailable"}), ok())
    ep, _ = endpoint(rec)
    await ep.request()
    assert len(rec.requests) == 2


async def test_connection_errors_are_retried_and_typed() -> None:
    rec = Recorder(httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), ok())
    ep, _ = endpoint(rec)
    await ep.request()
    assert len(rec.requests) == 3
    rec = Recorder(httpx.ConnectError("refused"))
    ep, _ = endpoint(rec, max_attempts=2)
    with pytest.raises(TransportError) as info:
        await ep.request()
    assert info.value.__cause__ is None and info.value.retryable


@pytest.mark.parametrize(
    ("body", "cls"),
    [
        ({"error": "invalid_client", "error_description": "bad signature"}, InvalidClientError),
        ({"error": "invalid_scope"}, InvalidScopeError),
        ({"error": "unauthorized_client"}, TokenRequestError),
        ({"error": "made_up_error"}, TokenRequestError),
    ],
)
async def test_oauth_errors_are_typed_and_not_retried(body: dict[str, str], cls: type[Exception]) -> None:
    rec = Recorder(httpx.Response(400 if body["error"] != "invalid_client" else 401, json=body))
    ep, sleeps = endpoint(rec)
    with pytest.raises(cls) as info:
        await ep.request()
    assert isinstance(info.value, TokenRequestError) and info.value.error == body["error"]
    assert not info.value.retryable and len(rec.requests) == 1 and sleeps == []


async def test_a_new_assertion_and_jti_for_every_attempt() -> None:
    signer = LocalSigner.from_pem(pem_of(make_key("p256")))
    rec = Recorder(httpx.Response(503), httpx.Response(500), ok())
    ep, _ = endpoint(rec, auth=PrivateKeyJWT("c", signer))
    await ep.request()
    assertions = [f["client_assertion"][0] for f in rec.forms]
    jtis = {json.loads(b64url_decode(a.split(".")[1]))["jti"] for a in assertions}
    assert len(set(assertions)) == 3 and len(jtis) == 3 and ep.stats.signatures == 3


MALFORMED: list[tuple[str, httpx.Response]] = [
    ("not json", httpx.Response(200, text="hello")),
    ("empty body", httpx.Response(200)),
    ("json array", httpx.Response(200, json=[GOOD])),
    ("missing access_token", ok({"token_type": "Bearer", "expires_in": 60})),
    ("empty access_token", ok({**GOOD, "access_token": ""})),
    ("non-string access_token", ok({**GOOD, "access_token": 12345})),
    ("access_token with newline", ok({**GOOD, "access_token": "a\r\nX-Evil: 1"})),
    ("token_type mac", ok({**GOOD, "token_type": "mac"})),
    ("token_type missing", ok({"access_token": "t", "expires_in": 60})),
    ("token_type not a string", ok({**GOOD, "token_type": ["Bearer"]})),
    ("token_type DPoP", ok({**GOOD, "token_type": "DPoP"})),
    ("expires_in negative", ok({**GOOD, "expires_in": -5})),
    ("expires_in zero", ok({**GOOD, "expires_in": 0})),
    ("expires_in string", ok({**GOOD, "expires_in": "abc"})),
    ("expires_in bool", ok({**GOOD, "expires_in": True})),
    ("expires_in huge", ok({**GOOD, "expires_in": 10**30})),
    (
        "expires_in nan",
        httpx.Response(200, text='{"access_token":"t","token_type":"Bearer","expires_in":NaN}'),
    ),
    ("scope not a string", ok({**GOOD, "scope": ["a"]})),
    ("html 502 page", httpx.Response(502, text="<html><body>502 Bad Gateway</body></html>")),
    ("html 404", httpx.Response(404, text="<html>not found</html>")),
    ("redirect", httpx.Response(302, headers={"Location": "https://elsewhere/"})),
    ("10 MB body", httpx.Response(200, content=b" " * (10 * 1024 * 1024))),
    (
        "gzip bomb",
        httpx.Response(
            200, content=gzip.compress(b" " * (5 * 1024 * 1024)), headers={"Content-Encoding": "gzip"}
        ),
    ),
]


@pytest.mark.parametrize(("case", "response"), MALFORMED, ids=[c for c, _ in MALFORMED])
async def test_malformed_responses_raise_typed_errors_without_secrets(
    case: str, response: httpx.Response
) -> None:
    ep, _ = endpoint(Recorder(response), max_attempts=2)
    with pytest.raises(KeylessM2MError) as info:
        await ep.request()
    assert isinstance(info.value, InvalidTokenResponseError | TokenRequestError), case
    text = str(info.value) + repr(info.value)
    assert SECRET not in text and "X-Evil" not in text and "tok-abc" not in text


async def test_200_with_error_member_is_the_oauth_error() -> None:
    ep, _ = endpoint(Recorder(ok({"error": "invalid_client", "access_token": "t"})))
    with pytest.raises(InvalidClientError) as info:
        await ep.request()
    assert info.value.status_code == 200


async def test_server_echoing_the_secret_is_redacted() -> None:
    body = {"error": "invalid_client", "error_description": f"secret {SECRET} is wrong"}
    ep, _ = endpoint(Recorder(httpx.Response(401, json=body)))
    with pytest.raises(InvalidClientError) as info:
        await ep.request()
    assert SECRET not in str(info.value) and "<redacted>" in str(info.value)


def test_plain_http_only_for_loopback() -> None:
    auth = ClientSecretPost("c", SECRET)
    with pytest.raises(ConfigurationError, match="refusing plain http"):
        TokenEndpoint("http://auth.example/token", auth)
    for url in ("http://127.0.0.1:8080/token", "http://localhost/token", "http://[::1]:9/token"):
        TokenEndpoint(url, auth)
    TokenEndpoint("http://auth.example/token", auth, allow_insecure_http=True)
    with pytest.raises(ConfigurationError, match="absolute https:// URL"):
        TokenEndpoint("ftp://auth.example/token", auth)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("access_token", "a collection of names"),  # a lone string: each letter a name
        (None, "a collection of names"),
        (("access token",), "token_type names"),
        ((3,), "token_type names"),
        (("DPoP",), "cannot accept DPoP"),
    ],
)
def test_accept_token_types_is_checked(value: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        TokenEndpoint("https://auth.example/token", ClientSecretPost("c", SECRET), accept_token_types=value)
    ok_ = TokenEndpoint(
        "https://auth.example/token", ClientSecretPost("c", SECRET), accept_token_types=["N_A"]
    )
    assert ok_.accept_token_types == frozenset({"n_a"})


def test_parse_retry_after() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_retry_after("7") == 7
    assert parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now=now) == 30
    assert parse_retry_after(format_datetime(now - timedelta(seconds=30), usegmt=True), now=now) == 0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None
    assert parse_retry_after("99999999999") == 24 * 3600


def test_retry_after_http_date_is_read_against_the_server_date() -> None:
    # A server whose clock is 10 minutes ahead asks for a 30 s pause: 30 s, not 630 s.
    local = datetime(2026, 1, 1, tzinfo=UTC)
    server_now = local + timedelta(minutes=10)
    retry_at = format_datetime(server_now + timedelta(seconds=30), usegmt=True)
    date = format_datetime(server_now, usegmt=True)
    assert parse_retry_after(retry_at, now=local, server_date=date) == 30
    assert parse_retry_after(retry_at, now=local) == 630  # without a Date: the local clock
    assert parse_retry_after(retry_at, now=local, server_date="garbage") == 630


async def test_retry_after_date_from_a_skewed_server_is_honoured() -> None:
    server_now = datetime.now(UTC) - timedelta(minutes=10)  # 10 minutes behind
    headers = {
        "Retry-After": format_datetime(server_now + timedelta(seconds=3), usegmt=True),
        "Date": format_datetime(server_now, usegmt=True),
    }
    ep, sleeps = endpoint(Recorder(httpx.Response(503, headers=headers), ok()))
    await ep.request()
    assert len(sleeps) == 1 and 2.0 <= sleeps[0] <= 3.0  # not 0 (the local clock's reading)


async def test_redirect_is_a_typed_error_that_names_the_reason() -> None:
    rec = Recorder(httpx.Response(307, headers={"Location": "https://elsewhere.example/token"}))
    ep, sleeps = endpoint(rec)
    with pytest.raises(InvalidTokenResponseError, match="redirects are not followed") as info:
        await ep.request()
    assert info.value.status_code == 307 and not info.value.retryable
    assert len(rec.requests) == 1 and sleeps == []


async def test_stats_are_a_frozen_snapshot_the_endpoint_alone_counts() -> None:
    ep, _ = endpoint(Recorder(httpx.Response(503), ok()))
    before = ep.stats
    await ep.request()
    after = ep.stats
    assert (before.requests, before.signatures) == (0, 0)  # taken before: never changes
    assert (after.requests, after.signatures) == (2, 0)  # two attempts, no assertion signed
    with pytest.raises(dataclasses.FrozenInstanceError):
        after.requests = 0  # type: ignore[misc]
    assert ep.stats == after


def test_stats_argument_is_deprecated_and_ignored() -> None:
    from keyless_m2m.stats import EndpointStats

    with pytest.warns(DeprecationWarning, match=r"TokenEndpoint\(stats=\.\.\.\) is deprecated"):
        ep = TokenEndpoint(URL, ClientSecretPost("client", SECRET), stats=EndpointStats(requests=7))
    assert ep.stats == EndpointStats(requests=0, signatures=0)


REFUSALS_WITHOUT_REASON = [
    ("empty 403", httpx.Response(403)),
    ("html 403 from a firewall", httpx.Response(403, text="<html>Request blocked</html>")),
    ("empty 401", httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="x"'})),
    ("400 text", httpx.Response(400, text="Bad Request")),
    ("401 json without error", httpx.Response(401, json={"message": "unauthorized"})),
]


@pytest.mark.parametrize(
    ("case", "response"), REFUSALS_WITHOUT_REASON, ids=[c for c, _ in REFUSALS_WITHOUT_REASON]
)
async def test_a_refusal_without_an_oauth_error_is_a_typed_refusal_not_retried(
    case: str, response: httpx.Response
) -> None:
    rec = Recorder(response)
    ep, sleeps = endpoint(rec, max_attempts=4)
    with pytest.raises(RefusedWithoutReasonError, match=r"refused: HTTP 40[013] .*gave no reason") as info:
        await ep.request()
    error = info.value
    assert isinstance(error, TokenRequestError) and not isinstance(error, InvalidTokenResponseError)
    assert error.status_code == response.status_code and error.error == "refused_without_reason"
    assert error.retryable is False and len(rec.requests) == 1 and sleeps == []
    assert SECRET not in str(error) + repr(error)


async def test_a_malformed_success_and_a_missing_endpoint_stay_invalid_responses() -> None:
    for response in (httpx.Response(200, text="<html>login</html>"), httpx.Response(404)):
        ep, _ = endpoint(Recorder(response))
        with pytest.raises(InvalidTokenResponseError):
            await ep.request()


async def test_each_retry_is_logged_with_its_cause(caplog: pytest.LogCaptureFixture) -> None:
    # issue 20: ``-v`` showed "retry 1/3" but never why.
    body = {"error": "temporarily_unavailable", "error_description": "down for maintenance"}
    ep, _ = endpoint(Recorder(httpx.Response(503, json=body), ok()))
    with caplog.at_level(logging.INFO, logger="keyless_m2m"):
        await ep.request()
    (retry,) = [r for r in caplog.records if "retry 1/" in r.getMessage()]
    assert retry.levelno == logging.INFO
    assert "down for maintenance" in retry.getMessage() and "temporarily_unavailable" in retry.getMessage()
    assert SECRET not in caplog.text
