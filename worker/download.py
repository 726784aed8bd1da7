"""Fetching one user-supplied image URL safely: SSRF filter, redirects, deadline and byte cap."""
from __future__ import annotations

import time
from urllib.parse import urljoin, urlsplit

import requests
from requests_hardened import Config, HTTPSession
from requests_hardened.ip_filter import InvalidIPAddress

from infra.settings import Settings

CHUNK = 64 * 1024


class DownloadError(Exception):
    """The image could not be fetched; the message is shown to the user."""


def make_session(settings: Settings, pool_size: int = 8) -> requests.Session:
    """A pooled session that refuses non-public addresses unless ALLOW_PRIVATE_URLS is set."""
    session = HTTPSession(Config(
        ip_filter_enable=not settings.allow_private_urls,
        ip_filter_allow_loopback_ips=False,
        never_redirect=True,  # redirects are followed by hand, each hop re-checked
        default_timeout=(settings.connect_timeout_s, settings.download_timeout_s),
        user_agent_override="Batchpress/1.0 (+image compression)",
    ))
    if settings.allow_private_urls:
        adapter = requests.adapters.HTTPAdapter(pool_connections=pool_size, pool_maxsize=pool_size)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
    return session


def download(session: requests.Session, url: str, settings: Settings) -> bytes:
    """The body of `url`, within the byte cap and the whole-download deadline."""
    deadline = time.monotonic() + settings.download_timeout_s
    limit = settings.max_download_bytes
    for _hop in range(settings.max_redirects + 1):
        _check_scheme(url)
        remaining = max(0.1, deadline - time.monotonic())
        try:
            response = session.get(
                url, stream=True, allow_redirects=False,
                timeout=(min(settings.connect_timeout_s, remaining), remaining),
            )
        except InvalidIPAddress:
            raise DownloadError("refused: the URL resolves to a private or reserved address") from None
        except requests.Timeout:
            raise DownloadError(f"timed out after {settings.download_timeout_s:g} s") from None
        except requests.RequestException as error:
            raise DownloadError(f"could not connect: {_short(error)}") from None
        with response:
            if response.is_redirect:
                location = response.headers.get("Location")
                if not location:
                    raise DownloadError(f"HTTP {response.status_code} redirect without Location")
                url = urljoin(url, location)
                continue
            if response.status_code != 200:
                raise DownloadError(f"HTTP {response.status_code} from the image server")
            declared = response.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > limit:
                raise DownloadError(f"image is {int(declared)} bytes, over the {limit}-byte limit")
            return _read_capped(response, limit, deadline, settings.download_timeout_s)
    raise DownloadError(f"more than {settings.max_redirects} redirects")


def _read_capped(response, limit: int, deadline: float, timeout: float) -> bytes:
    body = bytearray()
    try:
        for piece in response.iter_content(CHUNK):
            body += piece
            if len(body) > limit:
                raise DownloadError(f"image is over the {limit}-byte limit")
            if time.monotonic() > deadline:
                raise DownloadError(f"download took longer than {timeout:g} s")
    except requests.RequestException as error:
        raise DownloadError(f"download broke off: {_short(error)}") from None
    return bytes(body)


def _check_scheme(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise DownloadError(f"refused: only http and https URLs are fetched, not {parts.scheme!r}")
    if parts.username or parts.password:
        raise DownloadError("refused: URLs with a user name or password are not fetched")


def _short(error: Exception) -> str:
    text = str(error)
    return text if len(text) < 200 else text[:200] + "…"
