"""The proxy rule and URL display, without sockets (the wire is in tests/integration/test_http_proxies.py)."""

from __future__ import annotations

import httpx
import pytest

from keyless_m2m._http import ProxyEnvironment, shown_proxy
from keyless_m2m.endpoint import shown_url

PROXY = ("HTTPS_PROXY", "http://u:proxy-password@proxy.corp:3128")


def _env(*no_proxy: str) -> ProxyEnvironment:
    return ProxyEnvironment(https=PROXY, all=None, no_proxy=no_proxy)


@pytest.mark.parametrize(
    ("url", "no_proxy", "proxied"),
    [
        ("https://auth.example/token", (), True),
        ("http://auth.example/token", (), False),  # plain http: never
        ("https://127.0.0.1:8443/token", (), False),  # loopback: never
        ("https://[::1]:8443/token", (), False),
        ("https://a.localhost/token", (), False),
        ("https://auth.example/token", ("auth.example",), False),
        ("https://AUTH.example./token", ("auth.example",), False),
        ("https://login.auth.example/token", (".auth.example",), False),
        ("https://login.auth.example/token", ("*.auth.example",), False),
        ("https://login.auth.example/token", ("auth.example",), False),
        ("https://notauth.example/token", ("auth.example",), True),
        ("https://auth.example/token", ("auth.example:443",), False),
        ("https://auth.example:8443/token", ("auth.example:443",), True),
        ("https://10.1.2.3/token", ("10.0.0.0/8",), False),
        ("https://11.1.2.3/token", ("10.0.0.0/8",), True),
        ("https://[2001:db8::1]/token", ("[2001:db8::1]",), False),
        ("https://[2001:db8::1]/token", ("2001:db8::/32",), False),
        ("https://anything.example/token", ("*",), False),
    ],
)
def test_which_requests_go_through_the_proxy(url: str, no_proxy: tuple[str, ...], proxied: bool) -> None:
    assert (_env(*no_proxy).proxy_for(httpx.URL(url)) is not None) is proxied


def test_https_proxy_before_all_proxy_and_http_proxy_never() -> None:
    env = ProxyEnvironment(https=None, all=("ALL_PROXY", "http://p:1"), no_proxy=(), http=("HTTP_PROXY", "x"))
    assert env.proxy_for(httpx.URL("https://auth.example/")) == ("ALL_PROXY", "http://p:1")
    env = ProxyEnvironment(https=PROXY, all=("ALL_PROXY", "http://p:1"), no_proxy=())
    assert env.proxy_for(httpx.URL("https://auth.example/")) == PROXY


def test_the_lower_case_spelling_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://upper:1")
    monkeypatch.setenv("https_proxy", "http://lower:1")
    monkeypatch.setenv("NO_PROXY", "a.example, b.example")
    monkeypatch.delenv("no_proxy", raising=False)
    env = ProxyEnvironment.read()
    assert env.https == ("https_proxy", "http://lower:1") and env.no_proxy == ("a.example", "b.example")


def test_proxy_credentials_are_never_shown() -> None:
    assert shown_proxy(PROXY[1]) == "proxy.corp:3128"
    assert shown_proxy("proxy.corp") == "proxy.corp:80"
    assert "proxy-password" not in repr(_env())


@pytest.mark.parametrize(
    "url",
    [
        "https://user:CANARY@auth.example/token",
        "https://CANARY@auth.example/token",
        "https:user:CANARY@auth.example/token",
        "https://user:pa/CANARY@auth.example/token",
        "https://user:CANARY@[::1/token",
        "ftp://user:CANARY@auth.example/token",
        "CANARY@auth.example/token",
    ],
)
def test_shown_url_hides_whatever_could_be_userinfo(url: str) -> None:
    assert "CANARY" not in shown_url(url) and "<credentials hidden>@" in shown_url(url)


def test_shown_url_leaves_other_urls_alone() -> None:
    assert shown_url("https://auth.example/token?x=1") == "https://auth.example/token?x=1"
