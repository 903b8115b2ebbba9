"""Canary for the ``keyless-m2m`` command: drive it (in-process, and a sample of the cases
as ``python -m keyless_m2m`` subprocesses, as a user would) through every error path,
with and without ``--debug``, and assert that stdout and stderr never hold a client
secret, a client assertion, an access token (except ``token``'s stdout on success: that
is its job) or private key material; that each error is one line on stderr without
``--debug``; and that ``--debug`` tracebacks are clean too.

The subprocess runs go out at once (a few in parallel) while the in-process ones run.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from keyless_m2m.errors import ConfigurationError
from keyless_m2m.signers import signer_from_uri
from keyless_m2m.testing.authorization_server import AuthorizationServer, Fault
from tests.cli_runner import cli, cli_inline, jwk_of
from tests.helpers import make_key, pem_of

pytestmark = pytest.mark.integration

CLIENT_SECRET = "cli-canary-client-secret-" + secrets.token_hex(8)
WRONG_SECRET = "cli-canary-wrong-secret-" + secrets.token_hex(8)
VAULT_TOKEN = "hvs.cli-canary-vault-token-" + secrets.token_hex(8)
TRUNCATED_TOKEN = "at_truncated-" + secrets.token_hex(12)


class Forbidden:
    """Values that must never be printed, learnt as the servers see them."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    def add(self, what: str, value: str) -> None:
        assert len(value) >= 12, what
        self.values[value] = what

    def add_key(self, what: str, key: Any) -> None:
        for fmt in ("pkcs8", "traditional"):
            for line in pem_of(key, fmt=fmt).decode().splitlines()[1:-1]:
                if len(line) >= 16:
                    self.add(f"{what} PEM", line)
        number = key.private_numbers().private_value
        raw = number.to_bytes((number.bit_length() + 7) // 8, "big")
        self.add(f"{what} private number", str(number))
        self.add(f"{what} private number (JWK)", base64.urlsafe_b64encode(raw).rstrip(b"=").decode())

    def watch(self, server: AuthorizationServer, *, echo: str | None = None) -> None:
        """Learn every assertion and posted secret; ``echo``: answer with them in the body
        (``"error"``: a 400 whose error_description repeats the form, ``"token"``: a 200 with
        an unusable access_token and the form beside it)."""

        def on_request(form: dict[str, list[str]]) -> None:
            for value in form.get("client_assertion", []):
                self.add("client assertion", value)
                self.add("client assertion signature", value.rsplit(".", 1)[-1])
            for value in form.get("client_secret", []):
                self.add("posted client secret", value)
            sent = json.dumps({k: v[0] for k, v in form.items()})
            if echo == "error":
                server.fail_next(Fault(400, {"error": "invalid_client", "error_description": sent}))
            elif echo == "token":
                server.fail_next(Fault(200, {"access_token": 42, "token_type": "Bearer", "echo": sent}))

        server.on_request = on_request

    def found_in(self, text: str) -> list[str]:
        return sorted({what for value, what in self.values.items() if value in text})


@dataclass
class Case:
    name: str
    args: list[str]
    env: dict[str, str]
    exit_code: int
    error: str | None  # the typed error's name on the one stderr line; None: success
    servers: list[AuthorizationServer] = field(default_factory=list)
    one_line: bool = True


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Forbidden, dict[str, Any]]]:
    """Keys on disk, the servers (each watched), the forbidden values."""
    tmp = tmp_path_factory.mktemp("cli-canary")
    forbidden = Forbidden()
    forbidden.add("the client secret", CLIENT_SECRET)
    forbidden.add("the wrong client secret", WRONG_SECRET)
    forbidden.add("the Vault token in a signer URI", VAULT_TOKEN)
    forbidden.add("the access token in a truncated response", TRUNCATED_TOKEN)
    key, other = make_key("p256"), ec.generate_private_key(ec.SECP256R1())
    forbidden.add_key("the signing key", key)
    forbidden.add_key("the other key", other)
    files = {"key": tmp / "key.pem", "other": tmp / "other.pem", "locked": tmp / "locked.pem"}
    files["key"].write_bytes(pem_of(key))
    files["other"].write_bytes(pem_of(other))
    files["locked"].write_bytes(pem_of(key, password=b"cli-canary-pem-password"))
    broken = pem_of(key).decode().splitlines()
    broken[2] = broken[2][::-1]  # a damaged PEM: its text must not be echoed either
    files["broken"] = tmp / "broken.pem"
    files["broken"].write_text("\n".join(broken) + "\n")
    files["secret"] = tmp / "secret"
    files["secret"].write_text(CLIENT_SECRET + "\n")
    files["wrong-secret"] = tmp / "wrong-secret"
    files["wrong-secret"].write_text(WRONG_SECRET + "\n")

    servers = {"main": AuthorizationServer(expires_in=600)}
    servers["echo-error"] = AuthorizationServer()
    servers["echo-token"] = AuthorizationServer()
    servers["truncated"] = AuthorizationServer()
    for server in servers.values():
        server.register_client("svc", public_jwk=jwk_of("p256", "ES256"), scopes=["pockets.read"])
        server.register_client("secret-client", client_secret=CLIENT_SECRET, scopes=["pockets.read"])
    forbidden.watch(servers["main"])
    forbidden.watch(servers["echo-error"], echo="error")
    forbidden.watch(servers["echo-token"], echo="token")
    forbidden.watch(servers["truncated"])
    servers["truncated"].fault_policy = lambda n: Fault(
        200,
        f'{{"access_token": "{TRUNCATED_TOKEN}", "token_type": "Bea',
        {"Content-Type": "application/json"},
    )
    try:
        for server in servers.values():
            server.start()
        yield forbidden, {"files": files, "servers": servers, "tmp": tmp}
    finally:
        for server in servers.values():
            server.stop()


def _cases(world: dict[str, Any]) -> list[Case]:
    files: dict[str, Path] = world["files"]
    servers: dict[str, AuthorizationServer] = world["servers"]
    main = servers["main"]
    unreachable = AuthorizationServer()
    down = unreachable.token_endpoint
    unreachable.stop()  # never started: nothing listens on its port

    def jwt_env(server: AuthorizationServer = main, **extra: str) -> dict[str, str]:
        return {
            "KEYLESS_M2M_TOKEN_ENDPOINT": server.token_endpoint,
            "KEYLESS_M2M_CLIENT_ID": "svc",
            "KEYLESS_M2M_SIGNER": files["key"].as_uri(),
            "KEYLESS_M2M_SCOPE": "pockets.read",
            **extra,
        }

    def secret_env(
        server: AuthorizationServer = main, secret: str = CLIENT_SECRET, **extra: str
    ) -> dict[str, str]:
        return {
            "KEYLESS_M2M_TOKEN_ENDPOINT": server.token_endpoint,
            "KEYLESS_M2M_CLIENT_ID": "secret-client",
            "KEYLESS_M2M_CLIENT_SECRET": secret,
            "KEYLESS_M2M_SCOPE": "pockets.read",
            **extra,
        }

    post = ["--auth-method", "client_secret_post"]
    return [
        Case("token, private_key_jwt", ["token"], jwt_env(), 0, None, [main]),
        Case("token --json, client secret", ["token", "--json"], secret_env(), 0, None, [main]),
        Case(
            "unreachable server",
            ["token", "--timeout", "2"],
            jwt_env(KEYLESS_M2M_TOKEN_ENDPOINT=down),
            4,
            "TransportError",
        ),
        Case(
            "wrong client secret (basic)",
            ["token"],
            secret_env(secret=WRONG_SECRET),
            3,
            "InvalidClientError",
            [main],
        ),
        Case(
            "wrong client secret (post)",
            ["token", *post],
            secret_env(secret=WRONG_SECRET),
            3,
            "InvalidClientError",
            [main],
        ),
        Case(
            "wrong client secret (file)",
            ["token", "--client-secret-file", str(files["wrong-secret"])],
            {**secret_env(), "KEYLESS_M2M_CLIENT_SECRET": ""},
            3,
            "InvalidClientError",
            [main],
        ),
        Case(
            "wrong key",
            ["token"],
            jwt_env(KEYLESS_M2M_SIGNER=files["other"].as_uri()),
            3,
            "InvalidClientError",
            [main],
        ),
        Case(
            "unknown scope (jwt)",
            ["token", "--scope", "no.such.scope"],
            jwt_env(),
            3,
            "InvalidScopeError",
            [main],
        ),
        Case(
            "server echoes the assertion in its error",
            ["token"],
            jwt_env(servers["echo-error"]),
            3,
            "InvalidClientError",
            [servers["echo-error"]],
        ),
        Case(
            "server echoes the posted secret in its error",
            ["token", *post],
            secret_env(servers["echo-error"]),
            3,
            "InvalidClientError",
            [servers["echo-error"]],
        ),
        Case(
            "malformed token response echoing the form",
            ["token", *post],
            secret_env(servers["echo-token"]),
            6,
            "InvalidTokenResponseError",
            [servers["echo-token"]],
        ),
        Case(
            "malformed token response echoing the assertion",
            ["token"],
            jwt_env(servers["echo-token"]),
            6,
            "InvalidTokenResponseError",
            [servers["echo-token"]],
        ),
        Case(
            "truncated token response",
            ["token", "--json"],
            jwt_env(servers["truncated"]),
            6,
            "InvalidTokenResponseError",
            [servers["truncated"]],
        ),
        Case(
            "bad signer URI: unknown scheme",
            ["token"],
            jwt_env(KEYLESS_M2M_SIGNER="nosuch:///key"),
            2,
            "ConfigurationError",
        ),
        Case(
            "bad signer URI: missing file",
            ["token"],
            jwt_env(KEYLESS_M2M_SIGNER=(world["tmp"] / "absent.pem").as_uri()),
            2,
            "ConfigurationError",
        ),
        Case(
            "bad signer URI: encrypted PEM",
            ["token"],
            jwt_env(KEYLESS_M2M_SIGNER=files["locked"].as_uri()),
            2,
            "ConfigurationError",
        ),
        Case(
            "bad signer URI: damaged PEM",
            ["token"],
            jwt_env(KEYLESS_M2M_SIGNER=files["broken"].as_uri()),
            2,
            "ConfigurationError",
        ),
        Case(
            "bad signer URI: the PEM file's text",
            ["token"],
            jwt_env(KEYLESS_M2M_SIGNER=pem_of(make_key("p256")).decode()),
            2,
            "ConfigurationError",
        ),
        Case(
            "bad signer URI: a Vault token in userinfo",
            ["token"],
            jwt_env(KEYLESS_M2M_SIGNER=f"hashivault://root:{VAULT_TOKEN}@m2m-key"),
            2,
            "ConfigurationError",
        ),
        Case(
            "bad signer URI: a Vault token in the query",
            ["token"],
            jwt_env(KEYLESS_M2M_SIGNER=f"hashivault://m2m-key?token={VAULT_TOKEN}&&"),
            2,
            "ConfigurationError",
        ),
        Case(
            "bad signer URI: a Vault token after the version",
            ["token"],
            jwt_env(KEYLESS_M2M_SIGNER=f"hashivault://m2m-key?version=1;token={VAULT_TOKEN}"),
            2,
            "ConfigurationError",
        ),
        Case(
            "bad signer URI: credentials in a gcpkms URI",
            ["token"],
            jwt_env(
                KEYLESS_M2M_SIGNER=f"gcpkms://user:{VAULT_TOKEN}@projects/p/locations/l/keyRings/r"
                "/cryptoKeys/k/cryptoKeyVersions/1"
            ),
            2,
            "ConfigurationError",
        ),
        Case("missing config: nothing at all", ["token"], {}, 2, "ConfigurationError"),
        Case(
            "missing config: no endpoint",
            ["token"],
            {**secret_env(), "KEYLESS_M2M_TOKEN_ENDPOINT": ""},
            2,
            "ConfigurationError",
        ),
        Case(
            "missing config: no client id",
            ["token"],
            {**secret_env(), "KEYLESS_M2M_CLIENT_ID": ""},
            2,
            "ConfigurationError",
        ),
        Case(
            "missing config: method without its secret",
            ["token", *post],
            {**jwt_env(), "KEYLESS_M2M_SIGNER": ""},
            2,
            "ConfigurationError",
        ),
        Case(
            "missing config: unreadable secret file",
            ["token", "--client-secret-file", str(files["key"]) + ".x"],
            secret_env(),
            2,
            "ConfigurationError",
        ),
        # argparse's own usage error: two lines (usage + error), the value never shown
        Case(
            "secret on the command line",
            ["token", "--client-secret", WRONG_SECRET],
            secret_env(),
            2,
            None,
            one_line=False,
        ),
        Case(
            "mistyped option before a secret",
            ["token", f"--client-secert={WRONG_SECRET}"],
            secret_env(),
            2,
            None,
            one_line=False,
        ),
        Case(
            "doctor, wrong client secret",
            ["doctor"],
            secret_env(secret=WRONG_SECRET),
            3,
            None,
            [main],
            one_line=False,
        ),
        Case(
            "doctor, wrong key",
            ["doctor"],
            jwt_env(KEYLESS_M2M_SIGNER=files["other"].as_uri()),
            3,
            None,
            [main],
            one_line=False,
        ),
        Case("doctor, passes", ["doctor"], jwt_env(), 0, None, [main], one_line=False),
    ]


# The cases that also run as ``python -m keyless_m2m`` subprocesses, with --debug: the
# process boundary (interpreter start-up, the console script's exit code) for each kind of
# echo and refusal. All cases run in-process (``cli_inline``: the same code from argument
# parsing to the exit code), with and without --debug.
IN_A_SUBPROCESS = (
    "token --json, client secret",
    "server echoes the assertion in its error",
    "server echoes the posted secret in its error",
    "truncated token response",
    "bad signer URI: a Vault token in userinfo",
    "secret on the command line",
    "doctor, wrong key",
)


def test_cli_never_prints_a_secret(world: tuple[Forbidden, dict[str, Any]]) -> None:
    forbidden, context = world
    cases = _cases(context)
    assert set(IN_A_SUBPROCESS) <= {case.name for case in cases}
    runs = [(case, debug, False) for case in cases for debug in (False, True)]
    runs += [(case, True, True) for case in cases if case.name in IN_A_SUBPROCESS]

    def command(case: Case, debug: bool) -> list[str]:
        return [case.args[0], "--debug", *case.args[1:]] if debug else case.args

    with ThreadPoolExecutor(max_workers=4) as pool:
        spawned = pool.map(
            lambda run: cli(*command(run[0], run[1]), env=run[0].env), [r for r in runs if r[2]]
        )
        inline = [cli_inline(*command(case, debug), env=case.env) for case, debug, sub in runs if not sub]
        results = inline + list(spawned)

    issued = {token for server in context["servers"].values() for token in server.issued}
    for token in issued:
        forbidden.add("an access token", token)
    problems: list[str] = []
    for (case, debug, subprocess_), result in zip(runs, results, strict=True):
        label = f"{case.name}{' --debug' if debug else ''}{' (subprocess)' if subprocess_ else ''}"
        if result.returncode != case.exit_code:
            problems.append(
                f"{label}: exit {result.returncode}, expected {case.exit_code}: {result.stderr[-300:]}"
            )
        out, err = result.stdout, result.stderr
        if case.exit_code == 0 and case.args[0] == "token":
            printed = json.loads(out)["access_token"] if "--json" in case.args else out.strip()
            if printed not in issued:
                problems.append(f"{label}: printed {printed[:8]}..., not an issued token")
            out = out.replace(printed, "<the token>")  # the one place a token belongs
        leaked = forbidden.found_in(out + "\n" + err)
        if leaked:
            problems.append(f"{label}: leaked {leaked}")
        if case.error is not None:
            lines = err.strip().splitlines()
            if debug:
                if "Traceback" not in err or not lines[-1].startswith(f"keyless-m2m: {case.error}: "):
                    problems.append(f"{label}: no traceback, or no final error line: {err[-300:]}")
            elif len(lines) != 1 or not lines[0].startswith(f"keyless-m2m: {case.error}: "):
                problems.append(f"{label}: not one line naming {case.error}: {err[-500:]}")
        elif case.exit_code == 0 and not debug and err:
            problems.append(f"{label}: wrote to stderr on success: {err[-300:]}")
    assert not problems, "\n".join(problems)
    # the error paths did reach the servers: the assertions and secrets were learnt and checked
    whats = set(forbidden.values.values())
    assert {"client assertion", "posted client secret", "an access token"} <= whats
    assert context["servers"]["echo-error"].token_requests >= 4
    assert context["servers"]["echo-token"].token_requests >= 4


# -- signer URIs that carry a credential (the regression behind the URI cases above) ----------


@pytest.mark.parametrize(
    "uri",
    [
        f"hashivault://root:{VAULT_TOKEN}@m2m-key",
        f"hashivault://m2m-key?token={VAULT_TOKEN}&&",
        f"hashivault://m2m-key?version=1;token={VAULT_TOKEN}",
        f"gcpkms://user:{VAULT_TOKEN}@projects/p/locations/l/keyRings/r/cryptoKeys/k/cryptoKeyVersions/1",
        f"awskms://user:{VAULT_TOKEN}@127.0.0.1:4566/alias/k",
        f"azurekms://user:{VAULT_TOKEN}@vault/key",
        f"nosuch://user:{VAULT_TOKEN}@host/key",
    ],
    ids=[
        "vault-userinfo",
        "vault-query",
        "vault-version",
        "gcp-userinfo",
        "aws-userinfo",
        "azure-userinfo",
        "unknown",
    ],
)
def test_signer_uri_with_a_credential_is_refused_without_echoing_it(uri: str) -> None:
    vault_options = {"url": "http://127.0.0.1:1", "token": "t"} if uri.startswith("hashivault") else {}
    with pytest.raises(ConfigurationError) as info:
        signer_from_uri(uri, **vault_options)
    assert VAULT_TOKEN not in str(info.value)
    assert VAULT_TOKEN not in repr(info.value.__dict__)


@pytest.mark.parametrize("command", ["doctor", "token"])
@pytest.mark.parametrize("where", ["flag", "environment"])
@pytest.mark.parametrize("url_kind", ["token-endpoint", "issuer"])
def test_a_url_with_a_password_is_refused_by_every_command_without_echoing_it(
    command: str, where: str, url_kind: str, tmp_path: Path
) -> None:
    """``doctor`` used to print ``https://u:PASSWORD@host`` in its configuration line."""
    password = "url-pw-canary-5be1"
    url = f"https://svc:{password}@127.0.0.1:9" + ("/token" if url_kind == "token-endpoint" else "")
    secret_file = tmp_path / "secret"
    secret_file.write_text("file-secret-value\n")
    args = [sys.executable, "-m", "keyless_m2m", command, "--client-id", "svc"]
    args += ["--client-secret-file", str(secret_file), "--auth-method", "client_secret_basic"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYLESS_M2M_")}
    variable = "KEYLESS_M2M_TOKEN_ENDPOINT" if url_kind == "token-endpoint" else "KEYLESS_M2M_ISSUER"
    if where == "flag":
        args += [f"--{url_kind}", url]
    else:
        env[variable] = url
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL)
    assert done.returncode == 2
    assert password not in done.stdout + done.stderr
    assert "must not carry credentials" in done.stderr
