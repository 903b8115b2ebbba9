"""SoftHSM2, a real PKCS#11 token, for the PKCS#11 signer's tests.

:func:`find_softhsm` looks for ``softhsm2-util`` and ``libsofthsm2.so`` installed by the
system (Debian's ``softhsm2``), then in the repository's ``.cache/softhsm2``. :func:`ensure_softhsm`
fills that cache without root when neither is there: ``apt-get download softhsm2
softhsm2-common libsofthsm2`` and ``dpkg-deb -x`` of each (the library needs only libcrypto
and libstdc++ at run time, which every Debian system has). CI runs it (``python -m
tests.softhsm``, from the nox tests session, and the test fixture with ``CI=true``);
elsewhere a missing SoftHSM2 skips the tests, and ``python -m tests.softhsm`` installs it.

:func:`init_token` makes a token with its own ``softhsm2.conf`` and token directory: no
system state is read or written.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "softhsm2"
PACKAGES = ("softhsm2", "softhsm2-common", "libsofthsm2")
TIMEOUT = 120.0  # seconds for one apt-get / dpkg-deb / softhsm2-util run

# Where Debian (and Fedora, Homebrew) put the module, relative to a root ("/" or the cache).
_MODULE_PLACES = (
    "usr/lib/softhsm/libsofthsm2.so",
    "usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "usr/lib64/pkcs11/libsofthsm2.so",
    "usr/local/lib/softhsm/libsofthsm2.so",
    "opt/homebrew/lib/softhsm/libsofthsm2.so",
)


@dataclass(frozen=True)
class SoftHsm:
    util: Path  # softhsm2-util
    module: Path  # libsofthsm2.so


def _in_root(root: Path) -> SoftHsm | None:
    util = root / "usr" / "bin" / "softhsm2-util"
    for place in _MODULE_PLACES:
        module = root / place
        if module.is_file() and util.is_file() and os.access(util, os.X_OK):
            return SoftHsm(util, module)
    return None


def find_softhsm() -> SoftHsm | None:
    """The system's SoftHSM2, else the one extracted into ``.cache/softhsm2``."""
    on_path = shutil.which("softhsm2-util")
    if on_path:
        system = Path(on_path).resolve().parent.parent.parent  # <root>/usr/bin/softhsm2-util
        for place in _MODULE_PLACES:
            if (system / place).is_file():
                return SoftHsm(Path(on_path), system / place)
    return _in_root(CACHE / "root")


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """One installer at a time (pytest-xdist workers and Pythons share the cache)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT, check=False)


def ensure_softhsm() -> SoftHsm:
    """SoftHSM2, installed into ``.cache/softhsm2`` from Debian's packages if need be.

    Raises ``RuntimeError`` saying why when it cannot be had (no apt-get, packages not found).
    """
    found = find_softhsm()
    if found is not None:
        return found
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise RuntimeError("SoftHSM2 is not installed and apt-get/dpkg-deb are not there to fetch it")
    with _locked():
        found = _in_root(CACHE / "root")
        if found is not None:
            return found
        debs = CACHE / "debs"
        shutil.rmtree(debs, ignore_errors=True)
        debs.mkdir(parents=True)
        download = _run("apt-get", "download", *PACKAGES, cwd=debs)
        if download.returncode != 0 and os.geteuid() == 0:
            # A fresh image may have no package lists yet; only root can fetch them.
            _run("apt-get", "update", cwd=debs)
            download = _run("apt-get", "download", *PACKAGES, cwd=debs)
        if download.returncode != 0:
            raise RuntimeError(f"apt-get download {' '.join(PACKAGES)} failed:\n{download.stderr[-2000:]}")
        staging = CACHE / "root.partial"
        shutil.rmtree(staging, ignore_errors=True)
        for deb in sorted(debs.glob("*.deb")):
            extract = _run("dpkg-deb", "-x", str(deb), str(staging), cwd=CACHE)
            if extract.returncode != 0:
                raise RuntimeError(f"dpkg-deb -x {deb.name} failed:\n{extract.stderr[-2000:]}")
        shutil.rmtree(CACHE / "root", ignore_errors=True)
        staging.rename(CACHE / "root")  # whole or not at all: a killed run leaves no half install
        shutil.rmtree(debs, ignore_errors=True)
    found = _in_root(CACHE / "root")
    if found is None:
        raise RuntimeError("the SoftHSM2 packages did not contain softhsm2-util and libsofthsm2.so")
    return found


def write_config(directory: Path) -> Path:
    """A ``softhsm2.conf`` whose tokens live in ``directory/tokens``; its path."""
    tokens = directory / "tokens"
    tokens.mkdir(parents=True, exist_ok=True)
    conf = directory / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {tokens}\nobjectstore.backend = file\n"
        "log.level = ERROR\nslots.removable = false\n",
        encoding="utf-8",
    )
    return conf


def init_token(softhsm: SoftHsm, conf: Path, *, label: str, pin: str, so_pin: str) -> None:
    """``softhsm2-util --init-token --free`` with ``SOFTHSM2_CONF=conf`` (what the docs show)."""
    result = subprocess.run(
        [
            str(softhsm.util),
            "--module",
            str(softhsm.module),
            "--init-token",
            "--free",
            "--label",
            label,
            "--pin",
            pin,
            "--so-pin",
            so_pin,
        ],
        env={**os.environ, "SOFTHSM2_CONF": str(conf)},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"softhsm2-util --init-token failed: {result.stderr[-1000:]}")


if __name__ == "__main__":
    try:
        installed = ensure_softhsm()
    except RuntimeError as exc:
        sys.exit(str(exc))
    print(f"softhsm2-util: {installed.util}\nmodule: {installed.module}")
