"""Canary: a token endpoint that echoes what it was sent, in every form and through every
channel a server has (error, error_description, error_uri, a header, the reason phrase,
the content type or coding, token_type, an extra member of a token response), must not
get a client secret or an assertion into an exception (message, repr, attributes,
traceback, the whole chain), a log record (every logger, DEBUG), the token's ``raw``, or
the output of ``keyless-m2m token`` / ``keyless-m2m doctor``.

The forbidden values are learnt from the server (what it received), so every encoding
the client chose is covered; a leak is also any 12-character window of the secret or the
signature (a truncated echo, or a secret inside a bytes repr in a log line).
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from keyless_m2m import (
    ClientSecretBasic,
    ClientSecretPost,
    KeylessM2MError,
    PrivateKeyJWT,
    TokenManager,
)
from keyless_m2m.client_auth import ClientAuth
from keyless_m2m.endpoint import TokenEndpoint
from keyless_m2m.signers import LocalSigner
from tests.cli_runner import cli, cli_inline
from tests.echo_server import CHANNELS, EchoServer
from tests.helpers import exception_texts, make_key, pem_of

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

# Characters that form-encoding, percent-encoding and base64 all treat differently.
CANARY = "echo-canary:S3cr/t+%&= \u00e9~" + secrets.token_hex(12)
CLIENT_ID = "echo-client"
WINDOW = 12

FORMS = {
    "client_secret_basic": [
        "body",
        "authorization",
        "basic-b64",
        "basic-pair",
        "basic-pair-decoded",
        "secret",
        "secret-form",
        "secret-form-lower",
        "secret-quoted",
        "secret-prefix",
    ],
    "client_secret_post": [
        "body",
        "secret",
        "secret-form",
        "secret-form-lower",
        "secret-quoted",
        "secret-prefix",
    ],
    "private_key_jwt": [
        "body",
        "assertion",
        "assertion-header",
        "assertion-claims",
        "signature",
        "signature-b64",
        "signature-prefix",
    ],
}
HEADER_SAFE = {"header", "reason", "content-type", "content-encoding"}  # no CR/LF in any form


@pytest.fixture(scope="module")
def echo_server() -> Iterator[EchoServer]:
    with EchoServer() as server:
        yield server


def _auth(method: str, signer: LocalSigner) -> ClientAuth:
    if method == "client_secret_basic":
        return ClientSecretBasic(CLIENT_ID, CANARY)
    if method == "client_secret_post":
        return ClientSecretPost(CLIENT_ID, CANARY)
    return PrivateKeyJWT(CLIENT_ID, signer)


def leaks(haystack: str, server: EchoServer) -> list[str]:
    """The forbidden values (or 12-character windows of the secret and the signatures)
    found in ``haystack``."""
    found = [value[:10] + "..." for value in server.forbidden() if value in haystack]
    cores = {CANARY}
    for request in list(server.received):
        forms = request.forms()
        if "signature" in forms:
            cores.add(forms["signature"])
    for core in cores:
        for start in range(len(core) - WINDOW + 1):
            if core[start : start + WINDOW] in haystack:
                found.append(f"a window of {core[:6]}...")
                break
    return found


@pytest.fixture(scope="module")
def signer() -> LocalSigner:
    return LocalSigner.from_pem(pem_of(make_key("p256")), algorithm="ES256")


@pytest.mark.parametrize("method", list(FORMS))
async def test_server_echo_reaches_no_error_log_or_token(
    method: str, echo_server: EchoServer, signer: LocalSigner, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger: ours, httpx's, httpcore's
    problems: list[str] = []
    outcomes = 0
    for channel in CHANNELS:
        for form in FORMS[method]:
            caplog.clear()
            endpoint = TokenEndpoint(echo_server.url(channel, form), _auth(method, signer), max_attempts=1)
            seen: list[str] = []
            try:
                token = await endpoint.request()
            except KeylessM2MError as exc:
                seen += exception_texts(exc)
                if getattr(exc, "status_code", None) == 418:
                    problems.append(f"{channel}/{form}: the server had no such form")
            else:
                seen += [repr(token), str(token), repr(dict(token.raw)), json.dumps(dict(token.raw))]
            finally:
                await endpoint.aclose()
            outcomes += 1
            seen += [record.getMessage() for record in caplog.records]
            seen += [repr(record.args) for record in caplog.records]
            found = leaks("\n".join(seen), echo_server)
            if found:
                problems.append(f"{channel}/{form}: {found}")
    assert outcomes == len(CHANNELS) * len(FORMS[method])
    assert not problems, "\n".join(problems)


async def test_echo_through_the_token_manager(
    echo_server: EchoServer, signer: LocalSigner, caplog: pytest.LogCaptureFixture
) -> None:
    """The same echoes through TokenManager (its frames, its logs, its error copies)."""
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    for method in FORMS:
        for form in ("body", "secret-form", "basic-b64", "signature"):
            if form not in FORMS[method]:
                continue
            auth = _auth(method, signer)
            async with TokenManager(echo_server.url("description", form), auth, max_attempts=1) as tokens:
                with pytest.raises(KeylessM2MError) as info:
                    await tokens.get_token()
                seen += exception_texts(info.value)
                with pytest.raises(KeylessM2MError) as again:  # served from the backoff window
                    await tokens.get_token()
                seen += exception_texts(again.value)
    seen += [record.getMessage() for record in caplog.records]
    assert not leaks("\n".join(seen), echo_server)


# -- the command line -----------------------------------------------------------------------


KEY_FORMS = {
    "client_secret_basic": ["basic-b64", "secret"],
    "client_secret_post": ["secret-form", "secret"],
    "private_key_jwt": ["assertion", "signature"],
}


def _cli_cases(server: EchoServer, key_uri: str) -> list[tuple[str, list[str], dict[str, str]]]:
    """Every form through error_description for ``token``; the key forms also with
    ``--debug``, through ``doctor``, and through the other channels (``--json`` for a
    token whose response echoes)."""
    cases: list[tuple[str, list[str], dict[str, str]]] = []

    def add(method: str, channel: str, form: str, command: list[str]) -> None:
        env = {"KEYLESS_M2M_TOKEN_ENDPOINT": server.url(channel, form), "KEYLESS_M2M_CLIENT_ID": CLIENT_ID}
        if method == "private_key_jwt":
            env["KEYLESS_M2M_SIGNER"] = key_uri
        else:
            env["KEYLESS_M2M_CLIENT_SECRET"] = CANARY
        label = f"{method} {channel}/{form} {' '.join(command)}"
        cases.append((label, [*command, "--auth-method", method], env))

    for method, forms in FORMS.items():
        for form in forms:
            add(method, "description", form, ["token"])
        for form in KEY_FORMS[method]:
            add(method, "description", form, ["token", "--debug"])
            add(method, "description", form, ["doctor"])
            for channel in ("uri", "code", "content-type", "token-type"):
                add(method, channel, form, ["token"])
            add(method, "raw", form, ["token", "--json"])
    return cases


def test_cli_stderr_and_doctor_stdout_never_echo_a_secret(echo_server: EchoServer, tmp_path: Any) -> None:
    key = tmp_path / "key.pem"
    key.write_bytes(pem_of(make_key("p256")))
    cases = _cli_cases(echo_server, key.as_uri())
    # Every case in-process (cli_inline: the command's code from argument parsing to the
    # exit code); the --debug and doctor runs of each method's first key form also as
    # ``python -m keyless_m2m`` subprocesses, for the process boundary.
    first_forms = {f"{method} description/{forms[0]} " for method, forms in KEY_FORMS.items()}
    spawn = [
        (f"{label} (subprocess)", args, env)
        for label, args, env in cases
        if any(label.startswith(f) for f in first_forms)
        and args[0] in ("token", "doctor")
        and ("--debug" in args or args[0] == "doctor")
    ]
    assert len(spawn) == 2 * len(KEY_FORMS)
    with ThreadPoolExecutor(max_workers=4) as pool:
        spawned = pool.map(lambda case: cli(*case[1], env=case[2]), spawn)
        results = [cli_inline(*args, env=env) for _label, args, env in cases] + list(spawned)
    cases += spawn
    problems: list[str] = []
    for (label, args, _env), result in zip(cases, results, strict=True):
        out = result.stdout
        if result.returncode == 0 and args[0] == "token":
            printed = json.loads(out)["access_token"] if "--json" in args else out.strip()
            out = out.replace(printed, "<the token>")
        if "no such form" in result.stderr or "HTTP 418" in result.stderr:
            problems.append(f"{label}: the server had no such form")
        found = leaks(out + "\n" + result.stderr, echo_server)
        if found:
            problems.append(f"{label}: {found}")
    assert len({r.path for r in echo_server.received}) >= 30
    assert not problems, "\n".join(problems)
