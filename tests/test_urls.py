"""schemas/urls.py: the one URL-shape rule, checked without servers or DNS."""
from __future__ import annotations

import pytest

from schemas.urls import (
    MAX_URL_LENGTH, UrlShapeError, check_absolute_http, check_fetchable)

NOT_HTTP = ["ftp://h/a.jpg", "file:///etc/passwd", "data:image/png;base64,AAAA",
            "/images/a.jpg", "photo.jpg", "javascript:alert(1)", "gopher://127.0.0.1:6379/_"]


@pytest.mark.parametrize("url", ["http://h/a.jpg", "HTTPS://Example.com:8443/a b.jpg?x=1#f",
                                 "http://[::1]:80/a", "http://h/" + "a" * (MAX_URL_LENGTH - 9)])
def test_absolute_http_urls_up_to_the_length_limit_pass_both_levels(url):
    assert check_absolute_http(url).hostname == check_fetchable(url).hostname


@pytest.mark.parametrize("url, message", [
    *[(url, "not an absolute http(s) URL") for url in NOT_HTTP],
    ("http:///a.jpg", "the URL has no host"),
    ("http://:80/a.jpg", "the URL has no host"),
    ("http://[::1/a.jpg", "the URL is not well formed"),
    ("http://h/" + "a" * (MAX_URL_LENGTH - 8), f"longer than {MAX_URL_LENGTH} characters"),
    ("", "the URL is empty"),
    (None, "must be a string"),
])
def test_each_broken_shape_is_named_at_both_levels(url, message):
    for check in (check_absolute_http, check_fetchable):
        with pytest.raises(UrlShapeError, match=message.replace("(", r"\(").replace(")", r"\)")):
            check(url)


@pytest.mark.parametrize("url, message", [
    ("http://user:pw@h/a.jpg", "user name or password"),
    ("http://user@h/a.jpg", "user name or password"),
    ("http://@h/a.jpg", "user name or password"),
    ("http://h:0/a.jpg", "port"),
    ("http://h:99999/a.jpg", "port"),
    ("http://h:x/a.jpg", "port"),
    ("http://h/a\x00.jpg", "control character"),
    ("http://h/a\x7f.jpg", "control character"),
])
def test_what_a_request_needs_is_checked_only_for_fetching(url, message):
    # The CSV rule lets these through so that such an image fails alone, not its whole row.
    assert check_absolute_http(url)
    with pytest.raises(UrlShapeError, match=message):
        check_fetchable(url)


def test_spaces_are_refused_only_where_asked():
    url = "https://h/my photo.jpg"
    assert check_fetchable(url).path == "/my photo.jpg"
    with pytest.raises(UrlShapeError, match="space"):
        check_fetchable(url, spaces=False)
    with pytest.raises(UrlShapeError, match="space"):
        check_fetchable("https://h/a\u00a0b", spaces=False)


def test_messages_never_quote_the_url():
    secret = "http://user:hunter2@h/a.jpg"
    with pytest.raises(UrlShapeError) as caught:
        check_fetchable(secret)
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize("url, message", [("ftp://h/a.jpg", "not an absolute http(s) URL"),
                                          ("http:///a.jpg", "the URL has no host")])
def test_rows_webhook_urls_and_downloads_word_a_shape_problem_alike(url, message):
    from pydantic import ValidationError

    from infra.settings import Settings
    from infra.url_safety import UnsafeUrl, check_shape
    from schemas.rows import ProductRow, row_error
    from worker.download import RefusedURL, download, make_session

    with pytest.raises(ValidationError) as row:
        ProductRow(serial_no=1, product_name="Mug", input_image_urls=[url])
    assert row_error(row.value) == f"Input Image Urls: {message}: {url!r}"
    with pytest.raises(UnsafeUrl) as webhook:
        check_shape(url)
    assert str(webhook.value) == message
    settings = Settings(allow_private_urls=False)
    with make_session(settings) as session, pytest.raises(RefusedURL) as image:
        download(session, url, settings)  # refused before any connection: no server needed
    assert str(image.value) == f"refused: {message}"
