"""Every Python block in README.md and docs/ runs, as a reader sees it (Sybil).

One test per document: its blocks run in order in one namespace, in a fresh temporary
directory, with the environment of :mod:`tests.docs_world` (``HTTPS_PROXY`` and
``SSL_CERT_FILE`` route the example hosts to loopback doubles). A block with top-level
``await`` / ``async with`` is compiled with ``PyCF_ALLOW_TOP_LEVEL_AWAIT`` and awaited in
the document's one event loop (an anyio blocking portal, so what one block opens the next
can use); the other blocks run in the test's thread, where ``anyio.run(main)`` works as
in a script. Hidden setup is ``<!-- invisible-code-block: python -->``; a block that
cannot run says why in ``<!-- skip: next "reason" -->`` next to it. The test counts the
visible blocks that ran and fails if a fenced Python block was neither run nor skipped.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import doctest
import inspect
import re
import types
import unittest
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from sybil import Document, Example, Sybil
from sybil.document import PythonDocument
from sybil.evaluators.doctest import DocTestEvaluator
from sybil.example import NotEvaluated
from sybil.parsers.abstract import DocTestStringParser
from sybil.parsers.markdown import PythonCodeBlockParser, SkipParser

from tests.docs_world import DocsWorld

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
MODULES = sorted(p for p in (ROOT / "keyless_m2m").rglob("*.py") if ">>>" in p.read_text())


def _cases(paths: list[Path]) -> list[Any]:
    """One case per file, the files taking asyncio and trio in turn: both event loops run
    examples at the cost of one run per file (every file passed on both when this was written)."""
    cases = []
    for i, path in enumerate(paths):
        name = path.relative_to(ROOT).as_posix()
        backend = "asyncio" if name in ASYNCIO_ONLY else ("asyncio", "trio")[i % 2]
        cases.append(pytest.param(path, backend, id=f"{name}-{backend}"))
    return cases


#: Files whose examples need asyncio itself (grpc.aio, aiohttp).
ASYNCIO_ONLY = {
    "keyless_m2m/integrations/grpc.py",
    "keyless_m2m/integrations/aiohttp.py",
    "docs/integrations/aiohttp.md",
}


FENCE = re.compile(r"^```python\s*$", re.MULTILINE)
SKIP_NEXT = re.compile(r"^<!-- skip: next ", re.MULTILINE)
PROMPT = re.compile(r"^\s*>>> ", re.MULTILINE)

pytestmark = pytest.mark.integration


class AwaitingEvaluator:
    """Sybil's Python evaluator, plus top-level ``await``: a block that compiles to a
    coroutine is awaited in :attr:`portal`'s event loop."""

    portal: BlockingPortal | None = None

    def __call__(self, example: Example) -> None:
        __tracebackhide__ = True
        source = "\n" * (example.line + example.parsed.line_offset) + example.parsed
        code = compile(source, example.path, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)
        if code.co_flags & inspect.CO_COROUTINE:
            assert self.portal is not None

            async def run() -> None:
                await eval(code, example.namespace)  # noqa: S307 - the documentation's own code

            self.portal.call(run)
        else:
            exec(code, example.namespace)  # noqa: S102 - the documentation's own code
        example.namespace.pop("__builtins__", None)


EVALUATOR = AwaitingEvaluator()


class AwaitingDocTestEvaluator(DocTestEvaluator):
    """Sybil's doctest evaluator, plus top-level ``await``: an example that compiles to a
    coroutine runs as ``__docs_await__()``, which awaits it in the document's event loop
    (what it prints, the value of an expression included, is still compared)."""

    def __call__(self, sybil_example: Example) -> str:
        __tracebackhide__ = True
        example = sybil_example.parsed
        flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
        code = compile(example.source, sybil_example.path, "single", flags=flags, dont_inherit=True)
        if not code.co_flags & inspect.CO_COROUTINE:
            return super().__call__(sybil_example)
        namespace = sybil_example.namespace
        portal = EVALUATOR.portal
        assert portal is not None

        async def run() -> None:
            await eval(code, namespace)  # noqa: S307 - the docstring's own example

        namespace["__docs_await__"] = lambda: portal.call(run)
        awaited = copy.copy(example)
        awaited.source = "__docs_await__()\n"
        proxy = types.SimpleNamespace(parsed=awaited, namespace=namespace, path=sybil_example.path)
        try:
            return super().__call__(proxy)  # type: ignore[arg-type]
        finally:
            namespace.pop("__docs_await__", None)


DOCTEST_EVALUATOR = AwaitingDocTestEvaluator(doctest.ELLIPSIS)


class DocstringParser:
    """The ``>>>`` examples of a module's docstrings."""

    def __init__(self) -> None:
        self.string_parser = DocTestStringParser(DOCTEST_EVALUATOR)

    def __call__(self, document: Document) -> Any:
        return self.string_parser(document.text, document.path)


class Parser(PythonCodeBlockParser):
    def __init__(self) -> None:
        super().__init__()
        self.codeblock_parser._evaluator = EVALUATOR  # type: ignore[attr-defined]


SYBIL = Sybil(parsers=[Parser(), SkipParser()], path=str(ROOT))
DOCSTRINGS = Sybil(parsers=[DocstringParser()], path=str(ROOT))

#: A module's hidden setup: what its docstring examples take as given (a signer, a
#: secret, files, an authorization server...), run in its namespace before its first
#: example; and its teardown, run after its last.
_KEYS = """
from pathlib import Path
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from keyless_m2m.signers import LocalSigner

def _pem(key, password=None):
    encryption = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)

Path("private_key.pem").write_bytes(_pem(ec.generate_private_key(ec.SECP256R1())))
Path("rsa.pem").write_bytes(_pem(rsa.generate_private_key(65537, 2048)))
signer = LocalSigner.from_pem_file("private_key.pem")
"""
_CLIENT_CERTIFICATE = """
import shutil, ssl
from keyless_m2m.testing.tls import TestAuthority

_client = TestAuthority(".").issue_client("billing")
shutil.copy(_client.certificate, "client.pem")
shutil.copy(_client.key, "client.key")
pw = "a-key-password"
_encrypted = TestAuthority(".").issue_client("billing-encrypted", password=pw)
shutil.copy(_encrypted.certificate, "client.pem")
shutil.copy(_encrypted.key, "client.encrypted.key")
shutil.copy(_client.certificate, "client.pem")
_encrypted_key = serialization.load_pem_private_key(Path("client.key").read_bytes(), None)
Path("client.encrypted.key").write_bytes(_pem(_encrypted_key, pw.encode()))
context = my_context = ssl.create_default_context()
context.load_cert_chain("client.pem", "client.key")
"""
_CLIENT = """
world.client_key("my-client")
import httpx
from keyless_m2m import PrivateKeyJWT, TokenManager
auth = PrivateKeyJWT("my-client", LocalSigner.from_pem_file("private_key.pem"))
url = "https://auth.example/oauth2/token"
"""
_SERVER = 'world.authorization_server(token_path="/oauth2/token")' + _CLIENT
DOCSTRING_SETUP: dict[str, str] = {
    "keyless_m2m/client_auth.py": _KEYS + _CLIENT_CERTIFICATE + 'secret = "a-client-secret"',
    "keyless_m2m/mtls.py": _KEYS + _CLIENT_CERTIFICATE,
    "keyless_m2m/signers/local.py": _KEYS,
    "keyless_m2m/certificates.py": _KEYS,
    "keyless_m2m/signers/aws.py": 'world.aws_kms("alias/payments-m2m")',
    "keyless_m2m/signers/vault.py": """
import hvac
world.setenv("VAULT_ADDR", "http://127.0.0.1:8200")
token = "a-vault-token"
""",
    "keyless_m2m/signers/gcp.py": """
from google.auth.credentials import AnonymousCredentials
my_credentials = AnonymousCredentials()
""",
    "keyless_m2m/assertions.py": """
world.setenv("AZURE_FEDERATED_TOKEN_FILE", "token")
world.setenv("ACTIONS_ID_TOKEN_REQUEST_URL", "https://token.actions.example/?api-version=2.0")
world.setenv("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "not-a-real-request-token")
""",
    "keyless_m2m/bearer.py": _KEYS + _SERVER + "tokens = TokenManager(url, auth)",
    "keyless_m2m/cache/__init__.py": _KEYS + _SERVER,
    "keyless_m2m/cache/redis.py": _KEYS + _SERVER + "key = RedisTokenCache.generate_key()",
    "keyless_m2m/discovery.py": _KEYS + _SERVER,
    "keyless_m2m/dpop.py": _KEYS
    + 'world.authorization_server(token_path="/oauth2/token", dpop="optional")'
    + _CLIENT,
    "keyless_m2m/endpoint.py": _KEYS + _SERVER,
    "keyless_m2m/manager/_core.py": _KEYS + _SERVER + "signer = auth.signer",
    "keyless_m2m/sync.py": """
world.authorization_server(token_path="/oauth2/token").register_client("id", client_secret="secret")
from keyless_m2m import ClientSecretBasic
""",
    "keyless_m2m/testing/clock.py": """
from keyless_m2m import TokenManager
from keyless_m2m.testing.endpoints import OfflineTokenEndpoint
tokens = TokenManager(endpoint=OfflineTokenEndpoint())
""",
    "keyless_m2m/testing/contract.py": """
import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from keyless_m2m.signers import KeyDescription, LocalSigner

_key = ec.generate_private_key(ec.SECP256R1())
signer_description = KeyDescription.for_public_key(_key.public_key(), "ES256")
assertion = jwt.encode({"iss": "svc", "sub": "svc", "aud": "https://auth.example/token"}, _key,
                       algorithm="ES256", headers={"kid": signer_description.key_id})
""",
    "keyless_m2m/testing/emulators/azure_key_vault.py": "vault = FakeKeyVault().start()",
    "keyless_m2m/testing/emulators/gcp_kms.py": "kms = FakeCloudKms().start()",
    "keyless_m2m/signers/_base.py": """
from cryptography.hazmat.primitives.asymmetric import ec

async def load_description():
    return KeyDescription.for_public_key(ec.generate_private_key(ec.SECP256R1()).public_key(), "ES256")
""",
}
DOCSTRING_SETUP["keyless_m2m/integrations/grpc.py"] = (
    _KEYS
    + _SERVER
    + """
import grpc
from keyless_m2m import SyncTokenManager
tokens, sync_tokens = TokenManager(url, auth), SyncTokenManager(url, auth)
"""
)
_INTEGRATION = _KEYS + _SERVER + "token_endpoint, client_auth = url, auth\n"
DOCSTRING_SETUP["keyless_m2m/integrations/requests.py"] = (
    _INTEGRATION + "import requests\nfrom keyless_m2m import SyncTokenManager"
)
DOCSTRING_SETUP["keyless_m2m/integrations/aiohttp.py"] = _INTEGRATION + "import aiohttp"
DOCSTRING_TEARDOWN: dict[str, str] = {
    "keyless_m2m/integrations/opentelemetry.py": "kotel.uninstrument()",
    "keyless_m2m/integrations/grpc.py": """
channel.close()
await tokens.aclose()
sync_tokens.close()
""",
    "keyless_m2m/bearer.py": "await tokens.aclose()",
    "keyless_m2m/cache/__init__.py": "await tokens.aclose()",
    "keyless_m2m/cache/redis.py": "await tokens.aclose()",
    "keyless_m2m/endpoint.py": "await endpoint.aclose()",
    "keyless_m2m/testing/clock.py": "await tokens.aclose()",
    "keyless_m2m/testing/emulators/azure_key_vault.py": "vault.stop()",
    "keyless_m2m/testing/emulators/gcp_kms.py": "kms.stop()",
}


@pytest.fixture(scope="session")
def docs_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DocsWorld]:
    world = DocsWorld(tmp_path_factory.mktemp("docs-world"))
    with world.running():
        yield world


def _visible(example: Example) -> bool:
    return example.document.text.startswith("```", example.region.start)


def run_document(path: Path, world: DocsWorld, backend: str) -> tuple[int, int]:
    """Run ``path``'s examples; ``(ran, skipped)`` of the visible Python blocks (of a
    Markdown file) or of the ``>>>`` examples (of a module's docstrings)."""
    module = path.suffix == ".py"
    document = (DOCSTRINGS if module else SYBIL).parse(path)
    ran = skipped = 0
    with start_blocking_portal(backend) as portal:
        EVALUATOR.portal = portal
        try:
            if isinstance(document, PythonDocument):
                with contextlib.suppress(NotEvaluated):
                    document.import_document(None)  # type: ignore[arg-type]  # the module's names
            document.namespace.update({"world": world, "__name__": "__docs__"})
            setup = DOCSTRING_SETUP.get(path.relative_to(ROOT).as_posix())
            if setup:
                _run_source(setup, document.namespace, f"{path.name} (setup)", portal)
            for example in document.examples():
                if module:
                    if example.parsed.options.get(doctest.SKIP):
                        skipped += 1
                        continue
                    example.evaluate()
                    ran += 1
                    continue
                counted = _is_python(example) and _visible(example)
                try:
                    example.evaluate()
                except unittest.SkipTest:
                    skipped += counted
                    continue
                ran += counted
            teardown = DOCSTRING_TEARDOWN.get(path.relative_to(ROOT).as_posix())
            if teardown:
                _run_source(teardown, document.namespace, f"{path.name} (teardown)", portal)
        finally:
            EVALUATOR.portal = None
            world.reset()
    return ran, skipped


def _run_source(source: str, namespace: dict[str, Any], name: str, portal: BlockingPortal) -> None:
    code = compile(source, name, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)
    if code.co_flags & inspect.CO_COROUTINE:

        async def run() -> None:
            await eval(code, namespace)  # noqa: S307 - the test's own setup

        portal.call(run)
    else:
        exec(code, namespace)  # noqa: S102 - the test's own setup


def _is_python(example: Example) -> bool:
    return example.region.evaluator is EVALUATOR


def _run(
    path: Path,
    backend: str,
    world: DocsWorld,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    record_property: Callable[[str, object], None],
) -> tuple[int, int, str]:
    """Run ``path``'s examples in a fresh directory: (ran, skipped, the file's text)."""
    world.enter(monkeypatch)
    monkeypatch.chdir(tmp_path)
    ran, skipped = run_document(path, world, backend)
    record_property("docs_examples", (ran, skipped))
    return ran, skipped, path.read_text()


@pytest.mark.parametrize(("path", "backend"), _cases(DOCUMENTS))
def test_the_documents_python_blocks_run(
    path: Path,
    backend: str,
    docs_world: DocsWorld,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    record_property: Callable[[str, object], None],
) -> None:
    ran, skipped, text = _run(path, backend, docs_world, tmp_path, monkeypatch, record_property)
    # Every fenced Python block ran or was skipped, and only by a visible skip directive.
    assert (ran, skipped) == (len(FENCE.findall(text)) - skipped, len(SKIP_NEXT.findall(text)))


@pytest.mark.parametrize(("path", "backend"), _cases(MODULES))
def test_the_docstring_examples_run(
    path: Path,
    backend: str,
    docs_world: DocsWorld,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    record_property: Callable[[str, object], None],
) -> None:
    ran, skipped, text = _run(path, backend, docs_world, tmp_path, monkeypatch, record_property)
    assert (ran, skipped) == (len(PROMPT.findall(text)) - skipped, text.count("# doctest: +SKIP"))
