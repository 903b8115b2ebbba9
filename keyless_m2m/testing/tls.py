"""A throwaway certificate authority and a loopback server certificate, for test servers
that must speak HTTPS (the Azure SDK refuses plain http; transport-security tests), and
client certificates for mutual TLS (RFC 8705): :class:`TestAuthority` issues server and
client certificates from one CA, :func:`self_signed_client` makes a self-signed one."""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import ipaddress
import os
import ssl
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["ClientFiles", "TestAuthority", "loopback_tls", "self_signed_client"]


def loopback_tls(
    directory: str, host: str = "127.0.0.1", *, ca_name: str = "keyless-m2m test CA"
) -> tuple[str, ssl.SSLContext]:
    """``(CA certificate path, server SSLContext)`` for ``host`` and ``localhost``.

    Clients trust the CA file written into ``directory``; a CA plus leaf pair passes the
    strict X.509 checks newer Pythons enable, where a lone self-signed leaf may not. The
    server key never stays on disk: it lives on only inside the returned context.
    """
    ca_key = ec.generate_private_key(ec.SECP256R1())
    authority = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ca_name)])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        _certificate(authority, authority, ca_key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage("key_cert_sign", "crl_sign"), critical=True)
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    with contextlib.suppress(ValueError):
        names.append(x509.IPAddress(ipaddress.ip_address(host)))
    leaf_cert = (
        _certificate(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]), authority, leaf_key)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage("digital_signature"), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(leaf_key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path = os.path.join(directory, "test-ca.pem")
    with open(cert_path, "wb") as fh:
        fh.write(ca_cert.public_bytes(serialization.Encoding.PEM))
    server_pem = os.path.join(directory, "server.pem")
    fd = os.open(server_pem, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(leaf_cert.public_bytes(serialization.Encoding.PEM))
        fh.write(
            leaf_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(server_pem)
    finally:
        os.unlink(server_pem)  # the server key lives on only inside the context
    return cert_path, context


def _certificate(
    subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey
) -> x509.CertificateBuilder:
    """A builder for ``key``'s certificate, valid from five minutes ago for a day."""
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )


_KEY_USAGES = (
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
    "key_cert_sign",
    "crl_sign",
    "encipher_only",
    "decipher_only",
)


def _key_usage(*allowed: str) -> x509.KeyUsage:
    """A KeyUsage extension with only ``allowed`` set."""
    return x509.KeyUsage(**{usage: usage in allowed for usage in _KEY_USAGES})


# -- mutual TLS: client certificates ------------------------------------------------------------


@dataclass(frozen=True)
class ClientFiles:
    """A client certificate written to disk: ``certificate`` and ``key`` (PEM paths; the
    key encrypted when a password was given), the certificate's ``subject_dn`` (RFC 4514,
    as ``tls_client_auth_subject_dn`` registers it), ``thumbprint`` (``x5t#S256``),
    ``pem`` (the certificate) and ``der``."""

    certificate: str
    key: str
    subject_dn: str
    thumbprint: str
    pem: bytes
    der: bytes

    def jwk(self) -> dict[str, object]:
        """The public JWK of the certificate's key with ``x5c``: what a server registers
        for ``self_signed_tls_client_auth`` (RFC 8705 section 2.2)."""
        from jwcrypto import jwk

        key = jwk.JWK.from_pem(self.pem)
        public = dict(key.export_public(as_dict=True))
        public["x5c"] = [base64.b64encode(self.der).decode("ascii")]
        return public


def _write_client(
    directory: str,
    name: str,
    cert: x509.Certificate,
    key: ec.EllipticCurvePrivateKey,
    password: str | bytes | None,
) -> ClientFiles:
    pem = cert.public_bytes(serialization.Encoding.PEM)
    der = cert.public_bytes(serialization.Encoding.DER)
    cert_path = os.path.join(directory, f"{name}.crt.pem")
    key_path = os.path.join(directory, f"{name}.key.pem")
    with open(cert_path, "wb") as fh:
        fh.write(pem)
    encryption: serialization.KeySerializationEncryption = serialization.NoEncryption()
    if password is not None:
        secret = password.encode() if isinstance(password, str) else password
        encryption = serialization.BestAvailableEncryption(secret)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption))
    thumbprint = base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()
    return ClientFiles(cert_path, key_path, cert.subject.rfc4514_string(), thumbprint, pem, der)


def _client_name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "keyless-m2m tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def self_signed_client(directory: str, name: str, *, password: str | bytes | None = None) -> ClientFiles:
    """A self-signed client certificate (``self_signed_tls_client_auth``) for ``name``."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = _client_name(name)
    cert = (
        _certificate(subject, subject, key)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage("digital_signature"), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _write_client(directory, name, cert, key, password)


class TestAuthority:
    """A throwaway CA held in memory that issues a loopback server certificate
    (:meth:`server_context`) and client certificates (:meth:`issue_client`), for servers
    that verify clients by their certificate (``tls_client_auth``, RFC 8705 section 2.1).

    ``ca_file`` is the CA certificate written into ``directory`` (clients and servers
    trust it).
    """

    __test__ = False  # not a pytest test class

    def __init__(self, directory: str, *, name: str = "keyless-m2m test CA") -> None:
        self.directory = directory
        self._key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self._ski = x509.SubjectKeyIdentifier.from_public_key(self._key.public_key())
        self.certificate = (
            _certificate(self.name, self.name, self._key)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage("key_cert_sign", "crl_sign"), critical=True)
            .add_extension(self._ski, critical=False)
            .sign(self._key, hashes.SHA256())
        )
        self.ca_file = os.path.join(directory, "mtls-test-ca.pem")
        with open(self.ca_file, "wb") as fh:
            fh.write(self.certificate.public_bytes(serialization.Encoding.PEM))

    def _leaf(
        self,
        subject: x509.Name,
        key: ec.EllipticCurvePrivateKey,
        usage: x509.ObjectIdentifier,
        names: list[x509.GeneralName],
    ) -> x509.Certificate:
        builder = (
            _certificate(subject, self.name, key)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage("digital_signature"), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(self._ski), critical=False
            )
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return builder.sign(self._key, hashes.SHA256())

    def issue_client(
        self, name: str, *, password: str | bytes | None = None, dns_names: tuple[str, ...] = ()
    ) -> ClientFiles:
        """A client certificate for ``name`` (subject ``CN=name,O=keyless-m2m tests``)."""
        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
        cert = self._leaf(_client_name(name), key, ExtendedKeyUsageOID.CLIENT_AUTH, sans)
        return _write_client(self.directory, name, cert, key, password)

    def server_files(self, host: str = "127.0.0.1", *, name: str = "server") -> tuple[str, str]:
        """``(certificate, key)`` PEM paths of a server certificate for ``host`` and
        ``localhost`` (for a server in another process, e.g. Node's ``https``)."""
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = [x509.DNSName("localhost")]
        with contextlib.suppress(ValueError):
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
        cert = self._leaf(subject, key, ExtendedKeyUsageOID.SERVER_AUTH, names)
        files = _write_client(self.directory, name, cert, key, None)
        return files.certificate, files.key

    def server_context(
        self, host: str = "127.0.0.1", *, verify_clients: ssl.VerifyMode = ssl.CERT_OPTIONAL
    ) -> ssl.SSLContext:
        """A server context for ``host`` that asks for client certificates issued by this
        CA (``verify_clients``: ``CERT_OPTIONAL`` lets a client without one connect,
        ``CERT_REQUIRED`` ends the handshake without one). The server key lives only in
        the context."""
        cert_path, key_path = self.server_files(host, name="server-" + os.urandom(4).hex())
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(cert_path, key_path)
        finally:
            os.unlink(key_path)
        context.verify_mode = verify_clients
        context.load_verify_locations(cafile=self.ca_file)
        # A self-signed client certificate is trusted by adding it (trust_certificate).
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        return context
