"""The ``Session`` of one ``keyless-m2m`` command: it builds the signers, client
authentication, HTTP clients and token managers the command asks for from its
:class:`~keyless_m2m.cli.Settings`, with the same TLS and timeout options for each, and
closes the signers at the end."""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from typing import Any

import httpx

from ..client_auth import (
    ClientAuth,
    ClientSecretBasic,
    ClientSecretPost,
    PrivateKeyJWT,
    SelfSignedTlsClientAuth,
    TlsClientAuth,
)
from ..dpop import DPoPKey
from ..errors import ConfigurationError
from ..manager import TokenManager
from ..mtls import ClientCertificate
from ..signers import Signer, signer_from_uri
from ._output import PROG
from ._settings import ENV_ISSUER, ENV_SIGNER, ENV_TOKEN_ENDPOINT, Settings

__all__ = ["Session"]


class Session:
    """Builds signers, client auth and managers from :class:`Settings`, and closes them."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._signers: dict[str, Signer] = {}
        self._certificate: ClientCertificate | None = None
        self._dpop: DPoPKey | None = None

    def client_certificate(self) -> ClientCertificate | None:
        """The TLS client certificate (``--client-cert``/``--client-key``), loaded once."""
        settings = self.settings
        if settings.client_cert is None:
            if settings.client_key is not None:
                raise ConfigurationError("--client-key needs --client-cert")
            return None
        if self._certificate is None:
            self._certificate = ClientCertificate(
                settings.client_cert, settings.client_key, password=settings.client_key_password
            )
        return self._certificate

    def signer(self, uri: str | None = None) -> Signer:
        uri = uri or self.settings.signer_uri
        if not uri:
            raise ConfigurationError(f"no signer: pass --signer URI or set {ENV_SIGNER}")
        if uri not in self._signers:
            options: dict[str, Any] = {}
            if self.settings.algorithm:
                options["algorithm"] = self.settings.algorithm
            self._signers[uri] = signer_from_uri(uri, **options)
        return self._signers[uri]

    def dpop_key(self) -> DPoPKey | None:
        """The DPoP proof key (RFC 9449): ``--dpop-key URI``'s signer (its own algorithm:
        ``--algorithm`` is the client signer's), else an ephemeral key for ``--dpop``."""
        settings = self.settings
        if self._dpop is None:
            if settings.dpop_key:
                if settings.dpop_key not in self._signers:
                    self._signers[settings.dpop_key] = signer_from_uri(settings.dpop_key)
                self._dpop = DPoPKey(self._signers[settings.dpop_key])
            elif settings.dpop:
                self._dpop = DPoPKey.generate()
        return self._dpop

    def signer_uris(self, named: Sequence[str], usage: str) -> list[str]:
        """The signer URIs a command was given, else ``KEYLESS_M2M_SIGNER``; ``usage`` is the
        command line the refusal shows when there are none."""
        uris = [uri for uri in named if uri] or (
            [self.settings.signer_uri] if self.settings.signer_uri else []
        )
        if not uris:
            raise ConfigurationError(f"name the signer: {PROG} {usage} (or set {ENV_SIGNER})")
        return uris

    def client_auth(self, *, issuer: str | None = None) -> ClientAuth:
        settings = self.settings
        client_id = settings.require_client_id()
        method = settings.method()
        if method == "private_key_jwt":
            policy = settings.assertion_aud
            aud_issuer = issuer or settings.issuer
            if policy == "issuer" and not aud_issuer:
                raise ConfigurationError(f"--assertion-aud issuer needs --issuer or {ENV_ISSUER}")
            return PrivateKeyJWT(
                client_id,
                self.signer(),
                issuer=aud_issuer if policy != "token_endpoint" else None,
                audience_policy=policy,  # type: ignore[arg-type]  # one of the parser's choices
            )
        if method in ("tls_client_auth", "self_signed_tls_client_auth"):
            kind = TlsClientAuth if method == "tls_client_auth" else SelfSignedTlsClientAuth
            return kind(client_id, self.client_certificate())
        assert settings.client_secret is not None
        if method == "client_secret_post":
            return ClientSecretPost(client_id, settings.client_secret)
        return ClientSecretBasic(client_id, settings.client_secret)

    def verify(self) -> Any:
        """``True``, or the CA bundle's path (checked here, so the message names it); a
        path, not a context, so that a client certificate can be added to what the
        library builds from it."""
        if self.settings.ca_bundle is None:
            return True
        try:
            ssl.create_default_context(cafile=self.settings.ca_bundle)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(
                f"cannot load the CA bundle {self.settings.ca_bundle!r}: {exc}"
            ) from None
        return self.settings.ca_bundle

    def endpoint_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {
            "timeout": self.settings.timeout,
            "verify": self.verify(),
            "allow_insecure_http": self.settings.allow_insecure_http,
        }
        certificate = self.client_certificate()
        if certificate is not None:
            options["client_certificate"] = certificate  # the same object TlsClientAuth holds
        dpop = self.dpop_key()
        if dpop is not None:
            options["dpop"] = dpop
        return options

    def http_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(timeout=self.settings.timeout, verify=self.verify(), follow_redirects=False)

    def manager(self, auth: ClientAuth) -> TokenManager:
        settings = self.settings
        options: dict[str, Any] = {
            "scope": settings.scope,
            "resource": settings.resources or None,
            "audience": settings.audience,
            **self.endpoint_options(),
        }
        if settings.token_endpoint:
            return TokenManager(settings.token_endpoint, auth, **options)
        if settings.issuer:
            return TokenManager.from_issuer(settings.issuer, auth, **options)
        raise ConfigurationError(
            f"no authorization server: pass --token-endpoint URL or --issuer URL "
            f"(or set {ENV_TOKEN_ENDPOINT} / {ENV_ISSUER})"
        )

    async def aclose(self) -> None:
        signers, self._signers = list(self._signers.values()), {}
        for signer in signers:
            await signer.aclose()
