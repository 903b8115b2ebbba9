"""``keyless-m2m certificate``: a self-signed X.509 certificate for a signer's key, signed
by the signer (the private key stays in the KMS/HSM), for servers that register
certificates rather than JWKs (Microsoft Entra ID). PEM, or JSON with the thumbprints."""

from __future__ import annotations

import argparse
import json
import os

from ..certificates import certificate_pem, certificate_thumbprint, self_signed_certificate
from ..errors import ConfigurationError
from ._exit import EXIT_OK
from ._output import out
from ._session import Session

__all__ = ["cmd_certificate"]


def _write(path: str, text: str) -> None:
    try:
        with open(os.path.expanduser(path), "w", encoding="ascii") as handle:
            handle.write(text)
    except OSError as exc:
        raise ConfigurationError(f"cannot write the certificate to {path!r}: {exc.strerror}") from None


async def cmd_certificate(args: argparse.Namespace, session: Session) -> int:
    if args.uri and args.signer and args.uri != args.signer:
        raise ConfigurationError("a certificate is for one signer: give SIGNER_URI or --signer URI, not two")
    (uri,) = session.signer_uris([args.uri] if args.uri else [], "certificate URI (or --signer URI)")
    cert = await self_signed_certificate(session.signer(uri), subject=args.subject, days=args.days)
    pem = certificate_pem(cert)
    if args.json:
        document = {
            "pem": pem,
            "x5t#S256": certificate_thumbprint(cert, "sha256"),
            "x5t": certificate_thumbprint(cert, "sha1"),
            "not_after": cert.not_valid_after_utc.isoformat().replace("+00:00", "Z"),
            "subject": cert.subject.rfc4514_string(),
        }
        text = json.dumps(document, indent=2) + "\n"
    else:
        text = pem
    if args.out:
        _write(args.out, text)
    else:
        out(text.rstrip("\n"))
    return EXIT_OK
