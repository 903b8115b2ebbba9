"""The Secret wrapper, the Redactor, and the request on the wire (Content-Length, not
chunked; the credentials where they belong)."""

from __future__ import annotations

import base64
import contextlib
import copy
import pickle
import re
import socket
import threading
from collections.abc import Callable, Iterator
from urllib.parse import quote, quote_plus

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keyless_m2m import ClientSecretBasic, ClientSecretPost, PrivateKeyJWT
from keyless_m2m._secret import REDACTED, Redactor, Secret, _drop_runs, _encodings, _InCores, reveal
from keyless_m2m.client_auth import ClientAuth
from keyless_m2m.endpoint import TokenEndpoint
from keyless_m2m.errors import KeylessM2MError
from keyless_m2m.testing.signers import InMemorySigner
from tests.frame_locals import _Walker

SECRET = "wrapper-canary:p@ss+w/rd%" + "0123456789abcdef"


def test_repr_str_and_format_are_redacted() -> None:
    secret = Secret(SECRET)
    assert repr(secret) == "Secret('**********')"
    assert str(secret) == f"{secret}" == "**********"
    assert SECRET not in repr([secret, {"k": secret}, (secret,)])
    assert secret.reveal() == reveal(secret) == SECRET
    assert reveal("plain") == "plain"


def test_no_attribute_walk_finds_the_value() -> None:
    secret = Secret(SECRET.encode())
    assert not hasattr(secret, "__dict__")
    walker = _Walker([SECRET])
    walker.walk(secret, "secret")  # repr plus one level into __slots__
    assert walker.found == []
    with pytest.raises(AttributeError):
        secret._get = lambda: b"other"


def test_not_picklable_copies_are_itself() -> None:
    secret = Secret(SECRET)
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        with pytest.raises(TypeError, match="cannot be pickled"):
            pickle.dumps(secret, protocol=protocol)
    assert copy.copy(secret) is secret and copy.deepcopy(secret) is secret
    auth = ClientSecretPost("id", SECRET)
    with pytest.raises(TypeError):
        pickle.dumps(auth)


def test_equality_is_by_value_between_secrets_only_and_unhashable() -> None:
    assert Secret(SECRET) == Secret(SECRET)
    assert Secret(SECRET) != Secret(SECRET + "x")
    assert Secret(SECRET) != SECRET  # never equal to the plain value
    assert Secret(b"a") != Secret("a")
    with pytest.raises(TypeError):
        hash(Secret(SECRET))


def test_client_secret_accepts_str_or_secret() -> None:
    for value in (SECRET, Secret(SECRET)):
        basic = ClientSecretBasic("id", value)
        assert isinstance(basic._secret, Secret) and basic._secret.reveal() == SECRET
    with pytest.raises(KeylessM2MError, match="client_secret"):
        ClientSecretPost("id", Secret(""))


# -- the redactor ---------------------------------------------------------------------------


def _basic_redactor() -> tuple[Redactor, str, str]:
    pair = f"my-client:{quote_plus(SECRET)}"
    credential = base64.b64encode(pair.encode()).decode()
    return Redactor.from_sent({}, {"Authorization": Secret("Basic " + credential)}), pair, credential


def test_every_form_of_a_basic_credential_is_redacted() -> None:
    redactor, pair, credential = _basic_redactor()
    lower = re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), quote_plus(SECRET))
    for form in (
        SECRET,
        quote_plus(SECRET),
        quote(SECRET, safe=""),
        lower,
        credential,
        credential.rstrip("="),
        "Basic " + credential,
        pair,
        f"my-client:{SECRET}",
        SECRET[:14],  # a truncated echo
        SECRET[-14:],
    ):
        scrubbed = redactor.scrub(f"bad client ({form}) here")
        assert REDACTED in scrubbed, form
        assert SECRET[-12:] not in scrubbed and SECRET[:12] not in scrubbed, scrubbed
    assert redactor.scrub("client my-client is unknown") == "client my-client is unknown"


def test_assertion_segments_and_signature_in_standard_base64() -> None:
    signature = base64.urlsafe_b64encode(bytes(range(64))).decode().rstrip("=")
    assertion = f"eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJjIiwianRpIjoieCJ9.{signature}"
    redactor = Redactor.from_sent({"client_id": "c", "client_assertion": Secret(assertion)})
    header, claims, _ = assertion.split(".")
    standard = base64.b64encode(bytes(range(64))).decode()
    for form in (assertion, header, claims, signature, standard, signature[:16]):
        assert REDACTED in redactor.scrub(f"x {form} y"), form
    assert redactor.scrub("client c refused") == "client c refused"  # client_id is not secret


def test_longest_first_limit_after_redaction_and_nonprintables() -> None:
    redactor = Redactor.from_sent({"client_secret": Secret(SECRET)})
    text = "a" * 290 + SECRET + "\x1b[31m"
    scrubbed = redactor.scrub(text, 300)
    assert SECRET[:8] not in scrubbed and scrubbed.startswith("a" * 290 + REDACTED)
    assert "\x1b" not in redactor.scrub("\x1b[2J")
    assert redactor.scrub("x" * 500, 300) == "x" * 300 + "..."
    assert redactor.scrub_data({"echo": [SECRET], SECRET: 1}) == {"echo": [REDACTED], REDACTED: 1}


def test_plain_values_of_a_users_own_client_auth_are_redacted_too() -> None:
    redactor = Redactor.from_sent({"client_id": "me", "client_secret": SECRET}, {"X-Api-Key": "k" * 20})
    assert redactor.scrub(f"{SECRET} {'k' * 20} me") == f"{REDACTED} {REDACTED} me"


def test_redactor_holds_its_values_out_of_sight() -> None:
    redactor, _pair, credential = _basic_redactor()
    redactor.scrub("build the variants")
    walker = _Walker([SECRET, credential, SECRET[:12]])
    walker.walk(redactor, "redactor")
    assert walker.found == [] and SECRET not in repr(redactor)


# -- on the wire ----------------------------------------------------------------------------


class RawServer:
    """Reads one request's bytes (headers and Content-Length body), answers 400."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.requests: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/token"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                head, _, body = data.partition(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    ),
                    0,
                )
                while len(body) < length:
                    body += conn.recv(65536)
                self.requests.append(head + b"\r\n\r\n" + body)
                answer = b'{"error":"invalid_client"}'
                conn.sendall(
                    b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nConnection: close\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(answer), answer)
                )

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() in the thread
        self.sock.close()
        self.thread.join(timeout=5)


@pytest.fixture
def raw_server() -> Iterator[RawServer]:
    server = RawServer()
    try:
        yield server
    finally:
        server.close()


@pytest.mark.anyio
@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post", "private_key_jwt"])
async def test_the_request_on_the_wire(raw_server: RawServer, method: str) -> None:
    make_auth: dict[str, Callable[[], ClientAuth]] = {
        "client_secret_basic": lambda: ClientSecretBasic("my client", SECRET),
        "client_secret_post": lambda: ClientSecretPost("my client", SECRET),
        "private_key_jwt": lambda: PrivateKeyJWT("my client", InMemorySigner("ES256")),
    }
    auth = make_auth[method]()
    endpoint = TokenEndpoint(raw_server.url, auth, max_attempts=1)
    with pytest.raises(KeylessM2MError):
        await endpoint.request(scope="a b")
    await endpoint.aclose()
    (request,) = raw_server.requests
    head, _, body = request.partition(b"\r\n\r\n")
    headers = {
        line.split(b":", 1)[0].strip().lower(): line.split(b":", 1)[1].strip()
        for line in head.split(b"\r\n")[1:]
    }
    assert b"transfer-encoding" not in headers
    assert int(headers[b"content-length"]) == len(body)
    assert headers[b"content-type"] == b"application/x-www-form-urlencoded"
    assert body.startswith(
        b"grant_type=client_credentials&scope=a+b&client_id=my+client"
        if method != "client_secret_basic"
        else b"grant_type=client_credentials&scope=a+b"
    )
    if method == "client_secret_basic":
        pair = f"my+client:{quote_plus(SECRET)}".encode()
        assert headers[b"authorization"] == b"Basic " + base64.b64encode(pair)
        assert SECRET.encode() not in body and quote_plus(SECRET).encode() not in body
    elif method == "client_secret_post":
        assert body.endswith(b"&client_secret=" + quote_plus(SECRET).encode())
        assert b"authorization" not in headers
    else:
        assert b"client_assertion=ey" in body and b"authorization" not in headers


# -- short texts look their windows up in the cores; long ones in the set of windows ----------

_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.~+/="


@given(
    core=st.text(_ALPHABET, min_size=12, max_size=80),
    before=st.text(_ALPHABET + ' {}":,', max_size=120),
    after=st.text(_ALPHABET + ' {}":,', max_size=120),
    start=st.integers(0, 60),
    length=st.integers(12, 80),
)
@settings(max_examples=200, deadline=None)
def test_a_short_text_is_scrubbed_as_the_set_of_windows_would(
    core: str, before: str, after: str, start: int, length: int
) -> None:
    piece = core[start : start + length]
    redactor = Redactor(cores=[core])
    text = before + piece + after
    _, encoded = redactor._variants()
    assert _drop_runs(text, _InCores(encoded)) == _drop_runs(text, redactor._windows(encoded))
    if len(piece) >= 12 and len(text) <= 256:
        assert piece not in redactor.scrub(text)


@pytest.mark.anyio
async def test_a_token_request_that_succeeds_builds_no_set_of_windows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    built = 0
    windows = Redactor._windows

    def counting(self: Redactor, encoded: tuple[str, ...]) -> frozenset[str]:
        nonlocal built
        built += 1
        return windows(self, encoded)

    monkeypatch.setattr(Redactor, "_windows", counting)
    signer = InMemorySigner()
    body = {"access_token": "t0k", "token_type": "Bearer", "expires_in": 60, "scope": "pockets.read"}
    client = httpx.AsyncClient(transport=httpx.MockTransport(lambda request: httpx.Response(200, json=body)))
    endpoint = TokenEndpoint("https://auth.example/token", PrivateKeyJWT("c", signer), http_client=client)
    token = await endpoint.request(scope="pockets.read")
    assert token.raw["scope"] == "pockets.read" and built == 0
    # An echoed body longer than a short text builds it, once per request.
    redactor = Redactor(cores=["a-secret-value-of-some-length"])
    assert "a-secret-value" not in redactor.scrub("x" * 300 + "a-secret-value-of-some" + "y" * 300)
    assert built == 1


# -- the encodings of a value of unreserved characters are the value itself ---------------------


def _every_encoding(value: str) -> set[str]:
    """The long way, as a server may write a value back: the reference for the short cut."""
    forms = {value, quote_plus(value), quote(value, safe=""), quote(value)}
    forms |= {re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), form) for form in forms}
    import json

    return forms | {json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1]}


@given(value=st.text(max_size=60) | st.text(_ALPHABET, max_size=60))
@settings(max_examples=300, deadline=None)
def test_the_encodings_of_any_value_are_every_form_a_server_may_echo(value: str) -> None:
    assert set(_encodings(value)) == _every_encoding(value)


@pytest.mark.anyio
async def test_a_successful_private_key_jwt_request_percent_encodes_nothing_to_scrub_its_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An assertion, its segments and its signature are all unreserved characters: the
    redactor's variants of them are the values themselves, computed without quoting
    (30 ``quote`` calls per successful request before: every value, the cores twice)."""
    import keyless_m2m._secret as secret_module

    calls = 0
    real_quote, real_quote_plus = quote, quote_plus

    def counting(function: Callable[..., str]) -> Callable[..., str]:
        def count(*args: object, **kwargs: object) -> str:
            nonlocal calls
            calls += 1
            return function(*args, **kwargs)

        return count

    monkeypatch.setattr(secret_module, "quote", counting(real_quote))
    monkeypatch.setattr(secret_module, "quote_plus", counting(real_quote_plus))
    body = {"access_token": "t0k", "token_type": "Bearer", "expires_in": 60, "scope": "pockets.read"}
    client = httpx.AsyncClient(transport=httpx.MockTransport(lambda request: httpx.Response(200, json=body)))
    auth = PrivateKeyJWT("c", InMemorySigner())
    endpoint = TokenEndpoint("https://auth.example/token", auth, http_client=client)
    token = await endpoint.request(scope="pockets.read")
    assert token.raw["scope"] == "pockets.read"
    # The standard-base64 forms of the signature may hold + / =: those are quoted, nothing else.
    assert calls <= 2 * 3
