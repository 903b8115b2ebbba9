"""``keyless-m2m token --dpop-key URI`` and ``keyless-m2m proof`` as a user meets them:
a DPoP-bound token (RFC 9449) from the embedded authorization server acting as a DPoP
server that demands nonces, bound to a key the user keeps, then used with a proof the
``proof`` command printed, the way ``curl -H "DPoP: ..."`` would, at a resource server
that verifies every proof with PyJWT. ``--dpop`` (an ephemeral key) says that the token
dies with the command. Bad input is a usage error (exit 2) in one line that never shows
the token."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest

from keyless_m2m.cli import run
from keyless_m2m.signers import LocalSigner
from keyless_m2m.testing.authorization_server import AuthorizationServer
from tests.cli_runner import cli, env_for, jwk_of, key_uri
from tests.dpop_resource_server import DPoPResourceServer, thumbprint
from tests.helpers import make_key, pem_of

pytestmark = pytest.mark.integration


@pytest.fixture
def dpop_server() -> Iterator[AuthorizationServer]:
    with AuthorizationServer(dpop="required", dpop_nonce=True) as server:
        server.register_client("svc", public_jwk=jwk_of("p256", "ES256"))
        yield server


def _public_jwk(kind: str) -> dict[str, object]:
    signer = LocalSigner.from_pem(pem_of(make_key(kind)))
    assert signer._description is not None
    return dict(signer._description.public_jwk)


def test_a_token_bound_to_a_kept_key_used_with_printed_proofs(
    dpop_server: AuthorizationServer, tmp_path: Path
) -> None:
    dpop_key = key_uri(tmp_path, "p384")  # not the client's signing key
    env = env_for(dpop_server, tmp_path, KEYLESS_M2M_DPOP_KEY=dpop_key)
    fetched = cli("token", "--json", env=env)
    assert fetched.returncode == 0, fetched.stderr
    assert fetched.stderr == ""
    body = json.loads(fetched.stdout)
    jkt = thumbprint(_public_jwk("p384"))
    # The server demanded its nonce once; the token is DPoP and bound to the kept key.
    assert body["token_type"] == "DPoP" and body["dpop_jkt"] == jkt
    assert dpop_server.jkt_of(body["access_token"]) == jkt
    assert dpop_server.dpop_nonces_demanded == 1 and dpop_server.dpop_proofs_verified == 1

    token_file = tmp_path / "token"
    token_file.write_text(body["access_token"] + "\n")
    with DPoPResourceServer(jkt_of=dpop_server.jkt_of) as api:
        url = f"{api.url}/pockets?page=2"
        printed = cli(
            "proof", "get", url, "--access-token-file", str(token_file), "--dpop-key", dpop_key, env={}
        )
        assert printed.returncode == 0, printed.stderr
        proof = printed.stdout.strip()
        assert body["access_token"] not in printed.stdout + printed.stderr
        claims = jwt.decode(proof, options={"verify_signature": False})
        assert claims["htm"] == "GET" and claims["htu"] == f"{api.url}/pockets" and "nonce" not in claims
        answer = httpx.get(url, headers={"Authorization": f"DPoP {body['access_token']}", "DPoP": proof})
        assert answer.status_code == 200, answer.text
        # A proof is for one request: the same proof again is a replay the server refuses.
        replayed = httpx.get(url, headers={"Authorization": f"DPoP {body['access_token']}", "DPoP": proof})
        assert replayed.status_code == 401
    assert api.outcomes() == ["ok", "invalid_dpop_proof"] and api.replays_refused == 1


@pytest.mark.anyio
async def test_dpop_with_an_ephemeral_key_says_the_token_dies_with_the_command(
    dpop_server: AuthorizationServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = env_for(dpop_server, tmp_path)
    assert await run(["token", "--dpop", "--json"], environ=env) == 0
    captured = capsys.readouterr()
    body = json.loads(captured.out)
    assert body["token_type"] == "DPoP" and dpop_server.jkt_of(body["access_token"]) == body["dpop_jkt"]
    note = captured.err.strip().splitlines()
    assert len(note) == 1 and "ephemeral DPoP key" in note[0] and "--dpop-key" in note[0]

    # Without --dpop, this server's answer is a refusal (exit 3), and nothing else.
    assert await run(["token"], environ=env) == 3
    assert capsys.readouterr().out == ""


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["proof", "GET", "https://api.example/x"], "--dpop-key"),
        (["proof", "GET", "/relative", "--dpop-key", "KEY"], "absolute http(s) URL"),
        (["proof", "GET", "ftp://api.example/x", "--dpop-key", "KEY"], "absolute http(s) URL"),
        (["proof", "G T", "https://api.example/x", "--dpop-key", "KEY"], "not an HTTP method"),
        (["proof", "GET", "https://api.example/x", "--dpop-key", "KEY", "--nonce", 'a"b'], "--nonce"),
        (
            ["proof", "GET", "https://api.example/x", "--dpop-key", "KEY", "--access-token-file", "EMPTY"],
            "empty",
        ),
        (
            ["proof", "GET", "https://api.example/x", "--dpop-key", "KEY", "--access-token-file", "WIDE"],
            "ASCII",
        ),
    ],
)
async def test_proof_refuses_bad_input_in_one_line(
    args: list[str], says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty").write_text("\n")
    wide = "tøken-8f0c1d"
    (tmp_path / "wide").write_text(wide)
    replace = {
        "KEY": key_uri(tmp_path, "p256"),
        "EMPTY": str(tmp_path / "empty"),
        "WIDE": str(tmp_path / "wide"),
    }
    assert await run([replace.get(a, a) for a in args], environ={}) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert captured.out == "" and len(lines) == 1 and says in lines[0], captured.err
    assert lines[0].startswith("keyless-m2m: ConfigurationError: ") and wide not in captured.err
