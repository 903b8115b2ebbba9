"""A small, real OAuth 2.0 authorization server for tests and the demo.

It serves the client-credentials grant on loopback over real HTTP, verifies
``private_key_jwt`` assertions (signature against the client's registered keys and their
``alg``, ``iss``/``sub``, ``aud`` (the token endpoint URL or the issuer, or only one of them:
``assertion_audience``), ``exp``, ``iat``/``nbf`` not in the future, replayed ``jti``),
client secrets (basic and post) and, for clients registered with ``federated=``, JWTs of
an external issuer they trust (workload identity: :class:`FederatedCredential`), checks
scopes, grants them (all requested, or what a grant policy allows: ``grant=``, on the
server or per client), and counts what it sees. A refusal's
``error_description`` says which check failed. Knobs inject latency and failures, so
tests can assert counts instead of times::

    with AuthorizationServer() as server:
        server.register_client("svc", jwks={"keys": [public_jwk]})
        server.token_endpoint     # http://127.0.0.1:PORT/token
        server.token_requests     # how many token requests arrived

With ``dpop="optional"`` or ``"required"`` it also verifies DPoP proofs (RFC 9449
section 4.3) at the token endpoint, issues ``token_type: DPoP`` tokens bound to the proof
key's thumbprint (``dpop_bindings``) and, with ``dpop_nonce=True``, demands its nonce
(section 8).

It runs in its own thread (``ThreadingHTTPServer``), so asyncio, trio and blocking code
can all use it. Not for production.
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import json
import secrets
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import parse_qs, unquote_plus, urlsplit

from jwcrypto import jwk, jws
from jwcrypto.common import JWException

from .._jose import ALGORITHMS
from ..assertions import JWT_SPIFFE
from ..client_auth import CLIENT_ASSERTION_TYPE
from ._faults import FaultInjection, FaultQueue

__all__ = ["AuthorizationServer", "Fault", "FederatedCredential", "GrantPolicy", "RegisteredClient"]

GrantPolicy = Callable[[str, frozenset[str]], Iterable[str]]
"""``(client_id, requested_scopes) -> granted_scopes``: what a server grants an
authenticated client that asked for ``requested_scopes`` (RFC 6749 section 3.3: it may
grant less, or other scopes, and then says which in the token response's ``scope``)."""


def _grant_policy(grant: GrantPolicy | Iterable[str] | None) -> GrantPolicy | None:
    """A policy from ``grant=``: a callable as it is, a collection of scopes as a cap (the
    requested scopes that are in it)."""
    if grant is None or callable(grant):
        return grant
    if isinstance(grant, str):
        raise TypeError("grant= takes a callable or a collection of scopes, not a str: ['a', 'b']")
    cap = frozenset(grant)
    return lambda client_id, requested: requested & cap


@dataclass(frozen=True)
class FederatedCredential:
    """Trust in an external issuer's JWTs as one client's credentials (workload identity;
    Entra calls it a federated identity credential, Keycloak federated client authentication).

    The assertion must be signed by a key of ``jwks`` (the issuer's published keys), carry
    ``iss == issuer`` (``issuer=None``: not checked, as SPIFFE JWT-SVIDs may omit it),
    ``sub == subject``, ``audience`` in ``aud`` and an ``exp`` not past, and come with
    ``client_assertion_type == assertion_type``. No ``jti`` is required or remembered:
    platform tokens are re-used until the platform rotates them.
    """

    issuer: str | None
    jwks: Mapping[str, Any]
    subject: str
    audience: str
    assertion_type: str = CLIENT_ASSERTION_TYPE


@dataclass
class RegisteredClient:
    client_id: str
    jwks: Mapping[str, Any] | None = None
    client_secret: str | None = None
    scopes: frozenset[str] | None = None  # None: any scope
    federated: tuple[FederatedCredential, ...] = ()
    grant: GrantPolicy | None = None  # None: the server's policy (default: all requested)


@dataclass
class Fault:
    """A canned answer for the next ``count`` token requests (``count=None``: until cleared).

    ``status``/``body``/``headers`` are the answer; ``status=None`` answers as the server
    normally would (a real token or refusal) and only shapes how it is delivered.
    Delivery faults: ``drop_connection`` closes the connection without a byte of answer;
    ``delay`` waits that many seconds before the status line (slow headers: a client read
    timeout); ``slow_body`` sends the headers and half the body, then waits that long
    before the rest (a stalled body); ``reset_after`` sends the headers and that many body
    bytes, then resets the connection (TCP RST, the rest never arrives).
    """

    status: int | None = 503
    body: bytes | str | Mapping[str, Any] = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    count: int | None = 1
    drop_connection: bool = False
    delay: float = 0.0
    slow_body: float = 0.0
    reset_after: int | None = None


class _Server(ThreadingHTTPServer):
    """``ThreadingHTTPServer`` with a listen backlog a fleet of clients fits in: the
    default (5) overflows when twenty managers connect at once on a busy machine, and
    the connections beyond it fail and are retried (extra signatures and attempts)."""

    request_queue_size = 128


class AuthorizationServer(FaultInjection):
    """Loopback authorization server; see the module docstring.

    ``expires_in`` sets the token lifetime; ``latency`` delays every token response;
    ``leeway`` is the clock tolerance (seconds) for ``exp``, ``iat`` and ``nbf``;
    ``assertion_audience`` which client assertion ``aud`` it accepts: ``"either"`` (the
    token endpoint URL or the issuer, as oidc-provider), ``"issuer"`` (only the issuer
    identifier, as draft-ietf-oauth-rfc7523bis section 4 and FAPI 2.0 require) or
    ``"token_endpoint"`` (only the token endpoint URL, as many deployed servers);
    ``token_type`` the ``token_type`` of the tokens it issues (``"Bearer"``; e.g.
    ``"access_token"`` as one certified Python server answers); ``basic_encoding`` how it
    reads ``client_secret_basic``: ``"form"`` (RFC 6749 section 2.3.1: id and secret
    form-decoded) or ``"raw"`` (the ``id:secret`` compared as sent, as 5 of 6 deployed
    servers tried);
    ``dpop`` whether it takes DPoP proofs (RFC 9449) at the token endpoint: ``"off"`` (the
    ``DPoP`` header is ignored, as by a server without DPoP), ``"optional"`` (a request
    with a proof gets a ``DPoP`` token bound to its key, one without a ``Bearer`` token) or
    ``"required"`` (a request without a proof is refused: 400 ``invalid_dpop_proof``);
    ``dpop_nonce`` whether proofs must carry its current nonce (section 8: 400
    ``use_dpop_nonce`` with a ``DPoP-Nonce`` header otherwise; every token response then
    carries ``DPoP-Nonce``; :meth:`rotate_dpop_nonce` makes the current one stale);
    ``dpop_iat_window`` how far (seconds) a proof's ``iat`` may be from the server's clock;
    ``dpop_bindings`` maps each DPoP token issued to its key's RFC 7638 thumbprint (``jkt``);
    ``grant`` the grant policy of clients registered without their own (see
    :meth:`register_client`): a :data:`GrantPolicy` ``(client_id, requested) -> granted`` or a
    collection of scopes as a cap; by default every requested scope is granted;
    :meth:`fail_next` queues :class:`Fault` answers (the test kit's one fault API);
    ``token_requests``, ``issued`` and ``refusals`` record what happened, and
    :meth:`introspect` tells a resource server what a token is for; ``extra_metadata``
    adds members to the metadata document.
    """

    fault_types = (Fault,)

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        expires_in: float = 3600,
        latency: float = 0.0,
        token_path: str = "/token",  # noqa: S107 - a URL path
        leeway: float = 5.0,
        assertion_audience: Literal["either", "issuer", "token_endpoint"] = "either",
        token_type: str = "Bearer",  # noqa: S107 - a token type, not a password
        basic_encoding: Literal["form", "raw"] = "form",
        dpop: Literal["off", "optional", "required"] = "off",
        dpop_nonce: bool = False,
        dpop_iat_window: float = 60.0,
        grant: GrantPolicy | Iterable[str] | None = None,
    ) -> None:
        if dpop not in ("off", "optional", "required"):
            raise ValueError("dpop must be 'off', 'optional' or 'required'")
        self.dpop = dpop
        self.dpop_nonce = dpop_nonce
        self.dpop_iat_window = dpop_iat_window
        self.dpop_bindings: dict[str, str] = {}  # DPoP token -> jkt of its proof key
        self.dpop_proofs_verified = 0
        self.dpop_nonces_demanded = 0
        self.dpop_replays_refused = 0
        self._dpop_nonce_value = secrets.token_urlsafe(16)
        self._seen_dpop_jti: dict[str, float] = {}  # jti -> when it may be forgotten
        if basic_encoding not in ("form", "raw"):
            raise ValueError("basic_encoding must be 'form' or 'raw'")
        self.basic_encoding = basic_encoding
        if assertion_audience not in ("either", "issuer", "token_endpoint"):
            raise ValueError("assertion_audience must be 'either', 'issuer' or 'token_endpoint'")
        self.assertion_audience = assertion_audience
        self.token_type = token_type
        self.grant = _grant_policy(grant)
        self.expires_in = expires_in
        self.leeway = leeway
        self.latency = latency
        self.token_path = token_path
        self.clients: dict[str, RegisteredClient] = {}
        self._faults: FaultQueue[Fault] = FaultQueue()
        self.token_requests = 0
        self.federated_assertions_verified = 0
        self.issued: list[str] = []
        self._grants: dict[str, dict[str, Any]] = {}  # token -> what introspect() tells of it
        #: Members added to (or replacing those of) the metadata document, e.g. an
        #: ``authorization_endpoint`` for a client that requires one (the MCP SDK's).
        self.extra_metadata: dict[str, Any] = {}
        self.refusals: list[str] = []  # "error: error_description" of each refused request
        self.on_request: Callable[[dict[str, list[str]]], None] | None = None
        self.fault_policy: Callable[[int], Fault | None] | None = None
        self.clock_offset = 0.0  # seconds the server's clock is ahead of ours (its Date header)
        # True: the assertion's exp/iat/nbf are checked against that skewed clock too (a
        # server whose clock is really off); False: only the Date header is skewed.
        self.checks_use_clock_offset = False
        self.statuses: list[int] = []  # per token request: the status sent, 0 if none was
        self._stopping = threading.Event()
        self._handler = _handler_for(self)
        self._seen_jti: dict[tuple[str, str], float] = {}  # (client, jti) -> exp
        self._lock = threading.Lock()
        self._httpd = self._listen((host, port))
        self._thread: threading.Thread | None = None
        self._connections: set[Any] = set()

    # -- addresses ----------------------------------------------------------------------

    @property
    def issuer(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def token_endpoint(self) -> str:
        return self.issuer + self.token_path

    def metadata(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "token_endpoint": self.token_endpoint,
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": [
                "private_key_jwt",
                "client_secret_basic",
                "client_secret_post",
            ],
            "token_endpoint_auth_signing_alg_values_supported": sorted(ALGORITHMS),
            **({"dpop_signing_alg_values_supported": sorted(ALGORITHMS)} if self.dpop != "off" else {}),
            **self.extra_metadata,
        }

    def introspect(self, token: str) -> dict[str, Any]:
        """What the server knows of ``token``, in RFC 7662's terms: ``{"active": False}``
        for a token it did not issue or that has expired, else ``active``, ``client_id``,
        ``scope`` (granted), ``token_type``, ``exp``, ``iss`` and, when the request named
        resources (RFC 8707), ``aud``. For a resource server in a test (an in-process call,
        not an HTTP endpoint)."""
        with self._lock:
            grant = self._grants.get(token)
        if grant is None or grant["exp"] <= time.time():
            return {"active": False}
        return dict(grant)

    # -- configuration ------------------------------------------------------------------

    def register_client(
        self,
        client_id: str,
        *,
        jwks: Mapping[str, Any] | None = None,
        public_jwk: Mapping[str, Any] | None = None,
        client_secret: str | None = None,
        scopes: Iterable[str] | None = None,
        federated: FederatedCredential | Iterable[FederatedCredential] | None = None,
        grant: GrantPolicy | Iterable[str] | None = None,
    ) -> RegisteredClient:
        """Register (or replace) a client; ``federated``: the external issuers whose JWTs
        authenticate it (:class:`FederatedCredential`, one or several); ``scopes``: what it
        may request (else ``invalid_scope``); ``grant``: what it gets of that, a
        :data:`GrantPolicy` or a collection of scopes as a cap (default: the server's
        ``grant``, else all it requested). The policy runs after authentication.

        >>> with AuthorizationServer() as server:
        ...     client = server.register_client("svc", client_secret="s", grant=["read"])
        ...     server.handle_token_request(
        ...         {"grant_type": ["client_credentials"], "client_id": ["svc"],
        ...          "client_secret": ["s"], "scope": ["read write"]}, None)[1]["scope"]
        'read'
        """
        if public_jwk is not None:
            jwks = {"keys": [dict(public_jwk)]}
        trusted = (federated,) if isinstance(federated, FederatedCredential) else tuple(federated or ())
        client = RegisteredClient(
            client_id,
            jwks,
            client_secret,
            frozenset(scopes) if scopes is not None else None,
            trusted,
            _grant_policy(grant),
        )
        self.clients[client_id] = client
        return client

    @property
    def faults(self) -> list[Fault]:
        """The queued faults not yet used up, oldest first (a snapshot)."""
        return self._faults.pending()

    # -- lifecycle ----------------------------------------------------------------------

    def _listen(self, address: tuple[str, int]) -> ThreadingHTTPServer:
        httpd = _Server(address, self._handler)
        httpd.daemon_threads = True
        return httpd

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``, as the emulators spell their address."""
        host, port = self._httpd.server_address[:2]
        return f"{host!s}:{port}"

    @property
    def url(self) -> str:
        """The issuer, ``http://127.0.0.1:PORT`` (the name the emulators use)."""
        return self.issuer

    def start(self) -> Self:
        """Serve (again: after :meth:`stop`, on the same address, with the same clients)."""
        if self._thread is None:
            if self._httpd.socket.fileno() < 0:  # stopped: listen again on the same port
                self._httpd = self._listen(self._httpd.server_address[:2])  # type: ignore[arg-type]
            self._stopping.clear()
            self._thread = threading.Thread(
                target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and drop open keep-alive connections (clients then see refusals).

        Pending ``delay``/``slow_body`` faults end at once. :meth:`start` serves again."""
        self._stopping.set()
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._httpd.server_close()
        with self._lock:
            connections, self._connections = list(self._connections), set()
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- the token endpoint -------------------------------------------------------------

    def _next_fault(self, request_number: int) -> Fault | None:
        fault = self._faults.take()
        if fault is not None:
            return fault
        policy = self.fault_policy
        return policy(request_number) if policy is not None else None

    def handle_token_request(
        self,
        form: dict[str, list[str]],
        authorization: str | None,
        *,
        dpop_proofs: list[str] | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """Decide one token request: (status, JSON body).

        ``dpop_proofs``: the values of the request's ``DPoP`` headers (one per header line;
        the handler passes them when ``dpop`` is not ``"off"``)."""
        status, body = self._decide(form, authorization, dpop_proofs or [])
        if status >= 400:
            error, description = body.get("error"), body.get("error_description")
            with self._lock:
                self.refusals.append(f"{error}: {description}" if description else str(error))
        return status, body

    def _decide(
        self, form: dict[str, list[str]], authorization: str | None, dpop_proofs: list[str]
    ) -> tuple[int, dict[str, Any]]:
        def one(name: str) -> str | None:
            values = form.get(name)
            if values is None:
                return None
            return values[0] if len(values) == 1 else "\x00duplicate"

        if one("grant_type") != "client_credentials":
            return 400, {"error": "unsupported_grant_type"}
        client = self._authenticate(form, authorization, one)
        if isinstance(client, tuple):
            return client
        requested = frozenset((one("scope") or "").split())
        if client.scopes is not None and not requested <= client.scopes:
            refused = " ".join(sorted(requested - client.scopes))
            return 400, {
                "error": "invalid_scope",
                "error_description": f"client {_shown(client.client_id)} may not request: {refused}",
            }
        jkt: str | None = None
        if self.dpop != "off":
            checked_proof = self._check_dpop(dpop_proofs)
            if isinstance(checked_proof, tuple):
                return checked_proof
            jkt = checked_proof
        token = "at_" + secrets.token_urlsafe(24)
        policy = client.grant or self.grant
        granted = requested if policy is None else frozenset(policy(client.client_id, requested))
        grant: dict[str, Any] = {
            "active": True,
            "client_id": client.client_id,
            "scope": " ".join(sorted(granted)),
            "token_type": "DPoP" if jkt is not None else self.token_type,
            "exp": int(time.time() + self.expires_in),
            "iss": self.issuer,
        }
        if form.get("resource"):
            grant["aud"] = list(form["resource"])  # RFC 8707: the resources it is for
        with self._lock:
            self.issued.append(token)
            self._grants[token] = grant
            if jkt is not None:
                self.dpop_bindings[token] = jkt
        body: dict[str, Any] = {
            "access_token": token,
            "token_type": "DPoP" if jkt is not None else self.token_type,
            "expires_in": self.expires_in,
        }
        if requested or granted != requested:
            # Said even when empty: an absent scope means "all requested" (RFC 6749 5.1).
            body["scope"] = " ".join(sorted(granted))
        return 200, body

    def _authenticate(
        self,
        form: dict[str, list[str]],
        authorization: str | None,
        one: Callable[[str], str | None],
    ) -> RegisteredClient | tuple[int, dict[str, Any]]:
        def invalid(reason: str) -> tuple[int, dict[str, Any]]:
            # The reason names what failed, never the secret or the assertion.
            return 401, {"error": "invalid_client", "error_description": reason}

        if authorization and authorization.lower().startswith("basic "):
            try:
                decoded = base64.b64decode(authorization[6:], validate=True).decode()
                raw_id, _, raw_secret = decoded.partition(":")
                if self.basic_encoding == "raw":  # as most deployed servers: no form-decoding
                    client_id, secret = raw_id, raw_secret
                else:
                    client_id, secret = unquote_plus(raw_id), unquote_plus(raw_secret)
            except ValueError:
                return invalid("malformed Basic authorization header")
            checked = self._check_secret(client_id, secret)
        elif one("client_assertion_type") in (CLIENT_ASSERTION_TYPE, JWT_SPIFFE):
            checked = self._check_any_assertion(
                one("client_assertion_type") or "", one("client_assertion") or "", one("client_id")
            )
        elif one("client_id") and one("client_secret"):
            checked = self._check_secret(one("client_id") or "", one("client_secret") or "")
        else:
            return invalid("no client authentication")
        return invalid(checked) if isinstance(checked, str) else checked

    def _check_secret(self, client_id: str, secret: str) -> RegisteredClient | str:
        client = self.clients.get(client_id)
        if client is None:
            return f"unknown client {_shown(client_id)}"
        if client.client_secret is None:
            return f"client {_shown(client_id)} has no client secret registered"
        if not hmac.compare_digest(client.client_secret.encode(), secret.encode()):
            return f"wrong client secret for client {_shown(client_id)}"
        return client

    def _check_any_assertion(
        self, assertion_type: str, assertion: str, form_client_id: str | None
    ) -> RegisteredClient | str:
        """A federated credential's JWT when a client trusts its issuer (and subject), else
        a ``private_key_jwt`` assertion signed with the client's own key."""
        parsed = _parse_assertion(assertion)
        if isinstance(parsed, str):
            return parsed
        token, header, claims = parsed
        if form_client_id is not None:
            named = self.clients.get(form_client_id)
            candidates = [named] if named is not None else []
        else:
            candidates = list(self.clients.values())
        matches = [
            (client, credential)
            for client in candidates
            for credential in client.federated
            if credential.issuer in (None, claims.get("iss")) and credential.subject == claims.get("sub")
        ]
        if matches:
            return self._check_federated(matches, assertion_type, token, header, claims)
        if assertion_type != CLIENT_ASSERTION_TYPE:
            return f"no client trusts a {assertion_type} assertion with sub {_shown(claims.get('sub'))}"
        if form_client_id is not None and candidates and candidates[0].federated and not candidates[0].jwks:
            return (
                f"client {_shown(form_client_id)} trusts no issuer {_shown(claims.get('iss'))} with "
                f"subject {_shown(claims.get('sub'))}"
            )
        return self._check_assertion(token, header, claims, form_client_id)

    def _check_federated(
        self,
        matches: list[tuple[RegisteredClient, FederatedCredential]],
        assertion_type: str,
        token: jws.JWS,
        header: Mapping[str, Any],
        claims: Mapping[str, Any],
    ) -> RegisteredClient | str:
        reason = ""
        for client, credential in matches:
            reason = self._federated_refusal(credential, assertion_type, token, header, claims)
            if not reason:
                with self._lock:
                    self.federated_assertions_verified += 1
                return client
        return reason

    def _federated_refusal(
        self,
        credential: FederatedCredential,
        assertion_type: str,
        token: jws.JWS,
        header: Mapping[str, Any],
        claims: Mapping[str, Any],
    ) -> str:
        if assertion_type != credential.assertion_type:
            return f"client_assertion_type must be {credential.assertion_type} for this federated credential"
        refused = _verify_signature(
            token, header, credential.jwks, f"the issuer {_shown(credential.issuer)}'s"
        )
        if refused is not None:
            return refused
        aud = claims.get("aud")
        if credential.audience not in (aud if isinstance(aud, list) else [aud]):
            return f"aud must include {credential.audience}"
        now = time.time() + (self.clock_offset if self.checks_use_clock_offset else 0.0)
        exp = _number(claims.get("exp"))
        if exp is None:
            return "exp is missing or not a number"
        if exp < now - self.leeway:
            return "the client assertion has expired (exp)"
        for name in ("iat", "nbf"):
            if name in claims:
                value = _number(claims[name])
                if value is None or value > now + self.leeway:
                    return f"{name} is not a number or is in the future"
        return ""

    def _check_assertion(
        self, token: jws.JWS, header: Mapping[str, Any], claims: Mapping[str, Any], form_client_id: str | None
    ) -> RegisteredClient | str:
        """A ``private_key_jwt`` assertion (parsed once, by :func:`_parse_assertion`) signed
        with the client's own key."""
        iss = claims.get("iss")
        client = self.clients.get(iss) if isinstance(iss, str) else None
        if client is None:
            return f"iss {_shown(iss)} is not a registered client"
        if claims.get("sub") != client.client_id:
            return "sub must equal iss"
        if form_client_id is not None and form_client_id != client.client_id:
            return "client_id does not match the assertion's iss"
        if client.jwks is None:
            return f"client {_shown(client.client_id)} has no registered keys"
        refused = _verify_signature(token, header, client.jwks, f"client {_shown(client.client_id)}'s")
        if refused is not None:
            return refused
        now = time.time() + (self.clock_offset if self.checks_use_clock_offset else 0.0)
        leeway = self.leeway
        aud = claims.get("aud")
        auds = aud if isinstance(aud, list) else [aud]
        if self.assertion_audience == "issuer":
            if aud != self.issuer:  # one string, exactly the issuer (rfc7523bis section 4)
                return f"aud must be the issuer identifier {self.issuer} (and only that)"
        elif self.assertion_audience == "token_endpoint":
            if self.token_endpoint not in auds:
                return f"aud must be the token endpoint URL {self.token_endpoint}"
        elif not ({self.token_endpoint, self.issuer} & {a for a in auds if isinstance(a, str)}):
            return f"aud must be the token endpoint {self.token_endpoint} or the issuer {self.issuer}"
        exp = _number(claims.get("exp"))
        if exp is None:
            return "exp is missing or not a number"
        if exp < now - leeway:
            return "the client assertion has expired (exp)"
        for name in ("iat", "nbf"):  # optional in RFC 7523, checked when present
            if name in claims:
                value = _number(claims[name])
                if value is None or value > now + leeway:
                    return f"{name} is not a number or is in the future"
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            return "jti is missing"
        with self._lock:
            self._seen_jti = {j: e for j, e in self._seen_jti.items() if e >= now - leeway}
            if (client.client_id, jti) in self._seen_jti:
                return "jti has been used before (a replayed assertion)"
            self._seen_jti[(client.client_id, jti)] = exp
        return client

    # -- DPoP (RFC 9449) ------------------------------------------------------------------

    @property
    def dpop_nonce_value(self) -> str:
        """The nonce proofs must carry now (when ``dpop_nonce`` is on)."""
        return self._dpop_nonce_value

    def rotate_dpop_nonce(self) -> str:
        """Replace the current nonce (the old one is stale from now on); return the new one."""
        with self._lock:
            self._dpop_nonce_value = secrets.token_urlsafe(16)
            return self._dpop_nonce_value

    def jkt_of(self, token: str) -> str | None:
        """The thumbprint of the key ``token`` is bound to (``None``: unknown or a Bearer token)."""
        with self._lock:
            return self.dpop_bindings.get(token)

    def dpop_response_headers(self) -> dict[str, str]:
        """Headers for every token endpoint answer: the current ``DPoP-Nonce`` when nonces are on."""
        if self.dpop != "off" and self.dpop_nonce:
            return {"DPoP-Nonce": self.dpop_nonce_value}
        return {}

    def _check_dpop(self, proofs: list[str]) -> str | tuple[int, dict[str, Any]] | None:
        """The proof key's thumbprint, ``None`` (no proof, and none required) or a refusal."""

        def invalid(reason: str) -> tuple[int, dict[str, Any]]:
            return 400, {"error": "invalid_dpop_proof", "error_description": reason}

        if not proofs:
            return invalid("a DPoP proof is required") if self.dpop == "required" else None
        if len(proofs) > 1:
            return invalid("more than one DPoP header")
        try:
            proof = jws.JWS()
            proof.deserialize(proofs[0])
            header = proof.jose_header
            claims = json.loads(proof.objects["payload"])
        except (JWException, ValueError, KeyError, TypeError):
            return invalid("the DPoP proof is not a compact JWS")
        if not isinstance(header, dict) or not isinstance(claims, dict):
            return invalid("the DPoP proof's header or claims are not a JSON object")
        if header.get("typ") != "dpop+jwt":
            return invalid(f"typ must be 'dpop+jwt', not {_shown(header.get('typ'))}")
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            return invalid(f"alg {_shown(alg)} is not an asymmetric JWS algorithm")
        public = header.get("jwk")
        if not isinstance(public, dict):
            return invalid("the header has no jwk")
        if set(public) & _PRIVATE_JWK_MEMBERS:
            return invalid("the jwk has private key members")
        try:
            key = jwk.JWK(**public)
            proof.verify(key, alg=alg)
        except (JWException, ValueError, TypeError):
            return invalid("the signature does not verify with the header's jwk")
        if claims.get("htm") != "POST":
            return invalid(f"htm must be 'POST', not {_shown(claims.get('htm'))}")
        if not _same_url(claims.get("htu"), self.token_endpoint):
            return invalid(f"htu must be the token endpoint {self.token_endpoint}")
        now = time.time() + (self.clock_offset if self.checks_use_clock_offset else 0.0)
        iat = _number(claims.get("iat"))
        if iat is None or abs(iat - now) > self.dpop_iat_window:
            return invalid(f"iat is missing or more than {self.dpop_iat_window:g} s from the server's clock")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            return invalid("jti is missing")
        if self.dpop_nonce and claims.get("nonce") != self.dpop_nonce_value:
            with self._lock:
                self.dpop_nonces_demanded += 1
            stale = "missing" if "nonce" not in claims else "not the current nonce"
            return 400, {"error": "use_dpop_nonce", "error_description": f"the DPoP nonce is {stale}"}
        with self._lock:
            self._seen_dpop_jti = {j: t for j, t in self._seen_dpop_jti.items() if t >= now}
            if jti in self._seen_dpop_jti:
                self.dpop_replays_refused += 1
                return invalid("jti has been used before (a replayed DPoP proof)")
            self._seen_dpop_jti[jti] = iat + 2 * self.dpop_iat_window
            self.dpop_proofs_verified += 1
        return _b64_thumbprint(key)


def _parse_assertion(assertion: str) -> tuple[jws.JWS, dict[str, Any], dict[str, Any]] | str:
    """A client assertion's JWS, header and claims (not verified), or why it is none."""
    try:
        token = jws.JWS()
        token.deserialize(assertion)
        claims = json.loads(token.objects["payload"])
        header = token.jose_header
    except (JWException, ValueError, KeyError, TypeError):
        return "the client assertion is not a compact JWS"
    if not isinstance(claims, dict):
        return "the client assertion's claims are not a JSON object"
    return token, header, claims


def _verify_signature(
    token: jws.JWS, header: Mapping[str, Any], jwks: Mapping[str, Any], whose: str
) -> str | None:
    """``None`` if ``token`` verifies with a key of ``jwks`` fit for its ``alg`` (and
    ``kid``, when it names one), else why not."""
    alg, kid = header.get("alg"), header.get("kid")
    if alg not in ALGORITHMS:
        return f"alg {_shown(alg)} is not an asymmetric JWS algorithm"
    keys = list(jwk.JWKSet.from_json(json.dumps(jwks)))
    candidates = [k for k in keys if kid in (None, k.get("kid"))] or keys
    usable = [k for k in candidates if k.get("alg") in (None, alg)]
    if not usable:
        registered = sorted({str(k.get("alg")) for k in candidates})
        return f"{whose} keys are registered for {', '.join(registered)}, not {alg}"
    for key in usable:
        try:
            token.verify(key, alg=alg)
            return None
        except (JWException, ValueError, TypeError):
            continue
    return (
        f"the signature does not verify with {whose} registered keys (assertion kid {_shown(kid)}, "
        f"registered kids {', '.join(_shown(k.get('kid')) for k in keys)})"
    )


_PRIVATE_JWK_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


def _b64_thumbprint(key: jwk.JWK) -> str:
    # jwcrypto's thumbprint() is the RFC 7638 thumbprint (SHA-256 by default), base64url.
    return str(key.thumbprint())


def _same_url(htu: object, expected: str) -> bool:
    """``htu`` names ``expected``: scheme and host compared without case, query and fragment
    ignored (RFC 9449 section 4.3, point 9)."""
    if not isinstance(htu, str):
        return False
    try:
        got, want = urlsplit(htu), urlsplit(expected)
        return (got.scheme.lower(), got.hostname, got.port, got.path or "/") == (
            want.scheme.lower(),
            want.hostname,
            want.port,
            want.path or "/",
        )
    except ValueError:
        return False


_NO_FAULT = Fault(status=None, count=None)  # the server's own answer, delivered as usual


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _shown(value: object) -> str:
    """A claim or id as shown in an error description: quoted and cut short."""
    text = repr(value)
    return text if len(text) <= 66 else text[:63] + "..."


def _handler_for(server: AuthorizationServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in two writes; with Nagle on, the body waits for the
        # client's delayed ACK (~40 ms on Linux) on every kept-alive response.
        disable_nagle_algorithm = True

        def setup(self) -> None:
            super().setup()
            with server._lock:
                server._connections.add(self.connection)

        def finish(self) -> None:
            with server._lock:
                server._connections.discard(self.connection)
            with contextlib.suppress(OSError):
                super().finish()

        def log_message(self, format: str, *args: Any) -> None:
            return  # quiet: tests read counters, not logs

        def date_time_string(self, timestamp: float | None = None) -> str:
            # The Date header follows the server's (possibly skewed) clock.
            when = time.time() + server.clock_offset if timestamp is None else timestamp
            return formatdate(when, usegmt=True)

        def _send(
            self,
            status: int,
            body: bytes | str | Mapping[str, Any],
            headers: Mapping[str, str] = {},
            fault: Fault = _NO_FAULT,
        ) -> None:
            if isinstance(body, Mapping):
                payload = json.dumps(body).encode()
                content_type = "application/json"
            else:
                payload = body.encode() if isinstance(body, str) else body
                content_type = headers.get("Content-Type", "text/plain")
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Cache-Control", "no-store")
            for name, value in headers.items():
                if name.lower() != "content-type":
                    self.send_header(name, value)
            self.end_headers()
            if fault.reset_after is not None:
                self.wfile.write(payload[: fault.reset_after])
                self._reset()
                return
            if fault.slow_body > 0:
                half = len(payload) // 2
                self.wfile.write(payload[:half])
                self.wfile.flush()
                server._stopping.wait(fault.slow_body)
                payload = payload[half:]
            self.wfile.write(payload)

        def _reset(self) -> None:
            # SO_LINGER 0: close() sends RST instead of FIN, as a crashing proxy would.
            with contextlib.suppress(OSError):
                self.wfile.flush()
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.close()

        def do_GET(self) -> None:
            if self.path in ("/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"):
                self._send(200, server.metadata())
            else:
                self._send(404, {"error": "not_found"})

        def do_POST(self) -> None:
            try:
                self._token_request()
            except (BrokenPipeError, ConnectionResetError):
                # The client gave up first (its read timeout during a delay fault).
                self.close_connection = True

        def _token_request(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length).decode("utf-8", "replace")
            if self.path != server.token_path:
                self._send(404, {"error": "not_found"})
                return
            with server._lock:
                server.token_requests += 1
                number = server.token_requests
            form = parse_qs(raw, keep_blank_values=True)
            if server.on_request is not None:
                server.on_request(form)
            if server.latency:
                time.sleep(server.latency)
            fault = server._next_fault(number) or _NO_FAULT
            if fault.delay > 0:
                server._stopping.wait(fault.delay)
            if fault.drop_connection:
                self._record(0)
                self.close_connection = True
                self.connection.close()
                return
            if fault.status is not None:
                status, body, headers = fault.status, fault.body, fault.headers
            else:
                authorization = self.headers.get("Authorization")
                if server.dpop == "off":
                    status, body = server.handle_token_request(form, authorization)
                else:
                    proofs = self.headers.get_all("DPoP") or []
                    status, body = server.handle_token_request(form, authorization, dpop_proofs=proofs)
                headers = server.dpop_response_headers()
            self._record(0 if fault.reset_after is not None else status)
            self._send(status, body, headers, fault)

        def _record(self, status: int) -> None:
            with server._lock:
                server.statuses.append(status)

    return Handler
