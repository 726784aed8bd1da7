"""infra/url_safety.py: which webhook URLs the server may call, and the one address policy."""
from __future__ import annotations

import ipaddress

import pytest

from infra.url_safety import UnsafeUrl, check_url, is_public_address
from tests.helpers import assert_problem, refuse_private_urls
from tests.test_flow import upload


@pytest.mark.parametrize("url", [
    "http://93.184.215.14/hook",          # https is required
    "https://127.0.0.1/hook", "https://localhost/hook", "https://10.0.0.1/hook",
    "https://169.254.169.254/latest/meta-data", "https://[::ffff:127.0.0.1]/hook",
    "https://2130706433/hook", "https://100.64.0.1/hook", "https://user:pw@93.184.215.14/hook",
])
def test_private_and_plain_http_urls_are_refused(client, monkeypatch, url):
    refuse_private_urls(monkeypatch, client)
    body = assert_problem(client.post("/api/v1/webhooks", json={"url": url}), 422,
                          "invalid-webhook-url")
    assert body["field"] == "url"
    text = "S. No.,Product Name,Input Image Urls\n1,Mug,https://93.184.215.14/a.jpg\n"
    body = assert_problem(upload(client, text, webhook_url=url), 422, "invalid-webhook-url")
    assert body["field"] == "webhook_url"


def test_public_https_url_is_accepted(client, monkeypatch):
    refuse_private_urls(monkeypatch, client)
    assert client.post("/api/v1/webhooks", json={"url": "https://93.184.215.14/hook"}).status_code == 201


@pytest.mark.parametrize("address, public", [
    ("93.184.215.14", True), ("2606:4700::1111", True), ("127.0.0.1", False), ("10.1.2.3", False),
    ("172.16.0.1", False), ("192.168.1.1", False), ("169.254.169.254", False), ("100.64.0.1", False),
    ("0.0.0.0", False), ("224.0.0.1", False), ("::1", False), ("fe80::1", False), ("fc00::1", False),
    ("::ffff:10.0.0.1", False), ("2002:a00:1::", False), ("64:ff9b::a00:1", False),
])
def test_public_address_classification(address, public):
    assert is_public_address(ipaddress.ip_address(address)) is public


def test_public_addresses_pass_the_policy():
    for text in ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "::ffff:8.8.8.8"]:
        assert is_public_address(ipaddress.ip_address(text)), text


@pytest.mark.parametrize("url, reason", [
    ("http://93.184.215.14/hook", "must use https"),
    ("https://10.0.0.1/hook", "non-public address"),
    ("https://[::ffff:127.0.0.1]/hook", "non-public address"),
    ("https://user:pw@93.184.215.14/hook", "user name or password"),
    ("https://93.184.215.14/a hook", "space"),
])
def test_check_url_refuses_without_resolving_a_literal_host(url, reason):
    with pytest.raises(UnsafeUrl, match=reason):
        check_url(url, allow_private=False, resolve=False)


def test_allow_private_lifts_the_address_and_https_rules_but_not_the_shape():
    assert check_url("http://127.0.0.1:9/hook", allow_private=True) == "http://127.0.0.1:9/hook"
    assert check_url("https://93.184.215.14/hook", allow_private=False) == \
        "https://93.184.215.14/hook"
    with pytest.raises(UnsafeUrl, match="user name or password"):
        check_url("http://u:p@127.0.0.1/hook", allow_private=True)
