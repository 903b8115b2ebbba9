"""Mutual TLS (RFC 8705): the client certificate a TLS connection presents.

:class:`ClientCertificate` holds a certificate and its private key (PEM files, the key
optionally encrypted) or an ``ssl.SSLContext`` you built with them. It serves two
purposes:

- client authentication with ``tls_client_auth`` / ``self_signed_tls_client_auth``
  (RFC 8705 section 2; :class:`~keyless_m2m.client_auth.TlsClientAuth`), and
- certificate-bound access tokens (section 3): a token obtained on a connection that
  presented the certificate carries ``cnf.x5t#S256``, and a resource server accepts it
  only on a connection that presents the same certificate. ``tokens.auth()`` sets
  headers only; the connection to the resource server needs the certificate too::

      async with httpx.AsyncClient(auth=tokens.auth(), verify=client_ssl_context(auth)) as api:
          await api.get("https://api.example/v2/pockets/")

The private key stays in the file: OpenSSL reads it when a context is built; no key byte
and no password is kept in a Python string, a ``repr``, an error or a log line. (Python's
``ssl`` module cannot use a key held in a KMS or HSM: a TLS key is a local file; keep it
short-lived.)
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import ssl
from typing import Any

from ._http import default_ssl_context, tls_verification
from ._secret import Secret
from .errors import ConfigurationError

__all__ = ["ClientCertificate", "client_certificate_of", "client_ssl_context"]

_CERTIFICATE_BLOCK = re.compile(rb"-----BEGIN CERTIFICATE-----([A-Za-z0-9+/=\s]+)-----END CERTIFICATE-----")
_MAX_PEM_BYTES = 1024 * 1024


def _wrap_password(password: object) -> Secret[bytes] | None:
    """The key's password as a :class:`Secret` of bytes (``str`` is UTF-8), or ``None``."""
    if password is None:
        return None
    value = password.reveal() if isinstance(password, Secret) else password
    if isinstance(value, str):
        return Secret(value.encode("utf-8"))
    if isinstance(value, bytes | bytearray) and value:
        return Secret(bytes(value))
    return None


def _first_certificate_der(path: str) -> bytes | str:
    """The DER of the first certificate in the PEM file ``path``, or why there is none.

    The file may hold the private key too: its text is read into a :class:`Secret` and
    nothing in this frame can raise while it is revealed (every failure is caught here
    and returned as text), so no traceback ever holds it.
    """
    try:
        with open(path, "rb") as fh:
            pem = Secret(fh.read(_MAX_PEM_BYTES))
    except OSError as exc:
        return f"cannot read it ({exc.strerror or type(exc).__name__})"
    found = der = None
    try:
        found = _CERTIFICATE_BLOCK.search(pem.reveal())
        der = base64.b64decode(b"".join(found.group(1).split())) if found is not None else None
    except (binascii.Error, ValueError):
        der = None
    del found  # the match holds the whole file's text
    if not der:
        return "it holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
    return der


def _is_encrypted_pem(path: str) -> bool:
    """Whether the PEM file ``path`` holds an encrypted private key (PKCS#8 ``ENCRYPTED
    PRIVATE KEY`` or a traditional ``Proc-Type: 4,ENCRYPTED`` header). Its text stays in a
    :class:`Secret`; nothing here raises."""
    try:
        with open(path, "rb") as fh:
            pem = Secret(fh.read(_MAX_PEM_BYTES))
    except OSError:
        return False
    return b"ENCRYPTED PRIVATE KEY-----" in pem.reveal() or b"Proc-Type: 4,ENCRYPTED" in pem.reveal()


def _ssl_reason(exc: ssl.SSLError | OSError) -> str:
    reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or type(exc).__name__
    return str(reason)[:120]


class ClientCertificate:
    """A TLS client certificate and its private key (RFC 8705).

    >>> cert = ClientCertificate("client.pem", "client.key")
    >>> cert = ClientCertificate("client.pem", "client.encrypted.key", password=pw)
    >>> cert = ClientCertificate(ssl_context=my_context)

    ``certificate``: a PEM file holding the certificate (its chain may follow, leaf first;
    the key too, then ``key`` may be left out). ``key``: a PEM file of the private key
    (PKCS#8, PKCS#1 or SEC1), encrypted with ``password`` (``str``, ``bytes`` or a
    :class:`~keyless_m2m._secret.Secret`) if it is. Both are loaded once here, so a wrong
    path, a wrong password or a key that does not match the certificate is a
    :class:`~keyless_m2m.ConfigurationError` at once; they are read again whenever an HTTP
    client is built (a rotated file is picked up by a new manager).

    ``ssl_context``: an ``ssl.SSLContext`` you built (``load_cert_chain`` and the CAs you
    trust) instead of files; it is used as it is, for verification too. Pass
    ``certificate=`` along with it to let the library know the thumbprint.

    :attr:`thumbprint` is the certificate's ``x5t#S256`` (RFC 8705 section 3.1): what a
    certificate-bound token's ``cnf`` holds and what a self-signed certificate is
    registered by.
    """

    __slots__ = ("_password", "certificate", "key", "ssl_context", "thumbprint")

    def __init__(
        self,
        certificate: str | os.PathLike[str] | None = None,
        key: str | os.PathLike[str] | None = None,
        *,
        password: str | bytes | Secret[str] | Secret[bytes] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._password = _wrap_password(password)
        if password is not None and self._password is None:
            raise ConfigurationError("password must be a non-empty str or bytes (or a Secret of one)")
        del password
        if ssl_context is not None and not isinstance(ssl_context, ssl.SSLContext):
            raise ConfigurationError("ssl_context must be an ssl.SSLContext")
        if ssl_context is None and certificate is None:
            raise ConfigurationError(
                "a client certificate needs certificate= (a PEM file) and key=, or ssl_context="
            )
        if ssl_context is not None and (key is not None or self._password is not None):
            raise ConfigurationError(
                "ssl_context= already holds the certificate and key: do not pass key= or password="
            )
        self.ssl_context = ssl_context
        self.certificate = self._path("certificate", certificate)
        self.key = self._path("key", key)
        self.thumbprint: str | None = None
        if self.certificate is not None:
            der = _first_certificate_der(self.certificate)
            if isinstance(der, str):
                raise ConfigurationError(f"the client certificate {self._shown()}: {der}")
            self.thumbprint = base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()
        if ssl_context is None:
            self.load_into(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))  # fail now, not at the first request

    @staticmethod
    def _path(name: str, value: object) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str | os.PathLike) or not os.fspath(value):
            raise ConfigurationError(f"{name} must be the path of a PEM file")
        return os.fspath(value)

    def _shown(self) -> str:
        return repr(os.path.basename(self.certificate or "")) if self.certificate else "(from ssl_context)"

    def __repr__(self) -> str:
        if self.certificate is None:
            return "ClientCertificate(ssl_context=<given>)"
        key = ", key=<file>" if self.key is not None else ""
        encrypted = ", password=<hidden>" if self._password is not None else ""
        return f"ClientCertificate(certificate={self._shown()}{key}{encrypted})"

    def __reduce__(self) -> Any:
        raise TypeError("a ClientCertificate cannot be pickled (it may hold the key's password)")

    def load_into(self, context: ssl.SSLContext) -> None:
        """Load the certificate and key into ``context`` (``load_cert_chain``); a
        :class:`~keyless_m2m.ConfigurationError` that names the file and OpenSSL's reason,
        never the password. OpenSSL never prompts on a terminal: without ``password=`` an
        encrypted key is an error."""
        if self.certificate is None:
            raise ConfigurationError("this ClientCertificate is an ssl_context: use it as it is")
        failure = self._load(context)
        if failure is not None:
            raise ConfigurationError(failure)

    def _load(self, context: ssl.SSLContext) -> str | None:
        # A callable, never the bytes: the password reaches OpenSSL without a local here,
        # and OpenSSL's own prompt (which would block a service on a terminal) never runs.
        secret = self._password
        try:
            context.load_cert_chain(
                self.certificate,  # type: ignore[arg-type]
                self.key,
                password=(lambda: secret.reveal()) if secret is not None else (lambda: b""),
            )
        except ssl.SSLError as exc:
            reason = _ssl_reason(exc)
            if "KEY_VALUES_MISMATCH" in reason:
                return f"the client key does not belong to the certificate {self._shown()}"
            encrypted = _is_encrypted_pem(self.key or self.certificate or "")
            if encrypted and secret is None:
                return f"the client key for {self._shown()} is encrypted: pass password="
            if encrypted:
                return f"cannot decrypt the client key for {self._shown()}: wrong password ({reason})"
            return f"cannot load the client certificate {self._shown()} and its key: {reason}"
        except OSError as exc:
            return f"cannot read the client certificate {self._shown()} or its key: {_ssl_reason(exc)}"
        return None

    def _context_for(self, verification: ssl.SSLContext | bool) -> ssl.SSLContext:
        """The context of a connection that presents this certificate, trusting what
        ``verification`` (the result of :func:`~keyless_m2m.endpoint.tls_verification`,
        a context made for this use only) says."""
        if self.ssl_context is not None:
            return self.ssl_context
        if verification is True:
            context = default_ssl_context()[0]
        elif verification is False:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        else:
            context = verification
        self.load_into(context)
        return context

    def ssl_context_for(self, verify: Any = True) -> ssl.SSLContext:
        """A new ``ssl.SSLContext`` that presents this certificate and trusts what ``verify``
        names (as ``TokenEndpoint(verify=...)``: ``True``, ``"system"``, a CA bundle or
        directory path, ``False``). An ``ssl.SSLContext`` is refused (load the certificate
        into it yourself); with ``ssl_context=`` that context is returned."""
        if self.ssl_context is not None:
            if verify is not True and verify is not self.ssl_context:
                raise ConfigurationError(
                    "this client certificate is an ssl_context you built, which decides whom it "
                    "trusts: do not pass verify= as well"
                )
            return self.ssl_context
        if isinstance(verify, ssl.SSLContext):
            raise ConfigurationError(
                "verify= is an ssl.SSLContext: load the client certificate into it yourself "
                "(context.load_cert_chain(...)) and pass ClientCertificate(ssl_context=context)"
            )
        return self._context_for(tls_verification(verify))


def client_certificate_of(source: object) -> ClientCertificate | None:
    """The :class:`ClientCertificate` of ``source``: itself, a client authentication's
    (``TlsClientAuth``), a token endpoint's or a token manager's; ``None`` when it has none."""
    if isinstance(source, ClientCertificate) or source is None:
        return source
    for path in (("client_certificate",), ("endpoint", "client_certificate")):
        value: Any = source
        for name in path:
            value = getattr(value, name, None)
        if isinstance(value, ClientCertificate):
            return value
    manager = getattr(source, "manager", None)  # SyncTokenManager
    return client_certificate_of(manager) if manager is not None and manager is not source else None


def client_ssl_context(source: object, verify: Any = True) -> ssl.SSLContext:
    """An ``ssl.SSLContext`` for a resource server's connection that presents the same
    client certificate as the token requests did, as certificate-bound tokens (RFC 8705
    section 3) require.

    ``source``: a :class:`ClientCertificate`, a ``TlsClientAuth`` /
    ``SelfSignedTlsClientAuth``, a ``TokenEndpoint``, a ``TokenManager`` or a
    ``SyncTokenManager``. ``verify``: whom the resource server connection trusts (as
    ``TokenEndpoint(verify=...)``). A new context every call; give it to your client::

        httpx.AsyncClient(auth=tokens.auth(), verify=client_ssl_context(tokens))
    """
    certificate = client_certificate_of(source)
    if certificate is None:
        raise ConfigurationError(
            f"{type(source).__name__} has no client certificate: use TlsClientAuth, "
            "SelfSignedTlsClientAuth or client_certificate=ClientCertificate(...)"
        )
    return certificate.ssl_context_for(verify)
