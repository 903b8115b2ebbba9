"""The interop matrix against real oidc-provider servers: server configuration, client
authentication method, assertion algorithm and how the assertion's ``aud`` is chosen.

Each configuration (``tests/oidc_provider/clients.py``: ``PROFILES``; ``docs/interop.md``)
is one server, started the first time a case needs it and shared by the cases. Each case is
one ``get_token()`` and asserts the outcome (a Bearer token, or the exact typed error) and
what the server saw: how many token requests, with which ``aud`` and ``typ``, in order.
One test item runs the algorithms of a (configuration, method, aud) cell and reports every
mismatch: a test item costs more than a token request on loopback (the suite collects
garbage after each), and this module must stay a few seconds of CI.

The expected outcome is computed by :func:`expected` from the configuration's rules and
the client's audience plan; :func:`test_the_contract_in_plain_words` spells out the cases
the audience policy is for. ``KEYLESS_M2M_INTEROP_MATRIX=FILE`` records every case for
``python -m tests.oidc_provider.matrix`` (the markdown table).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any

import pytest

from keyless_m2m import (
    ClientSecretBasic,
    ClientSecretPost,
    DiscoveryError,
    InvalidClientError,
    KeylessM2MError,
    PrivateKeyJWT,
    TokenManager,
)
from keyless_m2m.client_auth import ClientAuth
from tests.oidc_provider.clients import (
    PROFILES,
    SECRET,
    AuthServer,
    Profile,
    ProviderPool,
    client_id_for,
)
from tests.oidc_provider.matrix import record

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

ALGS = ["RS256", "PS256", "ES256", "EdDSA"]
SECRET_METHODS = ["client_secret_basic", "client_secret_post"]
METHOD_ORDER = ["private_key_jwt", *SECRET_METHODS]
ALG_ORDER = [None, *ALGS]
BIS_TYP = "client-authentication+jwt"  # draft-ietf-oauth-rfc7523bis explicit typing
# Every manager gets this one context: building the default one loads the CA bundle (about
# 25 ms, more than the token request). The servers are plain http on loopback anyway.
TLS = ssl.create_default_context()


@dataclass(frozen=True)
class AudForm:
    """How the client is set up, and so which ``aud`` (and ``typ``) it sends, in order.

    ``discovered``: ``TokenManager.from_issuer`` (the issuer is then known); else
    ``TokenManager(token_endpoint, ...)``. ``issuer_given``: ``PrivateKeyJWT(issuer=...)``.
    ``policy``: ``audience_policy=`` (``None``: the default, ``"auto"``). ``audience``:
    an explicit ``audience=`` (``"issuer"`` = the issuer identifier). ``strict``:
    ``strict_metadata=True`` (metadata that omits the method or algorithm is refused
    before any token request; by default it is a warning and the server decides).
    """

    name: str
    discovered: bool = False
    issuer_given: bool = False
    policy: str | None = None
    audience: str | None = None
    strict: bool = False

    def plan(self) -> list[tuple[str, str]]:
        """The (aud, typ) of each attempt, the second one sent only after invalid_client."""
        if self.audience == "issuer":  # exactly what was asked for, no fallback
            return [("issuer", "JWT")]
        if not (self.discovered or self.issuer_given) or self.policy == "token_endpoint":
            return [("token_endpoint", "JWT")]
        if self.policy == "issuer":  # strict: never the token endpoint
            return [("issuer", BIS_TYP)]
        # "auto": the issuer identifier first (rfc7523bis §4), once the token endpoint URL
        return [("issuer", BIS_TYP), ("token_endpoint", "JWT")]

    def client_auth(self, server: AuthServer, client_id: str, alg: str) -> PrivateKeyJWT:
        options: dict[str, Any] = {}
        if self.issuer_given:
            options["issuer"] = server.issuer
        if self.policy is not None:
            options["audience_policy"] = self.policy
        if self.audience == "issuer":
            options["audience"] = server.issuer
        return PrivateKeyJWT(client_id, server.signers[alg], **options)


AUD_FORMS = {
    f.name: f
    for f in (
        # Available before the audience policy:
        AudForm("token_endpoint"),
        AudForm("audience=issuer", audience="issuer"),
        AudForm("issuer=", issuer_given=True),
        AudForm("from_issuer", discovered=True),
        # audience_policy= (the standards issue, point 1):
        AudForm("issuer=, policy=issuer", issuer_given=True, policy="issuer"),
        AudForm("issuer=, policy=token_endpoint", issuer_given=True, policy="token_endpoint"),
        AudForm("from_issuer, policy=issuer", discovered=True, policy="issuer"),
        AudForm("from_issuer, policy=token_endpoint", discovered=True, policy="token_endpoint"),
        # strict_metadata= (the standards issue, point 4):
        AudForm("from_issuer, strict_metadata", discovered=True, strict=True),
    )
}
SECRET_FORMS = {
    f.name: f
    for f in (
        AudForm("token_endpoint"),
        AudForm("from_issuer", discovered=True),
        AudForm("from_issuer, strict_metadata", discovered=True, strict=True),
    )
}


@dataclass(frozen=True)
class Outcome:
    """``result``: ``"token"``, an exception's name, ``DiscoveryError(reason)``;
    ``sent``: the ``aud`` of each token request the server saw (``"-"`` without one)."""

    result: str
    sent: tuple[str, ...] = ()


def expected(profile: Profile, method: str, alg: str | None, form: AudForm) -> Outcome:
    """What a client set up as ``form`` gets from a server configured as ``profile``."""
    if form.strict:  # strict_metadata refuses a mismatch before any token request
        if method not in profile.methods:
            return Outcome("DiscoveryError(method_unsupported)")
        if alg is not None and alg not in profile.algs:
            return Outcome("DiscoveryError(algorithm_unsupported)")
    if method != "private_key_jwt":
        return Outcome("token" if profile.accepts(method) else "InvalidClientError", ("-",))
    sent: list[str] = []
    for aud, _typ in form.plan():
        sent.append(aud)
        if profile.accepts(method, alg, aud):
            return Outcome("token", tuple(sent))
    return Outcome("InvalidClientError", tuple(sent))


def test_the_contract_in_plain_words() -> None:
    """The cases the audience policy exists for, written out rather than computed."""
    issuer_only, endpoint_only = PROFILES["issuer-aud-only"], PROFILES["endpoint-aud-only"]
    fapi2, default = PROFILES["fapi2"], PROFILES["default"]
    f = AUD_FORMS
    # from_issuer with defaults gets a token from both kinds of server...
    assert expected(issuer_only, "private_key_jwt", "ES256", f["from_issuer"]) == Outcome(
        "token", ("issuer",)
    )
    assert expected(endpoint_only, "private_key_jwt", "ES256", f["from_issuer"]) == Outcome(
        "token", ("issuer", "token_endpoint")
    )
    assert expected(fapi2, "private_key_jwt", "PS256", f["from_issuer"]) == Outcome("token", ("issuer",))
    # ...and a server that takes both is asked once, with the issuer.
    assert expected(default, "private_key_jwt", "RS256", f["from_issuer"]) == Outcome("token", ("issuer",))
    # Strict "issuer" never falls back; "token_endpoint" never sends the issuer.
    assert expected(endpoint_only, "private_key_jwt", "ES256", f["issuer=, policy=issuer"]) == Outcome(
        "InvalidClientError", ("issuer",)
    )
    assert expected(
        issuer_only, "private_key_jwt", "ES256", f["from_issuer, policy=token_endpoint"]
    ) == Outcome("InvalidClientError", ("token_endpoint",))
    # FAPI 2.0 mode takes only the issuer; RS256 is not a FAPI 2.0 algorithm.
    assert expected(fapi2, "private_key_jwt", "ES256", f["token_endpoint"]) == Outcome(
        "InvalidClientError", ("token_endpoint",)
    )
    # Metadata that omits the algorithm or method: by default the server decides...
    assert expected(fapi2, "private_key_jwt", "RS256", f["from_issuer"]) == Outcome(
        "InvalidClientError", ("issuer", "token_endpoint")
    )
    assert expected(
        PROFILES["private-key-jwt-only"], "client_secret_basic", None, SECRET_FORMS["from_issuer"]
    ) == Outcome("InvalidClientError", ("-",))
    # ...and strict_metadata refuses it, typed, before any request.
    assert expected(fapi2, "private_key_jwt", "RS256", f["from_issuer, strict_metadata"]) == Outcome(
        "DiscoveryError(algorithm_unsupported)"
    )
    assert expected(
        PROFILES["private-key-jwt-only"],
        "client_secret_basic",
        None,
        SECRET_FORMS["from_issuer, strict_metadata"],
    ) == Outcome("DiscoveryError(method_unsupported)")
    assert expected(
        PROFILES["client-secret-post-only"], "client_secret_basic", None, f["token_endpoint"]
    ) == Outcome("InvalidClientError", ("-",))


def _cells() -> list[Any]:
    cells = []
    for name in PROFILES:
        for form in AUD_FORMS:
            form_id = form.replace(", ", "+")
            cells.append(pytest.param(name, "private_key_jwt", form, id=f"{name}-pkjwt-{form_id}"))
        for method in SECRET_METHODS:
            for form in SECRET_FORMS:
                cells.append(
                    pytest.param(name, method, form, id=f"{name}-{method}-{form.replace(', ', '+')}")
                )
    return cells


def _aud_name(server: AuthServer, aud: Any) -> str:
    if aud == server.issuer:
        return "issuer"
    if aud == server.token_endpoint:
        return "token_endpoint"
    return repr(aud)


def _client_auth(server: AuthServer, method: str, alg: str | None, form: AudForm) -> ClientAuth:
    client_id = client_id_for(method, alg)
    if client_id not in server.client_ids:
        # The server cannot register a client for a method it does not support: the
        # wrong method is tried with a client it does know (so the method is refused,
        # not the client id).
        client_id = server.client_ids[0]
    if method == "client_secret_basic":
        return ClientSecretBasic(client_id, SECRET)
    if method == "client_secret_post":
        return ClientSecretPost(client_id, SECRET)
    assert alg is not None
    return form.client_auth(server, client_id, alg)


async def _get_token(server: AuthServer, auth: ClientAuth, form: AudForm) -> str:
    if form.discovered:
        manager = TokenManager.from_issuer(
            server.issuer, auth, scope="pockets.read", verify=TLS, strict_metadata=form.strict
        )
    else:
        manager = TokenManager(server.token_endpoint, auth, scope="pockets.read", verify=TLS)
    async with manager as tokens:
        token = await tokens.get_token()
    assert token.value and token.token_type == "Bearer" and token.scope == "pockets.read"
    return "token"


async def _case(
    server: AuthServer, method: str, alg: str | None, form: AudForm
) -> tuple[str, list[str], list[str]]:
    """Run one case: the result and the aud of each request the server saw (the matrix
    record), and what differs from :func:`expected` (empty: as expected)."""
    want = expected(server.profile, method, alg, form)
    before = server.token_requests().total
    error: BaseException | None = None
    try:
        result = await _get_token(server, _client_auth(server, method, alg, form), form)
    except DiscoveryError as exc:
        result, error = f"DiscoveryError({exc.reason})", exc
    except (KeylessM2MError, TypeError) as exc:  # TypeError: an option this version lacks
        result, error = type(exc).__name__, exc
    seen = server.token_requests(before).requests
    sent = tuple(_aud_name(server, r["aud"]) if r["method"] == "private_key_jwt" else "-" for r in seen)

    problems = []
    if (result, sent) != (want.result, want.sent):
        problems.append(
            f"got {result} after {list(sent)}, expected {want.result} after {list(want.sent)}: {error!r}"
        )
    elif isinstance(error, InvalidClientError) and error.retryable:
        problems.append("invalid_client must not be retryable")
    if method == "private_key_jwt" and not problems:
        typs = [typ for _, typ in form.plan()][: len(seen)]
        if [r["typ"] for r in seen] != typs or any(r["alg"] != alg for r in seen):
            problems.append(
                f"sent typ/alg {[(r['typ'], r['alg']) for r in seen]}, expected typ {typs}, alg {alg}"
            )
    return result, [*sent], problems


@pytest.mark.parametrize(("profile", "method", "form"), _cells())
async def test_matrix(
    oidc_servers: ProviderPool, anyio_backend: str, profile: str, method: str, form: str
) -> None:
    server = oidc_servers.get(profile)
    aud_form = (AUD_FORMS if method == "private_key_jwt" else SECRET_FORMS)[form]
    failures = []
    forms = list(AUD_FORMS if method == "private_key_jwt" else SECRET_FORMS)
    for alg in ALGS if method == "private_key_jwt" else [None]:
        result, sent, problems = await _case(server, method, alg, aud_form)
        want = expected(server.profile, method, alg, aud_form)
        record(
            {
                "order": [
                    list(PROFILES).index(profile),
                    METHOD_ORDER.index(method),
                    ALG_ORDER.index(alg),
                    forms.index(form),
                ],
                "configuration": profile,
                "method": method,
                "algorithm": alg or "-",
                "aud": form,
                "backend": anyio_backend[0],
                "result": result,
                "sent": sent,
                "expected": want.result,
                "expected_sent": list(want.sent),
            }
        )
        failures += [f"{alg or method}: {p}" for p in problems]
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("profile", list(PROFILES))
def test_metadata_is_what_the_configuration_enforces(oidc_servers: ProviderPool, profile: str) -> None:
    server = oidc_servers.get(profile)
    config = server.profile
    assert server.metadata["issuer"] == server.issuer
    assert "client_credentials" in server.metadata["grant_types_supported"]
    assert server.metadata["token_endpoint_auth_methods_supported"] == list(config.methods)
    if "private_key_jwt" in config.methods:
        assert server.metadata["token_endpoint_auth_signing_alg_values_supported"] == list(config.algs)
    else:  # oidc-provider publishes no assertion algorithms without a JWT method
        assert "token_endpoint_auth_signing_alg_values_supported" not in server.metadata
