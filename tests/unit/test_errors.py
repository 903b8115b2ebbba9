"""Every exception class survives copy and pickle (Celery result backends, multiprocessing,
pytest-xdist), with its message and attributes intact."""

from __future__ import annotations

import copy
import pickle
from typing import Any

import pytest

from keyless_m2m import errors
from keyless_m2m.errors import KeylessM2MError

CLASSES = [
    getattr(errors, name)
    for name in errors.__all__
    if isinstance(getattr(errors, name), type) and issubclass(getattr(errors, name), BaseException)
]


def sample(cls: type[KeylessM2MError]) -> KeylessM2MError:
    """An instance of ``cls`` with every attribute set away from its default."""
    if issubclass(cls, errors.MissingExtraError):
        return cls("aws", "boto3")
    if issubclass(cls, errors.RefusedWithoutReasonError):
        return cls(403, "text/html")
    if issubclass(cls, errors.TokenRequestError):
        return cls(
            "some_error",
            status_code=503,
            error_description="try later",
            error_uri="https://auth.example/e",
            retryable=not cls.retryable,
        )
    if issubclass(cls, errors.SigningError):
        return cls("kms said no", retryable=True, key="arn:aws:kms:key/1", code="Throttling")
    if issubclass(cls, errors.TransportError):
        return cls(
            "certificate verify failed: self-signed certificate", reason="tls_verification", retryable=False
        )
    if issubclass(cls, errors.InvalidTokenResponseError):
        return cls("not a token", status_code=502, retryable=True)
    if issubclass(cls, errors.AssertionSourceError):
        return cls("the platform said no", reason="refused", retryable=True, status_code=503)
    if issubclass(cls, errors.DiscoveryError):
        return cls("the metadata names another issuer", reason="issuer_mismatch", retryable=True)
    return cls(f"{cls.__name__} happened", retryable=not cls.retryable)


class SignerOwnError(errors.SigningError):
    """A user's signer error with an ``__init__`` of its own."""

    def __init__(self, vault: str, attempts: int) -> None:
        super().__init__(f"vault {vault} failed after {attempts} attempts", retryable=True)
        self.vault = vault
        self.attempts = attempts


def same(a: BaseException, b: BaseException) -> None:
    assert type(a) is type(b)
    assert str(a) == str(b) and a.args == b.args
    assert vars(a) == vars(b)
    assert getattr(a, "retryable", None) == getattr(b, "retryable", None)


def test_every_class_is_covered() -> None:
    assert len(CLASSES) >= 20
    assert errors.TransportError in CLASSES and errors.MissingExtraError in CLASSES


@pytest.mark.parametrize("cls", [*CLASSES, SignerOwnError], ids=lambda c: c.__name__)
@pytest.mark.parametrize(
    "how", ["copy", "deepcopy", *[f"pickle{p}" for p in range(pickle.HIGHEST_PROTOCOL + 1)]]
)
def test_copy_and_pickle_keep_message_and_attributes(cls: type[KeylessM2MError], how: str) -> None:
    original = SignerOwnError("vault-1", 3) if cls is SignerOwnError else sample(cls)
    clone: Any
    if how == "copy":
        clone = copy.copy(original)
    elif how == "deepcopy":
        clone = copy.deepcopy(original)
    else:
        data = pickle.dumps(original, protocol=int(how.removeprefix("pickle")))
        clone = pickle.loads(data)  # noqa: S301 - our own bytes
    same(original, clone)
    assert clone is not original


def test_transport_error_keeps_its_reason() -> None:
    clone = pickle.loads(pickle.dumps(sample(errors.TransportError)))  # noqa: S301 - our own bytes
    assert clone.reason == "tls_verification" and clone.retryable is False


@pytest.mark.parametrize("how", ["copy", "deepcopy", "pickle"])
def test_discovery_error_keeps_its_reason(how: str) -> None:
    original = sample(errors.DiscoveryError)
    if how == "copy":
        clone = copy.copy(original)
    elif how == "deepcopy":
        clone = copy.deepcopy(original)
    else:
        clone = pickle.loads(pickle.dumps(original))  # noqa: S301 - our own bytes
    assert isinstance(clone, errors.DiscoveryError)
    assert clone.reason == "issuer_mismatch" and clone.retryable is True
    assert str(clone) == "the metadata names another issuer"


def test_discovery_error_reason_defaults_to_invalid() -> None:
    error = errors.DiscoveryError("the metadata is unusable")
    assert error.reason == "invalid" and error.reason in errors.DiscoveryError.REASONS
    assert pickle.loads(pickle.dumps(error)).reason == "invalid"  # noqa: S301 - our own bytes


def test_missing_extra_keeps_its_names() -> None:
    data = pickle.dumps(errors.MissingExtraError("gcp", "google.cloud.kms"))
    clone = pickle.loads(data)  # noqa: S301 - our own bytes
    assert (clone.extra, clone.module) == ("gcp", "google.cloud.kms")
    assert "pip install 'keyless-m2m[gcp]'" in str(clone)


def test_a_copy_keeps_the_cause_but_not_the_traceback() -> None:
    """What the token manager needs to hand one shared error to many waiters: each raise
    of a copy grows the copy's traceback, never the shared one's."""
    cause = errors.SigningError("kms down", retryable=True)
    try:
        try:
            raise cause
        except errors.SigningError as exc:
            raise errors.ServerError("server_error", status_code=500) from exc
    except errors.ServerError as exc:
        shared = exc
    clone = copy.copy(shared)
    same(shared, clone)
    assert clone.__cause__ is cause and clone.__suppress_context__
    assert clone.__traceback__ is None and shared.__traceback__ is not None
