"""A loopback resource server that accepts DPoP-bound access tokens (RFC 9449 section 7),
for tests that drive a DPoP client against it.

It verifies every request on its own, with PyJWT and ``cryptography`` (neither jwcrypto,
which the embedded authorization server uses, nor anything of ``keyless_m2m``), so a bug
shared by the library and its test server cannot hide: the ``Authorization: DPoP`` scheme,
exactly one ``DPoP`` proof (``typ`` ``dpop+jwt``, an asymmetric ``alg``, a public ``jwk``
whose signature verifies, ``htm`` = the request method, ``htu`` = the request URL without
query and fragment, ``iat`` within ``iat_window``, a ``jti`` not seen before, ``ath`` =
base64url(SHA-256(token))), then the binding: the proof key's RFC 7638 thumbprint must be
``jkt_of(token)``. ``jkt_of`` is how it learns the binding: for the embedded
``AuthorizationServer`` its ``jkt_of`` method, for oidc-provider its introspection
endpoint's ``cnf.jkt`` (``tests/oidc_provider/clients.py``: ``AuthServer.jkt_of``)::

    with DPoPResourceServer(jkt_of=server.jkt_of, require_nonce=True) as rs:
        rs.url + "/pockets"        # http://127.0.0.1:PORT/pockets
        rs.proofs_verified         # counts; rs.records: one RequestRecord per request

Refusals are 401 with ``WWW-Authenticate: DPoP error="..."`` (``invalid_dpop_proof`` for a
bad proof, ``invalid_token`` for a token that is unknown or bound to another key or sent as
Bearer although DPoP-bound, ``use_dpop_nonce`` with a ``DPoP-Nonce`` header when
``require_nonce`` and the proof lacks the current nonce); a request without credentials, or
with a Bearer token when ``allow_bearer`` is false, gets the bare challenge
``DPoP algs="..."``. An accepted request gets 200 ``{"ok": true, "path": ..., "scheme": ...}``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

import jwt

__all__ = ["ALGS", "DPoPResourceServer", "RequestRecord", "thumbprint"]

#: The proof algorithms it accepts (and names in its challenge).
ALGS = ("ES256", "ES384", "ES512", "PS256", "PS384", "PS512", "RS256", "RS384", "RS512", "EdDSA")
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_THUMBPRINT_MEMBERS = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x")}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def thumbprint(public_jwk: dict[str, Any]) -> str:
    """The RFC 7638 SHA-256 thumbprint of a public JWK, base64url (written out here, not
    taken from a JOSE library, so that it checks theirs)."""
    members = _THUMBPRINT_MEMBERS[public_jwk["kty"]]
    canonical = json.dumps({m: public_jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    return b64url(hashlib.sha256(canonical.encode()).digest())


@dataclass(frozen=True)
class RequestRecord:
    """One request the resource server answered.

    ``outcome``: ``"ok"`` (a DPoP request accepted), ``"bearer"`` (a Bearer request accepted,
    only with ``allow_bearer``), or the error sent: ``"use_dpop_nonce"``,
    ``"invalid_dpop_proof"``, ``"invalid_token"``, ``"unauthorized"`` (no or wrong-scheme
    credentials: the bare challenge). ``reason`` says which check failed; ``jkt`` is the
    proof key's thumbprint when the proof's signature verified; ``nonce`` the proof's nonce."""

    method: str
    path: str
    scheme: str | None
    status: int
    outcome: str
    reason: str = ""
    jkt: str | None = None
    nonce: str | None = None
    replay: bool = False


class _Refusal(Exception):
    def __init__(self, error: str, reason: str, *, jkt: str | None = None, replay: bool = False) -> None:
        super().__init__(reason)
        self.error, self.reason, self.jkt, self.replay = error, reason, jkt, replay


class DPoPResourceServer:
    """See the module docstring. ``jkt_of(token)`` returns the thumbprint the token is bound
    to (``None``: unknown token or not DPoP-bound); ``require_nonce`` demands the current
    :attr:`nonce` (RFC 9449 section 9; :meth:`rotate_nonce` makes it stale);
    ``allow_bearer`` accepts Bearer tokens that ``jkt_of`` does not know as bound;
    ``iat_window`` the seconds a proof's ``iat`` may be off; ``timeout`` bounds each
    connection's reads."""

    def __init__(
        self,
        *,
        jkt_of: Callable[[str], str | None],
        require_nonce: bool = False,
        allow_bearer: bool = False,
        iat_window: float = 60.0,
        timeout: float = 5.0,
    ) -> None:
        self.jkt_of = jkt_of
        self.require_nonce = require_nonce
        self.allow_bearer = allow_bearer
        self.iat_window = iat_window
        self.records: list[RequestRecord] = []
        self._nonce = secrets.token_urlsafe(16)
        self._seen_jti: dict[str, float] = {}
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self, timeout))
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    # -- addresses and counts -------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def nonce(self) -> str:
        return self._nonce

    def rotate_nonce(self) -> str:
        with self._lock:
            self._nonce = secrets.token_urlsafe(16)
            return self._nonce

    def _count(self, predicate: Callable[[RequestRecord], bool]) -> int:
        with self._lock:
            return sum(1 for r in self.records if predicate(r))

    @property
    def proofs_verified(self) -> int:
        """Requests whose proof passed every check (and so were answered 200)."""
        return self._count(lambda r: r.outcome == "ok")

    @property
    def nonces_demanded(self) -> int:
        return self._count(lambda r: r.outcome == "use_dpop_nonce")

    @property
    def replays_refused(self) -> int:
        return self._count(lambda r: r.replay)

    def outcomes(self) -> list[str]:
        with self._lock:
            return [r.outcome for r in self.records]

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> Self:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- the checks -----------------------------------------------------------------------

    def decide(
        self, method: str, url: str, authorization: str | None, proofs: list[str]
    ) -> tuple[int, dict[str, str], dict[str, Any], RequestRecord]:
        """One request: (status, headers, JSON body, record). ``url`` is the full request URL."""
        path = urlsplit(url).path
        scheme, _, token = (authorization or "").partition(" ")
        scheme_name = scheme.lower() or None
        headers: dict[str, str] = {"DPoP-Nonce": self._nonce} if self.require_nonce else {}
        challenge = f'DPoP algs="{" ".join(ALGS)}"'
        token = token.strip()
        if scheme_name == "bearer" and token and self.allow_bearer:
            if self.jkt_of(token) is not None:  # a DPoP-bound token sent as Bearer (section 7.2)
                record = RequestRecord(
                    method, path, "bearer", 401, "invalid_token", "a DPoP-bound token as Bearer"
                )
                headers["WWW-Authenticate"] = _challenge("invalid_token", record.reason)
                return 401, headers, {"error": "invalid_token"}, record
            return (
                200,
                headers,
                {"ok": True, "path": path, "scheme": "Bearer"},
                RequestRecord(method, path, "bearer", 200, "bearer"),
            )
        if scheme_name != "dpop" or not token:
            reason = "no credentials" if scheme_name is None else f"{scheme} is not accepted here"
            headers["WWW-Authenticate"] = challenge
            return (
                401,
                headers,
                {"error": "unauthorized"},
                RequestRecord(method, path, scheme_name, 401, "unauthorized", reason),
            )
        try:
            jkt, nonce = self._check_proof(method, url, token, proofs)
        except _Refusal as refusal:
            headers["WWW-Authenticate"] = _challenge(refusal.error, refusal.reason)
            record = RequestRecord(
                method, path, "dpop", 401, refusal.error, refusal.reason, refusal.jkt, replay=refusal.replay
            )
            return 401, headers, {"error": refusal.error}, record
        return (
            200,
            headers,
            {"ok": True, "path": path, "scheme": "DPoP"},
            RequestRecord(method, path, "dpop", 200, "ok", jkt=jkt, nonce=nonce),
        )

    def _check_proof(self, method: str, url: str, token: str, proofs: list[str]) -> tuple[str, str | None]:
        def bad(reason: str, jkt: str | None = None) -> _Refusal:
            return _Refusal("invalid_dpop_proof", reason, jkt=jkt)

        if len(proofs) != 1:
            raise bad(f"{len(proofs)} DPoP headers, exactly one is required")
        proof = proofs[0]
        try:
            header = jwt.get_unverified_header(proof)
        except jwt.PyJWTError as exc:
            raise bad(f"not a compact JWS: {exc}") from None
        if header.get("typ") != "dpop+jwt":
            raise bad(f"typ {header.get('typ')!r} is not 'dpop+jwt'")
        alg = header.get("alg")
        if alg not in ALGS:
            raise bad(f"alg {alg!r} is not an accepted asymmetric algorithm")
        public = header.get("jwk")
        if not isinstance(public, dict) or public.get("kty") not in _THUMBPRINT_MEMBERS:
            raise bad("no public jwk in the header")
        if set(public) & _PRIVATE_MEMBERS:
            raise bad("the jwk has private members")
        try:
            key = jwt.PyJWK(public, algorithm=alg)
            claims = jwt.decode(
                proof,
                key=key,
                algorithms=[alg],
                options={"verify_exp": False, "verify_iat": False, "verify_nbf": False, "verify_aud": False},
            )
        except (jwt.PyJWTError, ValueError, TypeError, KeyError) as exc:
            raise bad(f"the signature does not verify with the header's jwk ({type(exc).__name__})") from None
        jkt = thumbprint(public)
        if claims.get("htm") != method:
            raise bad(f"htm {claims.get('htm')!r} is not {method!r}", jkt)
        if not isinstance(claims.get("htu"), str) or _without_query(claims["htu"]) != _without_query(url):
            raise bad(f"htu {claims.get('htu')!r} is not {_without_query(url)!r}", jkt)
        iat = claims.get("iat")
        now = time.time()
        if isinstance(iat, bool) or not isinstance(iat, int | float) or abs(iat - now) > self.iat_window:
            raise bad(f"iat {iat!r} is not within {self.iat_window:g} s of now", jkt)
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            raise bad("jti is missing", jkt)
        if claims.get("ath") != b64url(hashlib.sha256(token.encode("ascii", "replace")).digest()):
            raise bad("ath is not the hash of the access token", jkt)
        nonce = claims.get("nonce")
        if self.require_nonce and nonce != self._nonce:
            raise _Refusal("use_dpop_nonce", "missing" if nonce is None else "stale nonce", jkt=jkt)
        bound = self.jkt_of(token)
        if bound is None:
            raise _Refusal("invalid_token", "the token is unknown or not DPoP-bound", jkt=jkt)
        if bound != jkt:
            raise _Refusal("invalid_token", "the proof key is not the key the token is bound to", jkt=jkt)
        with self._lock:
            self._seen_jti = {j: t for j, t in self._seen_jti.items() if t >= now}
            if jti in self._seen_jti:
                raise _Refusal("invalid_dpop_proof", "jti has been used before", jkt=jkt, replay=True)
            self._seen_jti[jti] = float(iat) + 2 * self.iat_window
        return jkt, nonce if isinstance(nonce, str) else None

    def _record(self, record: RequestRecord) -> None:
        with self._lock:
            self.records.append(record)


def _without_query(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}{parts.path or '/'}"


def _challenge(error: str, description: str) -> str:
    cleaned = description.replace("\\", "").replace('"', "'")
    return f'DPoP error="{error}", error_description="{cleaned}", algs="{" ".join(ALGS)}"'


def _handler_for(server: DPoPResourceServer, read_timeout: float) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True
        timeout = read_timeout  # bounded reads: a stalled client cannot hold a thread

        def log_message(self, format: str, *args: Any) -> None:
            return

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(min(length, 1 << 20))
            host = self.headers.get("Host") or server.url.removeprefix("http://")
            url = f"http://{host}{self.path}"
            status, headers, body, record = server.decide(
                self.command, url, self.headers.get("Authorization"), self.headers.get_all("DPoP") or []
            )
            server._record(record)
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Cache-Control", "no-store")
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            with contextlib.suppress(OSError):
                self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _answer

    return Handler
