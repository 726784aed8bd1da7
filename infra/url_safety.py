"""Is a webhook URL safe for this server to call? Its shape, its scheme, and where its host points.

Checked when a URL is given (subscription, upload) so a bad one is refused with a clear 422; the
worker checks again when it sends (requests-hardened pins the address it checked), so a host whose
DNS later turns to a private address is still refused.
"""
from __future__ import annotations

import concurrent.futures
import ipaddress
import socket
from typing import Collection
from urllib.parse import urlsplit

from requests_hardened.ip_filter import EXTRA_BLOCKED_NET_RANGES

from schemas.quoting import quoted
from schemas.urls import UrlShapeError, check_fetchable

DNS_TIMEOUT_S = 5.0

_resolver = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="dns")


class UnsafeUrl(ValueError):
    """The URL is refused; the message says why and is safe to show to the caller."""


# Addresses Python's ``is_global`` gets wrong or that requests-hardened lets through.
_EXTRA_BLOCKED = (
    ipaddress.ip_network("::/96"),            # IPv4-compatible (deprecated), incl. ::, ::1
    ipaddress.ip_network("::ffff:0:0:0/96"),  # IPv4-translated (SIIT)
    ipaddress.ip_network("fec0::/10"),        # site-local (deprecated, still routed internally)
)


def is_public_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
                      *, exempt: Collection[ipaddress.IPv4Address | ipaddress.IPv6Address] = ()
                      ) -> bool:
    """True for a globally routable unicast address (not loopback, private, link-local, metadata,
    CG-NAT, multicast, reserved, or an IPv6 form that wraps one of those). The one address policy
    of the service: image downloads, webhook URLs and webhook sends all ask it."""
    if ip in exempt:
        return True
    if isinstance(ip, ipaddress.IPv6Address):
        if any(ip in net for net in _EXTRA_BLOCKED):
            return False
        wrapped = ip.ipv4_mapped or ip.sixtofour
        if wrapped is not None:
            return is_public_address(wrapped, exempt=exempt)
    if not ip.is_global or ip.is_multicast or ip.is_reserved or ip.is_unspecified:
        return False
    return not any(ip.version == net.version and ip in net for net in EXTRA_BLOCKED_NET_RANGES)


def check_shape(url: object) -> str:
    """An absolute http(s) URL with a host, no credentials and no whitespace, or UnsafeUrl
    (the rule of schemas/urls.py)."""
    try:
        check_fetchable(url, spaces=False)
    except UrlShapeError as error:
        raise UnsafeUrl(str(error)) from None
    return str(url)


def check_url(url: object, *, allow_private: bool, resolve: bool = True) -> str:
    """The URL, when this server may POST to it; else UnsafeUrl.

    Without `allow_private` (ALLOW_PRIVATE_URLS) it must be https and every address its host
    resolves to must be public.
    """
    url = check_shape(url)
    if allow_private:
        return url
    parts = urlsplit(url)
    if parts.scheme.lower() != "https":
        raise UnsafeUrl("the URL must use https (http is allowed only with ALLOW_PRIVATE_URLS)")
    host = parts.hostname
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        addresses = [literal]
    elif not resolve:
        return url
    else:
        addresses = _resolve(host, parts.port or 443)
    if not all(is_public_address(ip) for ip in addresses):
        raise UnsafeUrl("the URL's host resolves to a loopback, private, link-local or otherwise "
                        "non-public address")
    return url


def _resolve(host: str, port: int) -> list:
    future = _resolver.submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
    try:
        infos = future.result(timeout=DNS_TIMEOUT_S)
    except concurrent.futures.TimeoutError:
        raise UnsafeUrl(f"the URL's host {quoted(host)} did not resolve within "
                        f"{DNS_TIMEOUT_S:g} s") from None
    except (socket.gaierror, UnicodeError, OSError):
        raise UnsafeUrl(f"the URL's host {quoted(host)} does not resolve") from None
    addresses = []
    for _family, _type, _proto, _name, sockaddr in infos:
        try:
            addresses.append(ipaddress.ip_address(sockaddr[0].split("%", 1)[0]))
        except ValueError:
            raise UnsafeUrl(f"the URL's host {quoted(host)} resolves to an unusable "
                            "address") from None
    if not addresses:
        raise UnsafeUrl(f"the URL's host {quoted(host)} does not resolve")
    return addresses
