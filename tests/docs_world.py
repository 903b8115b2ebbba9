"""The world the documentation's examples run in (tests/integration/test_docs_run.py).

The examples name hosts a reader recognises (``https://auth.example``,
``https://api.example``) and are run exactly as written. They reach loopback doubles by
the two standard environment variables every HTTP client here honours, the way a client
behind a corporate proxy does, so that nothing in the examples' code is patched:

- ``HTTPS_PROXY`` names :class:`RoutingProxy`, a forward proxy on 127.0.0.1 that tunnels
  ``CONNECT auth.example:443`` to the loopback port serving that name (``NO_PROXY`` keeps
  127.0.0.1 direct, for the test doubles the hidden setup talks to);
- ``SSL_CERT_FILE`` (and ``REQUESTS_CA_BUNDLE``, which requests reads instead) names the CA
  of :class:`DocsAuthority`, which issued the doubles' certificates for those names, so TLS
  is verified end to end as in production.

Behind them: :class:`PublicAuthorizationServer` (the embedded test-kit server over TLS,
whose issuer is the public name the example uses) and :class:`ResourceServer` (an API
that answers any GET and records the ``Authorization`` headers it saw). A document's
hidden setup (``<!-- invisible-code-block: python -->``) calls :class:`DocsWorld`'s
methods; every server a document starts is stopped after it (:meth:`DocsWorld.reset`).
"""

from __future__ import annotations

import json
import os
import ssl
import threading
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from keyless_m2m.signers import KeyDescription
from keyless_m2m.testing.mtls_server import MutualTlsAuthorizationServer
from keyless_m2m.testing.tls import TestAuthority
from tests.loopback_proxy import LoopbackProxy
from tests.moto_server import MotoServer, running_moto_server
from tests.redis_server import RedisServer, require_redis_server
from tests.vault_server import VaultServer
from tests.vault_server import running_server as running_vault

__all__ = [
    "HOSTS",
    "DocsAuthority",
    "DocsWorld",
    "PublicAuthorizationServer",
    "ResourceServer",
    "RoutingProxy",
]

#: The names the examples use; the doubles' certificate covers them all.
HOSTS = ("auth.example", "api.example", "keycloak.example", "platform.example")


class DocsAuthority(TestAuthority):
    """A throwaway CA whose server certificates name :data:`HOSTS` (and 127.0.0.1)."""

    __test__ = False

    def server_context(
        self, host: str = "127.0.0.1", *, verify_clients: ssl.VerifyMode = ssl.CERT_OPTIONAL
    ) -> ssl.SSLContext:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOSTS[0])])
        names: list[x509.GeneralName] = [x509.DNSName(h) for h in HOSTS]
        cert = self._leaf(subject, key, ExtendedKeyUsageOID.SERVER_AUTH, names)
        cert_path = Path(self.directory, f"docs-server-{os.urandom(4).hex()}.pem")
        cert_path.write_bytes(
            cert.public_bytes(serialization.Encoding.PEM)
            + key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(cert_path)
        finally:
            cert_path.unlink()
        context.verify_mode = verify_clients
        context.load_verify_locations(cafile=self.ca_file)
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        return context


class PublicAuthorizationServer(MutualTlsAuthorizationServer):
    """The embedded authorization server over TLS (client certificates optional), known by
    a public name: its issuer is ``public`` (``https://auth.example``), so discovery, the
    assertion's ``aud`` and the metadata all carry the name the example uses."""

    def __init__(self, authority: TestAuthority, *, public: str, **options: Any) -> None:
        self.public = public.rstrip("/")
        super().__init__(authority, **options)

    @property
    def issuer(self) -> str:
        return self.public

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])


class ResourceServer:
    """An HTTPS API on 127.0.0.1 that answers every GET with ``{"pockets": []}`` when a
    token is presented (401 without one) and records each ``Authorization`` header."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.authorizations: list[str] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_GET(self) -> None:
                authorization = self.headers.get("Authorization")
                status = 401 if authorization is None else 200
                if authorization is not None:
                    api.authorizations.append(authorization)
                body = json.dumps({"pockets": []} if status == 200 else {"error": "invalid_token"}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        class TlsServer(ThreadingHTTPServer):
            daemon_threads = True

            def get_request(self) -> tuple[Any, Any]:
                sock, peer = super().get_request()
                return context.wrap_socket(sock, server_side=True), peer

            def handle_error(self, request: Any, client_address: Any) -> None:
                return

        self._httpd = TlsServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def start(self) -> ResourceServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


class RoutingProxy(LoopbackProxy):
    """:class:`~tests.loopback_proxy.LoopbackProxy` that also tunnels the names in
    :attr:`routes` (``{"auth.example": 40123}``) to that loopback port, whatever port
    the client asked for; every other non-loopback name is refused (403)."""

    def __init__(self) -> None:
        super().__init__()
        self.routes: dict[str, int] = {}

    def _target(self, hostport: str) -> tuple[str, int] | None:
        host = hostport.rpartition(":")[0].lower()
        port = self.routes.get(host)
        if port is not None:
            return "127.0.0.1", port
        return super()._target(hostport)


class DocsWorld:
    """The session's proxy, CA and API; a document's authorization servers and files.

    Hidden setup in a document calls :meth:`authorization_server` and :meth:`client_key`.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.authority = DocsAuthority(str(directory))
        self.proxy = RoutingProxy()
        self.api = ResourceServer(self.authority.server_context())
        self._servers: list[PublicAuthorizationServer] = []
        self.server: PublicAuthorizationServer | None = None
        self.monkeypatch: pytest.MonkeyPatch | None = None  # the running document's
        self._session = ExitStack()  # servers started on first use (moto_server, ...)
        self._moto: MotoServer | None = None
        self._redis: RedisServer | None = None
        self._vault: VaultServer | None = None
        self._vault_keys: list[str] = []

    @property
    def environment(self) -> Mapping[str, str]:
        return {
            "HTTPS_PROXY": self.proxy.url,
            "NO_PROXY": "127.0.0.1,localhost",
            "SSL_CERT_FILE": self.authority.ca_file,
            "REQUESTS_CA_BUNDLE": self.authority.ca_file,  # requests reads this one, not SSL_CERT_FILE
        }

    @contextmanager
    def running(self) -> Iterator[DocsWorld]:
        with self.proxy:
            self.api.start()
            self.proxy.routes["api.example"] = self.api.port
            try:
                with self._session:
                    try:
                        yield self
                    finally:
                        self.reset()
            finally:
                self.api.stop()

    def enter(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Give the running document the environment (undone with ``monkeypatch``)."""
        for name, value in self.environment.items():
            monkeypatch.setenv(name, value)
        self.monkeypatch = monkeypatch
        # aiohttp builds its default verifying SSL context once, when it is first imported,
        # from the environment of that moment (an earlier test in this worker may have
        # imported it): a document's aiohttp session gets one built under the CA above.
        import aiohttp.connector

        fresh = aiohttp.connector._make_ssl_context(True)
        monkeypatch.setattr(aiohttp.connector, "_SSL_CONTEXT_VERIFIED", fresh)

    def setenv(self, name: str, value: str) -> None:
        """Set an environment variable for the running document only."""
        assert self.monkeypatch is not None
        self.monkeypatch.setenv(name, value)

    def authorization_server(
        self, public: str = "https://auth.example", **options: Any
    ) -> PublicAuthorizationServer:
        """Start the embedded server as ``public`` (``token_path=``, ``dpop=``, ... as
        :class:`~keyless_m2m.testing.AuthorizationServer` takes them) and route its name."""
        server = PublicAuthorizationServer(self.authority, public=public, **options).start()
        self._servers.append(server)
        self.proxy.routes[public.removeprefix("https://").split("/")[0]] = server.port
        self.server = server
        return server

    def client_key(self, client_id: str, path: str = "private_key.pem", *, curve: str = "Ed25519") -> str:
        """Write a new private key to ``path`` (the document runs in a fresh temporary
        directory) and register its public key for ``client_id``; returns the path."""
        key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey = (
            ed25519.Ed25519PrivateKey.generate()
            if curve == "Ed25519"
            else ec.generate_private_key(ec.SECP256R1())
        )
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        Path(path).write_bytes(pem)
        assert self.server is not None, "start an authorization_server() first"
        from jwcrypto import jwk

        public = json.loads(jwk.JWK.from_pem(pem).export_public())
        self.server.register_client(client_id, public_jwk=public)
        return path

    def register(self, client_id: str, public_key: Any, algorithm: str) -> None:
        """Register ``public_key`` (a cryptography public key) for ``client_id``."""
        assert self.server is not None, "start an authorization_server() first"
        description = KeyDescription.for_public_key(public_key, algorithm)
        self.server.register_client(client_id, public_jwk=description.public_jwk)

    def aws_kms(self, *aliases: str, key_spec: str = "ECC_NIST_P256", client_id: str | None = None) -> str:
        """A key in moto_server (started once per session) named by ``aliases``, and the
        environment an AWS SDK reads (``AWS_ENDPOINT_URL``, ``AWS_REGION``, dummy
        credentials); its public key registered for ``client_id``. Returns its ARN."""
        import boto3
        from cryptography.hazmat.primitives.serialization import load_der_public_key

        if self._moto is None:
            self._moto = self._session.enter_context(running_moto_server(self.directory))
        for name, value in {
            "AWS_ENDPOINT_URL": self._moto.endpoint,
            "AWS_REGION": "eu-west-1",
            "AWS_DEFAULT_REGION": "eu-west-1",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
        }.items():
            self.setenv(name, value)
        kms = boto3.client("kms")
        try:
            key = kms.create_key(KeySpec=key_spec, KeyUsage="SIGN_VERIFY")["KeyMetadata"]
            for alias in aliases:
                kms.create_alias(AliasName=alias, TargetKeyId=key["KeyId"])
            if client_id is not None:
                der = kms.get_public_key(KeyId=key["KeyId"])["PublicKey"]
                algorithm = {"ECC_NIST_P256": "ES256", "RSA_2048": "RS256", "RSA_3072": "RS256"}[key_spec]
                self.register(client_id, load_der_public_key(der), algorithm)
        finally:
            kms.close()
        return str(key["Arn"])

    def platform_token(
        self, client_id: str, path: str, *, subject: str = "system:serviceaccount:default:app"
    ) -> str:
        """A workload platform (issuer ``https://platform.example``) the current server
        trusts for ``client_id``, and the JWT it gives the workload, written to ``path``."""
        import time

        import jwt

        from keyless_m2m.testing.authorization_server import FederatedCredential

        assert self.server is not None, "start an authorization_server() first"
        key = ec.generate_private_key(ec.SECP256R1())
        description = KeyDescription.for_public_key(key.public_key(), "ES256")
        issuer = "https://platform.example"
        self.server.register_client(
            client_id,
            federated=FederatedCredential(
                issuer=issuer,
                jwks={"keys": [dict(description.public_jwk)]},
                subject=subject,
                audience=self.server.issuer,
            ),
        )
        now = int(time.time())
        claims = {"iss": issuer, "sub": subject, "aud": self.server.issuer, "iat": now, "exp": now + 600}
        Path(path).write_text(jwt.encode(claims, key, algorithm="ES256", headers={"kid": description.key_id}))
        return path

    def vault_transit(self, name: str, *, client_id: str, versions: int = 1) -> None:
        """A transit key ``name`` (ecdsa-p256, ``versions`` versions) in an OpenBao dev
        server (started once per session), ``VAULT_ADDR``/``VAULT_TOKEN`` naming it; the
        latest version's public key registered for ``client_id``."""
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        if self._vault is None:
            self._vault = self._session.enter_context(running_vault("openbao", self.directory))
        self.setenv("VAULT_ADDR", self._vault.url)
        self.setenv("VAULT_TOKEN", self._vault.token)
        transit = self._vault.admin.secrets.transit
        transit.create_key(name, key_type="ecdsa-p256")
        for _ in range(versions - 1):
            transit.rotate_key(name)
        keys = transit.read_key(name)["data"]["keys"]
        self.register(client_id, load_pem_public_key(keys[str(versions)]["public_key"].encode()), "ES256")
        self._vault_keys.append(name)

    def redis_url(self) -> str:
        """A redis-server on loopback (started once per session, flushed after each
        document), named by ``REDIS_URL`` for the running document."""
        if self._redis is None:
            self._redis = RedisServer(require_redis_server()).start()
            self._session.callback(self._redis.close)
        self.setenv("REDIS_URL", self._redis.url)
        return self._redis.url

    def reset(self) -> None:
        """Stop the document's servers and forget its routes (the API stays)."""
        for server in self._servers:
            server.stop()
        self._servers.clear()
        self.server = None
        self.proxy.routes = {"api.example": self.api.port}
        if self._vault is not None:
            transit = self._vault.admin.secrets.transit
            for name in self._vault_keys:
                transit.update_key_configuration(name, deletion_allowed=True)
                transit.delete_key(name)
            self._vault_keys.clear()
        if self._redis is not None:
            import redis

            with redis.Redis.from_url(self._redis.url) as client:
                client.flushall()
        if self._moto is not None:  # a fresh moto for the next document: no keys, no aliases
            import urllib.request

            reset = urllib.request.Request(self._moto.endpoint + "/moto-api/reset", method="POST")  # noqa: S310 - loopback
            urllib.request.urlopen(reset, timeout=10).close()  # noqa: S310 - loopback moto_server
