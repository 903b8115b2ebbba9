"""A signer whose key lives in a PKCS#11 token: an on-premises or cloud HSM (Thales Luna,
Entrust nShield, YubiHSM 2, AWS CloudHSM, Google Cloud HSM's PKCS#11 library) or SoftHSM2.

The private key never leaves the token: ``describe()`` reads the public half (the token's
public key object, else the private key's public attributes) and ``sign()`` asks the token
to sign. python-pkcs11 is synchronous, so every call runs in a worker thread under a
capacity limiter; a cancelled caller is released at once.

Process-wide state, because PKCS#11 is process-wide: each module (``.so``) is loaded and
``C_Initialize``d once per path, and each token has one bounded pool of sessions logged in
as its user, shared by every signer of that token in the process (a PKCS#11 login belongs
to the application, not to one session, so two pools of one token could not log in twice).

python-pkcs11 initialises a module with ``C_Initialize(NULL)``, which tells it (PKCS#11
section 5.4) that the application will not call it from several threads at once; SoftHSM2
then runs without its own locks, and concurrent signatures fail with CKR_GENERAL_ERROR. So
every call into one module is made under that module's lock: worker threads keep the event
loop free, and calls into one module are serialised (0.05-2 ms each in SoftHSM2).
"""

from __future__ import annotations

import ctypes.util
import functools
import hmac
import logging
import os
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, unquote_to_bytes, urlsplit

import anyio
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from .._jose import Algorithm, PublicKey, choose_algorithm, jws_algorithm, key_family
from .._secret import Secret
from ..errors import ConfigurationError, KeylessM2MError, SigningError
from ._base import (
    CachedDescriptionSigner,
    KeyDescription,
    check_max_concurrency,
    ensure_kid,
    import_extra,
    run_blocking,
)

if TYPE_CHECKING:
    from types import ModuleType

__all__ = ["PIN_ENVIRONMENT_VARIABLE", "Pkcs11Signer", "parse_pkcs11_uri"]

logger = logging.getLogger("keyless_m2m")

#: The environment variable read for the token's user PIN when no ``pin=``/``pin_source=``.
PIN_ENVIRONMENT_VARIABLE = "KEYLESS_M2M_PKCS11_PIN"
#: The environment variable read for the module path when neither URI nor argument give one.
MODULE_ENVIRONMENT_VARIABLE = "KEYLESS_M2M_PKCS11_MODULE"

_DEFAULT_MAX_CONCURRENCY = 4  # sessions per token; HSM partitions allow few, SoftHSM many
_SESSION_WAIT = 30.0  # seconds a worker waits for a free session before giving up
_MAX_PIN_FILE = 4096

# RFC 7512 section 2.3: path attributes and the query attributes this backend reads.
_PATH_ATTRIBUTES = frozenset(
    {"token", "manufacturer", "serial", "model", "object", "id", "type", "slot-id", "library-manufacturer",
     "library-description", "library-version", "slot-description", "slot-manufacturer"}
)  # fmt: skip
_IGNORED_PATH_ATTRIBUTES = frozenset(
    {
        "library-manufacturer",
        "library-description",
        "library-version",
        "slot-description",
        "slot-manufacturer",
    }
)
_QUERY_ATTRIBUTES = frozenset(
    {"module-path", "module-name", "pin-source", "pin-value", "x-require-non-extractable"}
)
_TRUE = frozenset({"1", "true", "yes"})
_FALSE = frozenset({"0", "false", "no"})

# CKA_EC_PARAMS (DER) -> (JWK family, curve): the named-curve OIDs, and Ed25519 both as its
# OID (RFC 8410) and as the PrintableString "edwards25519" of PKCS#11 3.0.
_EC_PARAMS: dict[bytes, tuple[str, str]] = {
    bytes.fromhex("06082a8648ce3d030107"): ("EC", "P-256"),
    bytes.fromhex("06052b81040022"): ("EC", "P-384"),
    bytes.fromhex("06052b81040023"): ("EC", "P-521"),
    bytes.fromhex("06032b6570"): ("OKP", "Ed25519"),
    b"\x13\x0cedwards25519": ("OKP", "Ed25519"),
}
_CURVES: dict[str, ec.EllipticCurve] = {
    "P-256": ec.SECP256R1(),
    "P-384": ec.SECP384R1(),
    "P-521": ec.SECP521R1(),
}
_POINT_SIZES = {"P-256": 65, "P-384": 97, "P-521": 133, "Ed25519": 32}

# python-pkcs11 exception class -> (retryable, the session is gone, hint). Matched by name:
# the module is imported lazily, and a name table reads like the PKCS#11 return codes.
_ERRORS: dict[str, tuple[bool, str]] = {
    "PinIncorrect": (False, "the token's user PIN is wrong; repeated wrong PINs lock the token"),
    "PinLocked": (False, "the user PIN is locked; the token's security officer must unlock it"),
    "PinExpired": (False, "the user PIN has expired; set a new one"),
    "PinInvalid": (False, "the PIN has characters the token refuses"),
    "PinLenRange": (False, "the PIN is too short or too long for this token"),
    "UserPinNotInitialized": (
        False,
        "the token's user PIN was never set (softhsm2-util --init-token sets it)",
    ),
    "SessionHandleInvalid": (True, "the session was closed by the token; a new one is opened"),
    "SessionClosed": (True, "the session was closed by the token; a new one is opened"),
    "UserNotLoggedIn": (True, "the login was lost; the next session logs in again"),
    "DeviceRemoved": (True, "the token was removed"),
    "TokenNotPresent": (True, "the token is not present"),
    "DeviceError": (True, "the device reported an error"),
    "DeviceMemory": (True, "the device is out of memory"),
    "SessionCount": (True, "the token allows no more sessions; lower max_concurrency"),
    "FunctionFailed": (True, "the token failed to sign"),
    "MechanismInvalid": (False, "the token does not support this mechanism: pick another algorithm="),
    "MechanismParamInvalid": (False, "the token refuses this mechanism's parameters"),
    "KeyTypeInconsistent": (False, "the key cannot be used with this mechanism"),
}

_warned_extractable: set[tuple[str, bytes, str]] = set()
_warned_lock = threading.Lock()


# -- RFC 7512 URIs ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pkcs11Uri:
    """A parsed ``pkcs11:`` URI: path attributes (``id`` as bytes) and query attributes."""

    path: Mapping[str, str | bytes] = field(default_factory=dict)
    query: Mapping[str, str] = field(default_factory=dict, repr=False)


def _attributes(text: str, separator: str, known: frozenset[str], where: str) -> dict[str, str | bytes]:
    found: dict[str, str | bytes] = {}
    for item in text.split(separator) if text else ():
        name, equals, value = item.partition("=")
        name = name.strip().lower()
        if not equals or not name:
            raise ConfigurationError(f"a pkcs11 URI's {where} attributes look like NAME=VALUE")
        if name not in known and not name.startswith("x-"):
            # Only the name is shown: a value may be a secret pasted in the wrong place.
            raise ConfigurationError(
                f"unknown pkcs11 URI {where} attribute {name!r}; known: {', '.join(sorted(known))}"
            )
        if name in found:
            raise ConfigurationError(f"the pkcs11 URI gives the {where} attribute {name!r} twice")
        found[name] = unquote_to_bytes(value) if name == "id" else unquote(value, errors="strict")
    return found


def parse_pkcs11_uri(uri: str) -> Pkcs11Uri:
    """Split a ``pkcs11:`` URI (RFC 7512) into its path and query attributes.

    >>> parse_pkcs11_uri("pkcs11:token=ci;object=m2m;id=%01?module-path=/lib/p11.so").path
    {'token': 'ci', 'object': 'm2m', 'id': b'\\x01'}
    """
    if not isinstance(uri, str) or not uri[:7].lower() == "pkcs11:":
        raise ConfigurationError(
            "a PKCS#11 signer URI looks like pkcs11:token=LABEL;object=LABEL?module-path=..."
        )
    body = uri[7:]
    path, _, query = body.partition("?")
    path = path.partition("#")[0]
    query = query.partition("#")[0]
    try:
        query_attributes = _attributes(query, "&", _QUERY_ATTRIBUTES, "query")
        path_attributes = _attributes(path, ";", _PATH_ATTRIBUTES, "path")
    except UnicodeDecodeError:
        raise ConfigurationError("a pkcs11 URI attribute is not valid UTF-8 after percent-decoding") from None
    return Pkcs11Uri(path_attributes, {k: str(v) for k, v in query_attributes.items()})


def _flag(value: str, name: str) -> bool:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigurationError(f"the pkcs11 URI's {name} must be true or false")


def _pin_file(source: str | os.PathLike[str]) -> Path:
    """The path of a ``pin-source`` (a path or a ``file:`` URI; RFC 7512 section 2.4)."""
    text = os.fspath(source)
    if text.lower().startswith("file:"):
        parts = urlsplit(text)
        if parts.netloc not in ("", "localhost"):
            raise ConfigurationError("pin-source must be a local file (file:///path or a path)")
        return Path(unquote(parts.path))
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", text) or text.startswith("|"):
        raise ConfigurationError(
            "pin-source must be a file path or a file: URI (no programs, no other schemes)"
        )
    return Path(text)


def _read_pin_file(source: str | os.PathLike[str]) -> Secret[str]:
    path = _pin_file(source)
    try:
        with path.open("rb") as handle:
            data = handle.read(_MAX_PIN_FILE + 1)
    except OSError as exc:
        raise ConfigurationError(f"cannot read the PIN file {path} ({type(exc).__name__})") from None
    if len(data) > _MAX_PIN_FILE:
        raise ConfigurationError(f"the PIN file {path} is larger than {_MAX_PIN_FILE} bytes")
    try:
        # One trailing newline is the file's, not the PIN's (echo PIN > file).
        return Secret(data.decode("utf-8").removesuffix("\n").removesuffix("\r"))
    except UnicodeDecodeError:
        raise ConfigurationError(f"the PIN file {path} is not UTF-8") from None


def _resolve_module(module_path: str | os.PathLike[str] | None, module_name: str | None) -> str:
    if module_path is not None and module_name is not None:
        raise ConfigurationError("give module-path or module-name, not both")
    if module_name is not None:
        if not re.fullmatch(r"[A-Za-z0-9_.+-]+", module_name):
            raise ConfigurationError("module-name is a library name without a directory, e.g. softhsm2")
        found = ctypes.util.find_library(module_name.removeprefix("lib").removesuffix(".so"))
        if found is None:
            raise ConfigurationError(
                f"no PKCS#11 module named {module_name!r} on the library search path; give module-path="
            )
        return found
    if module_path is None:
        module_path = os.environ.get(MODULE_ENVIRONMENT_VARIABLE) or None
    if module_path is None:
        raise ConfigurationError(
            f"no PKCS#11 module: pass module_path=, add ?module-path=... to the URI, or set "
            f"{MODULE_ENVIRONMENT_VARIABLE}"
        )
    path = Path(os.fspath(module_path))
    if not path.is_absolute():
        raise ConfigurationError(f"the PKCS#11 module path must be absolute, not {str(path)!r}")
    if not path.is_file():
        raise ConfigurationError(
            f"the PKCS#11 module {path} does not exist (is the vendor's client installed?)"
        )
    return str(path)


# -- process-wide modules and session pools --------------------------------------------------------

_modules: dict[str, Any] = {}
_module_locks: dict[str, threading.Lock] = {}  # one per module: see the module docstring
_pools: dict[tuple[str, bytes, str], _SessionPool] = {}
_registry_lock = threading.Lock()


def _load_module(pkcs11: ModuleType, path: str) -> Any:
    """The ``pkcs11.lib`` of ``path``, loaded and initialised once per process and never
    unloaded (``C_Finalize`` would end every other user's sessions)."""
    real = os.path.realpath(path)
    with _registry_lock:
        lib = _modules.get(real)
        if lib is None:
            try:
                lib = pkcs11.lib(real)
            except pkcs11.exceptions.PKCS11Error as exc:
                raise ConfigurationError(
                    f"cannot load the PKCS#11 module {path} ({type(exc).__name__}): not a PKCS#11 library, "
                    "or its dependencies are missing"
                ) from None
            _modules[real] = lib
            _module_locks[real] = threading.Lock()
        return lib


def _module_lock(path: str) -> threading.Lock:
    return _module_locks[os.path.realpath(path)]


class _Lease:
    """One session of a pool, with the key objects found in it (handles are per session
    in python-pkcs11's API)."""

    __slots__ = ("keys", "session")

    def __init__(self, session: Any) -> None:
        self.session = session
        self.keys: dict[Any, Any] = {}


class _SessionPool:
    """At most ``max_sessions`` open sessions of one token, handed to one worker thread at a
    time. The first session logs in as the token's user; the login holds for every session
    of the process while any is open, so later sessions open without the PIN."""

    def __init__(self, token: Any, pin: Secret[str], name: str, module_lock: threading.Lock) -> None:
        self._token = token
        self.module_lock = module_lock
        self._pin = pin
        self.name = name
        self.max_sessions = 0
        self.users = 0
        self._idle: list[_Lease] = []
        self._open = 0
        self._closed = False
        self._condition = threading.Condition()
        self.opened = 0  # sessions opened so far (for tests and diagnostics)

    def same_pin(self, pin: Secret[str]) -> bool:
        return hmac.compare_digest(self._pin.reveal().encode(), pin.reveal().encode())

    def acquire(self, timeout: float = _SESSION_WAIT) -> _Lease:
        with self._condition:
            if not self._condition.wait_for(
                lambda: self._idle or self._open < self.max_sessions or self._closed, timeout
            ):
                raise SigningError(
                    f"no free PKCS#11 session on {self.name} after {timeout:.0f}s",
                    retryable=True,
                    key=self.name,
                )
            if self._closed:
                raise SigningError(f"the PKCS#11 session pool of {self.name} is closed", key=self.name)
            if self._idle:
                return self._idle.pop()
            login = self._open == 0
            self._open += 1
        try:
            return _Lease(self._open_session(login))
        except BaseException:
            with self._condition:
                self._open -= 1
                self._condition.notify()
            raise

    def _open_session(self, login: bool) -> Any:
        with self.module_lock:
            return self._open_locked(login)

    def _open_locked(self, login: bool) -> Any:
        if login:
            try:
                session = self._token.open(user_pin=self._pin.reveal())
            except Exception as exc:
                if type(exc).__name__ != "UserAlreadyLoggedIn":  # logged in by other code of the process
                    raise
                session = self._token.open()
        else:
            session = self._token.open()
        self.opened += 1
        return session

    def release(self, lease: _Lease, *, lost: bool = False) -> None:
        with self._condition:
            if lost or self._closed:
                self._open -= 1
            else:
                self._idle.append(lease)
            self._condition.notify()
        if lost or self._closed:
            with self.module_lock:
                _close_quietly(lease.session)

    def close(self) -> None:
        with self._condition:
            self._closed = True
            idle, self._idle = self._idle, []
            self._open -= len(idle)
            self._condition.notify_all()
        with self.module_lock:
            for lease in idle:
                _close_quietly(lease.session)


def _close_quietly(session: Any) -> None:
    try:
        session.close()
    except Exception as exc:  # a session the token already dropped
        logger.debug("closing a PKCS#11 session failed: %s", type(exc).__name__)


# -- the signer -------------------------------------------------------------------------------------


def _read_bool(key: Any, attribute: Any) -> bool | None:
    """A boolean attribute, or ``None`` when the token does not say: python-pkcs11 raises
    (AttributeSensitive, AttributeTypeInvalid) where PyKCS11 returns ``None``, and either
    means "unknown", never "false"."""
    try:
        value = key[attribute]
    except Exception:
        return None
    return value if isinstance(value, bool) else None


def _der_octet_string(data: bytes) -> bytes:
    """The content of a DER OCTET STRING (CKA_EC_POINT), or ``data`` itself when a token
    returns the raw point (some PKCS#11 2.20 modules do)."""
    if len(data) >= 2 and data[0] == 0x04:
        length, offset = data[1], 2
        if length & 0x80:
            count = length & 0x7F
            length, offset = int.from_bytes(data[2 : 2 + count], "big"), 2 + count
        if offset + length == len(data):
            return data[offset:]
    return data


class Pkcs11Signer(CachedDescriptionSigner):
    """Signs with a private key held in a PKCS#11 token.

    (These two examples are skipped when the documentation's examples run: the module and
    the PIN file they name must exist; the signer's own tests run it against SoftHSM2.)

    >>> signer = Pkcs11Signer("/usr/lib/softhsm/libsofthsm2.so", token_label="ci",  # doctest: +SKIP
    ...                       label="m2m", pin_source="/run/secrets/pkcs11-pin")
    >>> signer = signer_from_uri(                                                   # doctest: +SKIP
    ...     "pkcs11:token=ci;object=m2m?module-path=/usr/lib/softhsm/libsofthsm2.so"
    ...     "&pin-source=/run/secrets/pkcs11-pin")

    The token is chosen by ``token_label``, ``token_serial`` and/or ``slot_id``; the key by
    ``label`` (``CKA_LABEL``) and/or ``object_id`` (``CKA_ID``, bytes); exactly one private
    key must match. The user PIN comes from ``pin=`` (a ``str`` or ``Secret``), else the file
    ``pin_source=``, else ``KEYLESS_M2M_PKCS11_PIN``; it is held in a :class:`Secret` and never
    shown. Keys: RSA (RS256 by default; RS384/512, PS256/384/512 on request), EC P-256/384/521
    (ES256/384/512), Ed25519 (EdDSA).

    The key must have ``CKA_SIGN``. A key the token says is extractable (``CKA_EXTRACTABLE``
    true or ``CKA_SENSITIVE`` false) is logged once as a warning; with
    ``require_non_extractable=True`` it is refused, and so is a key whose token does not say.
    ``max_concurrency`` bounds this signer's worker threads and the token's session pool
    (shared by the signers of one token in the process, as large as the largest asked for).
    """

    def __init__(
        self,
        module_path: str | os.PathLike[str] | None = None,
        *,
        module_name: str | None = None,
        token_label: str | None = None,
        token_serial: str | None = None,
        slot_id: int | None = None,
        label: str | None = None,
        object_id: bytes | None = None,
        pin: str | Secret[str] | None = None,
        pin_source: str | os.PathLike[str] | None = None,
        algorithm: str | None = None,
        key_id: str | None = None,
        require_non_extractable: bool = False,
        max_concurrency: int = _DEFAULT_MAX_CONCURRENCY,
    ) -> None:
        self._pkcs11 = import_extra("pkcs11", "pkcs11")
        self._module = _resolve_module(module_path, module_name)
        if token_label is None and token_serial is None and slot_id is None:
            raise ConfigurationError(
                "name the token: token_label=, token_serial= or slot_id= (URI: token=...)"
            )
        if label is None and object_id is None:
            raise ConfigurationError("name the key: label= or object_id= (URI: object=... or id=...)")
        if slot_id is not None and (isinstance(slot_id, bool) or not isinstance(slot_id, int) or slot_id < 0):
            raise ConfigurationError("slot_id must be a non-negative integer")
        if object_id is not None and not isinstance(object_id, bytes):
            raise ConfigurationError("object_id is the key's CKA_ID as bytes")
        if algorithm is not None:
            jws_algorithm(algorithm)
        if not isinstance(require_non_extractable, bool):
            raise ConfigurationError("require_non_extractable must be True or False")
        self._max_concurrency = check_max_concurrency(max_concurrency)
        self._token_label = token_label
        self._token_serial = token_serial
        self._slot_id = slot_id
        self._label = label
        self._object_id = object_id
        self._requested_alg = algorithm
        self._key_id = ensure_kid(key_id)
        self._strict = require_non_extractable
        self._pin = self._resolve_pin(pin, pin_source)
        self._limiter: anyio.CapacityLimiter | None = None
        self._pool: _SessionPool | None = None
        self._closed = False

    @staticmethod
    def _resolve_pin(pin: str | Secret[str] | None, pin_source: str | os.PathLike[str] | None) -> Secret[str]:
        if pin is not None and pin_source is not None:
            raise ConfigurationError("pass pin= or pin_source=, not both")
        if isinstance(pin, Secret):
            if not isinstance(pin.reveal(), str):
                raise ConfigurationError("pin must be a string")
            return pin
        if pin is not None:
            if not isinstance(pin, str):
                raise ConfigurationError("pin must be a string")
            return Secret(pin)
        if pin_source is not None:
            return _read_pin_file(pin_source)
        if os.environ.get(PIN_ENVIRONMENT_VARIABLE):
            return Secret(os.environ[PIN_ENVIRONMENT_VARIABLE])
        raise ConfigurationError(
            f"no PIN for the PKCS#11 token: pass pin= or pin_source=, add ?pin-source=FILE to the URI, "
            f"or set {PIN_ENVIRONMENT_VARIABLE}"
        )

    @classmethod
    def from_uri(cls, uri: str, **options: Any) -> Pkcs11Signer:
        """``pkcs11:token=LABEL;object=LABEL[;id=%01][;serial=S][;slot-id=N]
        ?module-path=/path/lib.so[&pin-source=FILE][&x-require-non-extractable=true]``.

        ``pin-value`` is refused: a PIN in a URI ends up in logs, shell history and process
        lists. ``module-name=NAME`` looks the library up on the loader's search path.
        ``options`` (``pin=``, ``algorithm=``, ``key_id=``, ``max_concurrency=``...) go through.
        """
        parsed = parse_pkcs11_uri(uri)
        path, query = parsed.path, parsed.query
        if "pin-value" in query:
            raise ConfigurationError(
                f"pkcs11 URIs must not carry the PIN (pin-value): use pin-source=FILE, pin=, or set "
                f"{PIN_ENVIRONMENT_VARIABLE}"
            )
        if path.get("type", "private") != "private":
            raise ConfigurationError("a pkcs11 signer URI names a private key (type=private, or no type)")
        if path.get("manufacturer") is not None or path.get("model") is not None:
            raise ConfigurationError(
                "the pkcs11 URI's manufacturer/model attributes are not supported; use token="
            )
        mapping = {
            "token": "token_label",
            "serial": "token_serial",
            "object": "label",
            "id": "object_id",
            "module-path": "module_path",
            "module-name": "module_name",
            "pin-source": "pin_source",
        }
        given: dict[str, Any] = {}
        for attribute, value in [*path.items(), *query.items()]:
            vendor_path = attribute.startswith("x-") and attribute not in query
            if attribute in _IGNORED_PATH_ATTRIBUTES or vendor_path:
                continue
            if attribute == "slot-id":
                if not isinstance(value, str) or not value.isdigit():
                    raise ConfigurationError("the pkcs11 URI's slot-id must be a decimal number")
                given["slot_id"] = int(value)
            elif attribute == "x-require-non-extractable":
                given["require_non_extractable"] = _flag(str(value), attribute)
            elif attribute in mapping:
                given[mapping[attribute]] = value
        for keyword in given:
            if keyword in options:
                raise ConfigurationError(f"{keyword} is given both in the URI and as {keyword}=")
        if "pin" in options and "pin_source" in given:
            raise ConfigurationError("the PIN is given both as pin-source in the URI and as pin=")
        module_path = given.pop("module_path", options.pop("module_path", None))
        return cls(module_path, **given, **options)

    @property
    def key_name(self) -> str:
        token = self._token_label or self._token_serial or f"slot {self._slot_id}"
        key = self._label if self._label is not None else (self._object_id or b"").hex()
        return f"pkcs11:{token}/{key}"

    @property
    def sessions_opened(self) -> int:
        """How many sessions the token's pool has opened (0 before first use)."""
        return self._pool.opened if self._pool is not None else 0

    def __repr__(self) -> str:
        alg = self._description.algorithm if self._description else "?"
        return f"{type(self).__name__}(key={self.key_name!r}, alg={alg})"

    async def aclose(self) -> None:
        """Leave the token's session pool; the last signer of a token closes its sessions."""
        if self._closed:
            return
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is not None:
            await run_blocking(functools.partial(_detach, pool))

    # -- blocking work ---------------------------------------------------------------------------

    def _pool_for(self) -> _SessionPool:
        if self._pool is not None:
            return self._pool
        if self._closed:
            raise ConfigurationError(f"the signer of {self.key_name} was closed")
        pkcs11 = self._pkcs11
        lib = _load_module(pkcs11, self._module)
        with _module_lock(self._module):
            token = self._find_token(lib)
        key = (os.path.realpath(self._module), bytes(token.serial or b""), str(token.label))
        with _registry_lock:
            pool = _pools.get(key)
            if pool is None:
                pool = _pools[key] = _SessionPool(
                    token, self._pin, f"pkcs11:{token.label}", _module_lock(self._module)
                )
            elif not pool.same_pin(self._pin):
                raise ConfigurationError(
                    f"another signer in this process is logged in to token {token.label!r} with a different "
                    "PIN; one process has one login per token"
                )
            pool.users += 1
            pool.max_sessions = max(pool.max_sessions, self._max_concurrency)
        self._pool = pool
        return pool

    def _find_token(self, lib: Any) -> Any:
        errors = self._pkcs11.exceptions
        try:
            if self._slot_id is not None:
                slots = [s for s in lib.get_slots(token_present=True) if s.slot_id == self._slot_id]
                if not slots:
                    raise errors.NoSuchToken()
                token = slots[0].get_token()
                if (self._token_label is not None and token.label != self._token_label) or (
                    self._token_serial is not None and _serial(token) != self._token_serial
                ):
                    raise errors.NoSuchToken()
                return token
            matches = [
                t
                for t in lib.get_tokens(token_label=self._token_label)
                if self._token_serial is None or _serial(t) == self._token_serial
            ]
        except errors.NoSuchToken:
            matches = []
        except errors.PKCS11Error as exc:
            raise self._error("list the tokens", exc) from None
        if not matches:
            raise SigningError(
                f"no PKCS#11 token matches {self._token_description()} in {Path(self._module).name} "
                "(check the token label / serial / slot-id and that the token is initialised)",
                key=self.key_name,
                code="no_such_token",
            )
        if len(matches) > 1:
            raise ConfigurationError(f"several PKCS#11 tokens match {self._token_description()}; add serial=")
        return matches[0]

    def _token_description(self) -> str:
        parts = [
            f"{name}={value!r}"
            for name, value in (
                ("token", self._token_label),
                ("serial", self._token_serial),
                ("slot-id", self._slot_id),
            )
            if value is not None
        ]
        return ", ".join(parts)

    def _in_session(self, work: Callable[[_Lease], Any]) -> Any:
        """Run ``work`` with a session of the pool (in a worker thread); a session the token
        lost is closed and not returned to the pool."""
        pool = self._pool_for()
        lease = pool.acquire()
        lost = False
        try:
            with pool.module_lock:
                return work(lease)
        except Exception as exc:
            # Any PKCS#11 failure retires the session: python-pkcs11 leaves an operation that
            # failed to start holding the session's lock, so the session could not sign again.
            lost = isinstance(exc, self._pkcs11.exceptions.PKCS11Error)
            raise
        finally:
            pool.release(lease, lost=lost)

    def _private_key(self, lease: _Lease) -> Any:
        lookup = (self._label, self._object_id)  # leases are shared by the signers of one token
        key = lease.keys.get(lookup)
        if key is not None:
            return key
        pkcs11 = self._pkcs11
        attributes: dict[Any, Any] = {pkcs11.Attribute.CLASS: pkcs11.ObjectClass.PRIVATE_KEY}
        if self._label is not None:
            attributes[pkcs11.Attribute.LABEL] = self._label
        if self._object_id is not None:
            attributes[pkcs11.Attribute.ID] = self._object_id
        found = list(lease.session.get_objects(attributes))
        if not found:
            raise SigningError(
                f"no private key {self._object_description()} on token {self._token_description()} "
                "(check the object label / id, and that the PIN is the user's, who can see private objects)",
                key=self.key_name,
                code="no_such_object",
            )
        if len(found) > 1:
            raise ConfigurationError(
                f"{len(found)} private keys match {self._object_description()}; "
                "add id= to the URI (object_id=)"
            )
        key = lease.keys[lookup] = found[0]
        return key

    def _object_description(self) -> str:
        parts = []
        if self._label is not None:
            parts.append(f"object={self._label!r}")
        if self._object_id is not None:
            parts.append(f"id={self._object_id.hex()}")
        return ", ".join(parts)

    def _public_key(self, lease: _Lease, private: Any) -> PublicKey:
        pkcs11 = self._pkcs11
        attribute = pkcs11.Attribute
        key_type = private[attribute.KEY_TYPE]
        if key_type == pkcs11.KeyType.RSA:
            modulus = int.from_bytes(private[attribute.MODULUS], "big")
            exponent = int.from_bytes(private[attribute.PUBLIC_EXPONENT], "big")
            return rsa.RSAPublicNumbers(exponent, modulus).public_key()
        if key_type not in (pkcs11.KeyType.EC, pkcs11.KeyType.EC_EDWARDS):
            raise ConfigurationError(
                f"key {self.key_name} is a {pkcs11.KeyType(key_type).name} key; JWS needs RSA, EC or Ed25519"
            )
        family_curve = _EC_PARAMS.get(bytes(private[attribute.EC_PARAMS]))
        if family_curve is None:
            raise ConfigurationError(f"key {self.key_name} is on a curve JWS has no algorithm for")
        family, curve = family_curve
        point = _der_octet_string(bytes(self._ec_point(lease, private)))
        if len(point) != _POINT_SIZES[curve]:
            raise SigningError(
                f"the token returned a malformed public point for {self.key_name}", key=self.key_name
            )
        if family == "OKP":
            return ed25519.Ed25519PublicKey.from_public_bytes(point)
        try:
            return ec.EllipticCurvePublicKey.from_encoded_point(_CURVES[curve], point)
        except ValueError:
            raise SigningError(
                f"the token returned a public point off the curve for {self.key_name}", key=self.key_name
            ) from None

    def _ec_point(self, lease: _Lease, private: Any) -> bytes:
        """CKA_EC_POINT of the public key object with the private key's CKA_ID (else label)."""
        pkcs11 = self._pkcs11
        attribute = pkcs11.Attribute
        match: dict[Any, Any] = {attribute.CLASS: pkcs11.ObjectClass.PUBLIC_KEY}
        key_id = _read_bytes(private, attribute.ID)
        if key_id:
            match[attribute.ID] = key_id
        elif self._label is not None:
            match[attribute.LABEL] = self._label
        candidates = list(lease.session.get_objects(match))
        # Compared by curve, not bytes: SoftHSM2 gives an Ed25519 private key the name
        # "edwards25519" and its public key the OID 1.3.101.112.
        curve = _EC_PARAMS.get(bytes(private[attribute.EC_PARAMS]))
        points = {
            bytes(c[attribute.EC_POINT])
            for c in candidates
            if _EC_PARAMS.get(bytes(c[attribute.EC_PARAMS])) == curve
        }
        if len(points) != 1:
            raise ConfigurationError(
                f"the token holds {'no' if not points else 'more than one'} public key object for the EC key "
                f"{self.key_name} (same CKA_ID, else CKA_LABEL); import the public key next to it"
            )
        return points.pop()

    def _check_key(self, private: Any) -> None:
        attribute = self._pkcs11.Attribute
        if _read_bool(private, attribute.SIGN) is not True:
            raise ConfigurationError(
                f"key {self.key_name} does not have CKA_SIGN (it cannot sign); create it with CKA_SIGN=true"
            )
        extractable = _read_bool(private, attribute.EXTRACTABLE)
        sensitive = _read_bool(private, attribute.SENSITIVE)
        if extractable is False and sensitive is True:
            return
        if extractable is True or sensitive is False:
            finding = (
                "is extractable: its private half can leave the token "
                "(CKA_EXTRACTABLE true or CKA_SENSITIVE false)"
            )
        else:
            finding = "does not say whether it is extractable (CKA_EXTRACTABLE / CKA_SENSITIVE unreadable)"
        if self._strict:
            raise ConfigurationError(
                f"key {self.key_name} {finding}; require_non_extractable=True refuses it. "
                "Generate the key in the "
                "token with CKA_EXTRACTABLE=false and CKA_SENSITIVE=true"
            )
        warned = (self._module, bytes(_read_bytes(private, attribute.ID) or b""), self.key_name)
        with _warned_lock:
            if warned in _warned_extractable:
                return
            _warned_extractable.add(warned)
        logger.warning(
            "PKCS#11 key %s %s; pass require_non_extractable=True "
            "(URI: x-require-non-extractable=true) to refuse such keys",
            self.key_name,
            finding,
        )

    def _describe_blocking(self) -> KeyDescription:
        def work(lease: _Lease) -> KeyDescription:
            private = self._private_key(lease)
            self._check_key(private)
            public_key = self._public_key(lease, private)
            alg = choose_algorithm(*key_family(public_key), self._requested_alg, key=self.key_name)
            return KeyDescription.for_public_key(public_key, alg.name, self._key_id)

        description: KeyDescription = self._call_blocking("read the key", work)
        return description

    def _sign_blocking(self, alg: Algorithm, signing_input: bytes) -> bytes:
        pkcs11 = self._pkcs11
        mechanism, parameter, data = _mechanism(pkcs11, alg, signing_input)

        def work(lease: _Lease) -> bytes:
            signature = self._private_key(lease).sign(data, mechanism=mechanism, mechanism_param=parameter)
            return bytes(signature)

        result: bytes = self._call_blocking("sign", work)
        return result

    def _call_blocking(self, operation: str, work: Callable[[_Lease], Any]) -> Any:
        try:
            return self._in_session(work)
        except KeylessM2MError:
            raise
        except self._pkcs11.exceptions.PKCS11Error as exc:
            error = self._error(operation, exc)
        raise error from None

    def _error(self, operation: str, exc: Exception) -> KeylessM2MError:
        code = type(exc).__name__
        retryable, hint = _ERRORS.get(code, (False, ""))
        if code in ("MechanismInvalid", "MechanismParamInvalid", "KeyTypeInconsistent"):
            return ConfigurationError(f"the token cannot {operation} with {self.key_name}: {code} ({hint})")
        # python-pkcs11's messages are dropped: they may quote the arguments of the call.
        return SigningError(
            f"PKCS#11 failed to {operation} with {self.key_name}: {code}" + (f" ({hint})" if hint else ""),
            retryable=retryable,
            key=self.key_name,
            code=code,
        )

    # -- async surface ---------------------------------------------------------------------------

    def _limiter_for(self) -> anyio.CapacityLimiter:
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self._max_concurrency)
        return self._limiter

    async def _load_description(self) -> KeyDescription:
        return await run_blocking(self._describe_blocking, self._limiter_for())

    async def _sign(self, alg: Algorithm, signing_input: bytes) -> bytes:
        return await run_blocking(
            functools.partial(self._sign_blocking, alg, signing_input), self._limiter_for()
        )


def _serial(token: Any) -> str:
    serial = token.serial
    return serial.decode("ascii", "replace").strip() if isinstance(serial, bytes) else str(serial).strip()


def _read_bytes(key: Any, attribute: Any) -> bytes | None:
    try:
        value = key[attribute]
    except Exception:
        return None
    return bytes(value) if isinstance(value, bytes | bytearray) else None


def _detach(pool: _SessionPool) -> None:
    with _registry_lock:
        pool.users -= 1
        if pool.users > 0:
            return
        for key, value in list(_pools.items()):
            if value is pool:
                del _pools[key]
    pool.close()


def _mechanism(pkcs11: ModuleType, alg: Algorithm, signing_input: bytes) -> tuple[Any, Any, bytes]:
    """(mechanism, parameter, data) for one JWS signature.

    ECDSA hashes on the host and signs the digest with CKM_ECDSA (SoftHSM2 and several HSMs
    lack CKM_ECDSA_SHA256/384), whose output is already the raw ``r || s`` of JWS. PSS uses
    MGF1 with the same hash and a salt as long as the hash (RFC 7518 section 3.5).
    """
    mechanism = pkcs11.Mechanism
    suffix = {"sha256": "SHA256", "sha384": "SHA384", "sha512": "SHA512"}.get(alg.hash_name or "", "")
    if alg.family == "RSA":
        if alg.padding == "pss":
            parameter = (getattr(mechanism, suffix), getattr(pkcs11.MGF, suffix), alg.digest_size)
            return getattr(mechanism, f"{suffix}_RSA_PKCS_PSS"), parameter, signing_input
        return getattr(mechanism, f"{suffix}_RSA_PKCS"), None, signing_input
    if alg.family == "EC":
        return mechanism.ECDSA, None, alg.digest(signing_input)
    return mechanism.EDDSA, None, signing_input
