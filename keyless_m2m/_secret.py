"""Secret material held out of sight, and what a server sends back scrubbed of it.

- :class:`Secret` wraps a client secret, an assertion, a PEM or its password from the
  moment it enters the library until the bytes go on the wire. Its ``repr``/``str`` are
  redacted, so an error tracker that records the local variables of a traceback's frames
  (Sentry does by default) shows ``Secret('**********')``; it has no ``__dict__`` and its
  one slot holds a closure, so a serializer that walks an object's attributes one level
  deep finds nothing either; it refuses to be pickled.
- :class:`Redactor` knows every form in which the library sent secret material on one
  request (raw, form-encoded with either case of hex, percent-encoded, the Basic
  credential and its decoded ``id:secret`` pair, the assertion and each segment, the
  signature in standard base64) and removes all of them, longest first, plus any run of
  12 or more characters of a secret value (a server that truncates its echo), from any
  text the server returns, before it reaches an exception, a log line or a terminal.
- :func:`scrubbing_http_logs` applies the redactor to what httpx and httpcore log while
  one token request is in flight (the reason phrase, the response headers at DEBUG).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import contextvars
import hmac
import json
import logging
import re
from collections.abc import Callable, Container, Iterable, Iterator, Mapping
from typing import Any, Generic, NoReturn, TypeVar, overload
from urllib.parse import quote, quote_plus, unquote_plus

from ._text import printable

__all__ = ["REDACTED", "Redactor", "Secret", "reveal", "scrubbing_http_logs"]

T = TypeVar("T")
REDACTED = "<redacted>"
_WINDOW = 12  # a run this long of a secret value is redacted wherever it appears
_MIN_EXACT = 4  # shorter values are not redacted (they would eat ordinary words)
_SHORT_TEXT = 256  # up to this long, windows are looked up in the cores, not in a set of them
_MAX_SCAN = 64 * 1024  # text beyond this is cut before scanning (error texts are short)
_PUBLIC_FIELDS = frozenset({"client_id", "client_assertion_type"})
_PERCENT = re.compile(r"%[0-9A-F]{2}")
_UNRESERVED = re.compile(r"[A-Za-z0-9_.~-]*")  # what every encoding below leaves as it is


class Secret(Generic[T]):
    """A value that must not be shown: ``repr``/``str`` are redacted, ``.reveal()`` gives it.

    >>> secret = Secret("s3cr3t")
    >>> secret, str(secret), secret.reveal()
    (Secret('**********'), '**********', 's3cr3t')

    Two secrets compare equal when their values do (in constant time); a secret is not
    hashable, never equal to a plain value, and cannot be pickled (``TypeError``);
    ``copy.copy`` returns the same object (it is immutable).
    """

    __slots__ = ("_get",)
    _get: Callable[[], T]

    def __init__(self, value: T) -> None:
        def get() -> T:
            return value

        object.__setattr__(self, "_get", get)

    def reveal(self) -> T:
        """The value itself: call it where the value is used, never keep it in a variable
        of a frame that may raise."""
        return self._get()

    def __repr__(self) -> str:
        return "Secret('**********')"

    def __str__(self) -> str:
        return "**********"

    def __setattr__(self, name: str, value: Any) -> NoReturn:
        raise AttributeError("Secret is immutable")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        mine, theirs = self.reveal(), other.reveal()
        if isinstance(mine, str | bytes) and isinstance(theirs, str | bytes) and type(mine) is type(theirs):
            a = mine.encode() if isinstance(mine, str) else mine
            b = theirs.encode() if isinstance(theirs, str) else theirs
            return hmac.compare_digest(a, b)
        return bool(mine == theirs)

    __hash__ = None  # type: ignore[assignment]  # a hash of the value would be a digest of it

    def __reduce__(self) -> NoReturn:
        raise TypeError("a Secret cannot be pickled: pickles end up in caches, queues and logs")

    def __reduce_ex__(self, protocol: Any) -> NoReturn:
        self.__reduce__()

    def __copy__(self) -> Secret[T]:
        return self

    def __deepcopy__(self, memo: Any) -> Secret[T]:
        return self


@overload
def reveal(value: Secret[T]) -> T: ...
@overload
def reveal(value: T) -> T: ...
def reveal(value: Any) -> Any:
    """``value.reveal()`` for a :class:`Secret`, else ``value``."""
    return value.reveal() if isinstance(value, Secret) else value


def _b64url_decode(text: str) -> bytes | None:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None


def _encodings(value: str) -> Iterator[str]:
    """``value`` as a server may write it back: raw, form- or percent-encoded (either
    case of hex digits), and JSON-escaped. A value of unreserved characters only (an
    assertion, its segments, most tokens) is the same in all of them: one, at once."""
    if _UNRESERVED.fullmatch(value):
        yield value
        return
    for encoded in (value, quote_plus(value), quote(value, safe=""), quote(value)):
        yield encoded
        yield _PERCENT.sub(lambda m: m.group().lower(), encoded)
    yield json.dumps(value)[1:-1]
    yield json.dumps(value, ensure_ascii=False)[1:-1]


class Redactor:
    """Removes what one request sent from what the server sent back.

    ``exact`` values are removed wherever they appear; ``cores`` (the secret values
    themselves) also wherever a run of 12 or more of their characters appears. The values
    are held in a :class:`Secret`; the variants are computed on the first :meth:`scrub`.
    """

    __slots__ = ("_cache", "_sources", "_windows_cache")

    def __init__(self, exact: Iterable[str] = (), cores: Iterable[str] = ()) -> None:
        self._sources: Secret[tuple[tuple[str, ...], tuple[str, ...]]] = Secret((tuple(exact), tuple(cores)))
        self._cache: list[Secret[tuple[tuple[str, ...], tuple[str, ...]]]] = []
        self._windows_cache: list[Secret[frozenset[str]]] = []

    def __repr__(self) -> str:
        return "Redactor(<the credentials of one request>)"

    @classmethod
    def from_sent(cls, form: Mapping[str, Any], headers: Mapping[str, Any] = {}) -> Redactor:
        """A redactor for what a token request carries: every header and every form
        value but ``client_id`` and ``client_assertion_type``, wrapped in a
        :class:`Secret` or not (a ``ClientAuth`` of the user's may send plain ``str``)."""
        exact: list[str] = []
        cores: list[str] = []
        for name, value in [*form.items(), *headers.items()]:
            if name in _PUBLIC_FIELDS and not isinstance(value, Secret):
                continue
            text = reveal(value)
            if not isinstance(text, str):
                continue
            if name.lower() == "authorization":
                _basic_forms(text, exact, cores)
            elif name == "client_assertion":
                _assertion_forms(text, exact, cores)
            else:
                cores.append(text)
        return cls(exact, cores)

    def _variants(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The exact values (longest first) and the encodings of the cores."""
        if not self._cache:
            exact, cores = self._sources.reveal()
            forms = {value: frozenset(_encodings(value)) for value in (*exact, *cores)}
            values = frozenset().union(*forms.values())
            encoded_cores = tuple(frozenset().union(*(forms[core] for core in cores)))
            longest_first = tuple(sorted((v for v in values if len(v) >= _MIN_EXACT), key=len, reverse=True))
            self._cache.append(Secret((longest_first, encoded_cores)))
        return self._cache[0].reveal()

    def _windows(self, encoded_cores: tuple[str, ...]) -> frozenset[str]:
        """Every 12-character run of the cores' encodings, built once (for long texts)."""
        if len(self._windows_cache) == 0:
            windows = {
                encoded[i : i + _WINDOW]
                for encoded in encoded_cores
                for i in range(len(encoded) - _WINDOW + 1)
            }
            self._windows_cache.append(Secret(frozenset(windows)))
        return self._windows_cache[0].reveal()

    def scrub(self, text: str, limit: int | None = None) -> str:
        """``text`` without what was sent, with non-printable characters replaced by
        ``?`` and, with ``limit``, cut to that many characters (after redaction, so a cut
        never leaves part of a secret behind)."""
        text = text[:_MAX_SCAN]
        exact, encoded_cores = self._variants()
        for value in exact:
            if value in text:
                text = text.replace(value, REDACTED)
        if encoded_cores and len(text) >= _WINDOW:
            # A short text (a token response's members, an error code) looks each of its
            # few windows up in the cores themselves; a long one (an echoed body) in the
            # set of all their windows, built once: a token request that succeeds never
            # builds it (thousands of windows for an assertion).
            windows: Container[str] = (
                _InCores(encoded_cores) if len(text) <= _SHORT_TEXT else self._windows(encoded_cores)
            )
            text = _drop_runs(text, windows)
        return printable(text, limit)

    def scrub_data(self, value: Any, depth: int = 0) -> Any:
        """``value`` (decoded JSON) with every string scrubbed, keys included."""
        if isinstance(value, str):
            return self.scrub(value) if len(value) >= _MIN_EXACT else value
        if depth > 32:
            return None
        if isinstance(value, dict):
            return {self.scrub_data(k, depth + 1): self.scrub_data(v, depth + 1) for k, v in value.items()}
        if isinstance(value, list):
            return [self.scrub_data(v, depth + 1) for v in value]
        return value


class _InCores:
    """Whether a 12-character run occurs in one of the cores' encodings (``in``), without
    the set of all their windows."""

    __slots__ = ("_cores",)

    def __init__(self, cores: tuple[str, ...]) -> None:
        self._cores = cores

    def __repr__(self) -> str:
        return "<the cores of one request>"

    def __contains__(self, window: object) -> bool:
        return isinstance(window, str) and any(window in core for core in self._cores)


def _drop_runs(text: str, windows: Container[str]) -> str:
    """``text`` with every maximal run covered by 12-character windows in ``windows`` redacted."""
    pieces: list[str] = []
    start = i = 0
    last = len(text) - _WINDOW
    while i <= last:
        if text[i : i + _WINDOW] not in windows:
            i += 1
            continue
        end = i + _WINDOW
        while end - _WINDOW + 1 <= last and text[end - _WINDOW + 1 : end + 1] in windows:
            end += 1
        pieces += [text[start:i], REDACTED]
        start = i = end
    pieces.append(text[start:])
    return "".join(pieces)


def _basic_forms(header: str, exact: list[str], cores: list[str]) -> None:
    scheme, _, credential = header.partition(" ")
    exact += [header, credential]
    if scheme.lower() != "basic":
        cores.append(credential)
        return
    try:
        pair = base64.b64decode(credential, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        cores.append(credential)
        return
    client_id, _, secret = pair.partition(":")
    exact += [pair, f"{unquote_plus(client_id)}:{unquote_plus(secret)}"]
    exact += [credential.rstrip("="), base64.urlsafe_b64encode(pair.encode()).decode()]
    cores += [unquote_plus(secret), secret]


def _assertion_forms(assertion: str, exact: list[str], cores: list[str]) -> None:
    parts = assertion.split(".")
    exact.append(assertion)
    if len(parts) != 3:
        cores.append(assertion)
        return
    header, claims, signature = parts
    exact += [header, claims, f"{header}.{claims}"]
    cores.append(signature)
    raw = _b64url_decode(signature)
    if raw:
        standard = base64.b64encode(raw).decode()
        cores += [standard, standard.rstrip("=")]


# -- httpx / httpcore log records ----------------------------------------------------------

_ACTIVE: contextvars.ContextVar[Redactor | None] = contextvars.ContextVar(
    "keyless_m2m_redactor", default=None
)
_HTTP_LOGGERS = ("httpx", "httpcore.connection", "httpcore.http11", "httpcore.http2", "httpcore.proxy")


class _ScrubHttpLogs(logging.Filter):
    """Scrubs records of the HTTP libraries' loggers, only inside a token request's task
    (a context variable says which redactor applies); elsewhere it does nothing."""

    def filter(self, record: logging.LogRecord) -> bool:
        redactor = _ACTIVE.get()
        if redactor is not None:
            with contextlib.suppress(Exception):  # a record that cannot be formatted stays as is
                record.msg = redactor.scrub(record.getMessage())
                record.args = None
        return True


_FILTER = _ScrubHttpLogs()


@contextlib.contextmanager
def scrubbing_http_logs(redactor: Redactor) -> Iterator[None]:
    """While the block runs (in this task), httpx's and httpcore's log records are
    scrubbed by ``redactor``: they show the response's reason phrase and headers."""
    for name in _HTTP_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    token = _ACTIVE.set(redactor)
    try:
        yield
    finally:
        _ACTIVE.reset(token)
