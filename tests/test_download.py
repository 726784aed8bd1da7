"""worker/download.py against real HTTP servers on loopback (requests is never mocked)."""
from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from urllib.parse import unquote

from infra.settings import Settings
from schemas.failures import FailureCode
from tests.servers import ConditionalRoute, DripServer, Route
from worker.download import DownloadError, RefusedURL, download, make_session

BODY = bytes(range(256)) * 40  # 10 240 bytes; download() does not look at what it is


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so connection reuse can be checked

    def log_message(self, *args):  # keep the test output quiet
        pass

    def do_GET(self):
        self.server.paths.append(self.path)
        name, _, rest = self.path.lstrip("/").partition("/")
        try:
            getattr(self, "route_" + name.replace("-", "_"), self.route_missing)(rest)
        except OSError:
            pass  # the client gave up (broken pipe, reset, TLS EOF), as it should

    def send(self, status, body=b"", headers=()):
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        if not any(key.lower() in ("content-length", "transfer-encoding") for key, _ in headers):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def route_ok(self, _rest):
        self.send(200, BODY, [("Content-Type", "text/plain")])  # the type is not looked at

    def route_unchanged(self, _rest):  # 304 to any If-None-Match
        if self.headers.get("If-None-Match"):
            return self.send(304, headers=[("ETag", '"v1"')])
        self.send(200, BODY, [("ETag", '"v1"')])

    def route_missing(self, _rest):
        self.send(404, b"not here")

    def route_hops(self, rest):  # /hops/3 redirects 3 times, the last time to /ok
        left = int(rest)
        if left == 0:
            return self.route_ok(rest)
        target = "/ok" if left == 1 else str(left - 1)  # absolute and relative paths
        self.send(302 if left % 2 else 301, headers=[("Location", target)])

    def route_to(self, rest):  # /to/<absolute URL>
        self.send(307, headers=[("Location", unquote(rest))])

    def route_drip(self, _rest):  # a byte every 0.25 s: never a read timeout, never done
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        self.wfile.flush()
        for _ in range(1000):
            self.wfile.write(b"x")
            self.wfile.flush()
            time.sleep(0.25)

    def route_drip_headers(self, _rest):  # the headers themselves never end
        self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
        for _ in range(1000):
            self.wfile.write(b"a")
            self.wfile.flush()
            time.sleep(0.25)

    def route_stall(self, _rest):  # headers, then silence
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        self.wfile.write(b"x" * 10)
        self.wfile.flush()
        time.sleep(5)

    def route_declared_big(self, _rest):  # says it is over the cap, and would send it
        self.send_response(200)
        self.send_header("Content-Length", str(10_000_000))
        self.end_headers()
        self.wfile.flush()
        self.server.big_started.set()
        for _ in range(10_000_000 // 65536):
            self.wfile.write(b"\0" * 65536)
            self.server.big_bytes += 65536

    def route_chunked_endless(self, _rest):  # no length (claims a small one) and never ends
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Content-Length", "10")  # a lie that chunked encoding overrides
        self.end_headers()
        piece = b"\0" * 16384
        for _ in range(100_000):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))

    def route_close_delimited(self, _rest):  # HTTP/1.0 style: the body ends when the socket does
        self.close_connection = True
        self.wfile.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
        for _ in range(2000):
            self.wfile.write(b"\0" * 16384)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, host="127.0.0.1"):
        self.connections = 0
        self.paths: list[str] = []
        self.big_started = threading.Event()
        self.big_bytes = 0
        super().__init__((host, 0), Handler)
        self.thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def get_request(self):
        request = super().get_request()
        request[0].setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.connections += 1
        return request

    @property
    def port(self) -> int:
        return self.server_address[1]

    def url(self, path: str, host: str | None = None) -> str:
        return f"http://{host or self.server_address[0]}:{self.port}{path}"

    def stop(self):
        self.shutdown()
        self.server_close()


@pytest.fixture
def server():
    srv = Server()
    yield srv
    srv.stop()


@pytest.fixture
def public_server():
    """A server on 127.0.0.2, which tests exempt from the filter to play a public host."""
    srv = Server("127.0.0.2")
    yield srv
    srv.stop()


def settings(**overrides) -> Settings:
    values = dict(allow_private_urls=True, download_timeout_s=2, connect_timeout_s=1,
                  max_redirects=3, max_download_bytes=100_000)
    values.update(overrides)
    return Settings(**values)


def fetch(url: str, **overrides) -> bytes:
    cfg = settings(**overrides)
    with make_session(cfg) as session:
        return download(session, url, cfg)


# ---------------------------------------------------------------- plain fetching

def test_ok_returns_the_body(server):
    assert fetch(server.url("/ok")) == BODY


def test_http_error_status_fails_with_the_status(server):
    with pytest.raises(DownloadError, match="HTTP 404") as caught:
        fetch(server.url("/nothing"))
    assert caught.value.code == FailureCode.HTTP_STATUS


def test_connections_are_pooled_and_reused(server):
    cfg = settings()
    with make_session(cfg, pool_size=4) as session:
        for _ in range(5):
            assert download(session, server.url("/ok"), cfg) == BODY
    assert server.connections == 1


def test_connection_refused_is_a_download_error(server):
    port = server.port
    server.stop()
    with pytest.raises(DownloadError, match="could not|refused by"):
        fetch(f"http://127.0.0.1:{port}/ok")


# ---------------------------------------------------------------- redirects

def test_redirect_chain_within_the_limit_is_followed(server):
    assert fetch(server.url("/hops/3"), max_redirects=3) == BODY
    assert server.paths == ["/hops/3", "/hops/2", "/hops/1", "/ok"]


def test_redirect_chain_over_the_limit_fails(server):
    with pytest.raises(DownloadError, match="more than 3 redirects") as caught:
        fetch(server.url("/hops/4"), max_redirects=3)
    assert caught.value.code == FailureCode.TOO_MANY_REDIRECTS
    assert server.paths == ["/hops/4", "/hops/3", "/hops/2", "/hops/1"]  # never /ok


def test_zero_redirects_allowed(server):
    assert fetch(server.url("/hops/0"), max_redirects=0) == BODY
    with pytest.raises(DownloadError, match="more than 0 redirects"):
        fetch(server.url("/hops/1"), max_redirects=0)


@pytest.mark.parametrize("target", ["file:///etc/passwd", "ftp://example.com/a.jpg",
                                    "gopher://127.0.0.1:6379/_INFO"])
def test_redirect_to_another_scheme_is_refused(server, target):
    with pytest.raises(RefusedURL, match="refused: redirected to") as caught:
        fetch(server.url("/to/" + target))
    assert caught.value.code == FailureCode.REFUSED_URL


def test_redirect_to_userinfo_is_refused(server):
    with pytest.raises(RefusedURL, match="user name or password"):
        fetch(server.url("/to/" + server.url("/ok", host="user:pw@127.0.0.1")))


# ---------------------------------------------------------------- URL shape

@pytest.mark.parametrize("url", ["ftp://example.com/a.jpg", "file:///etc/passwd",
                                 "data:image/png;base64,AAAA", "/relative/a.jpg",
                                 "javascript:alert(1)"])
def test_non_http_schemes_are_refused(url):
    with pytest.raises(RefusedURL, match=r"refused: not an absolute http\(s\) URL") as caught:
        fetch(url)
    assert caught.value.code == FailureCode.REFUSED_URL


@pytest.mark.parametrize("netloc", ["user:pw@{host}", "user@{host}", "@{host}"])
def test_userinfo_is_refused_without_connecting(server, netloc):
    url = f"http://{netloc.format(host=f'127.0.0.1:{server.port}')}/ok"
    with pytest.raises(RefusedURL, match="user name or password"):
        fetch(url)
    assert server.connections == 0


@pytest.mark.parametrize("url", ["http:///ok", "http://:80/ok", "http://host:99999/ok"])
def test_urls_without_a_valid_host_or_port_are_refused(url):
    with pytest.raises(RefusedURL):
        fetch(url)


# ---------------------------------------------------------------- SSRF

LOOPBACK_SPELLINGS = ["127.0.0.1", "localhost", "[::ffff:127.0.0.1]", "2130706433", "0x7f.1",
                      "017700000001", "127.1", "0.0.0.0", "[::ffff:7f00:1]"]


@pytest.mark.parametrize("host", LOOPBACK_SPELLINGS)
def test_loopback_is_refused_and_never_connected(server, host):
    with pytest.raises(RefusedURL, match="refused: the host '.+' resolves to a loopback, private") as caught:
        fetch(f"http://{host}:{server.port}/ok", allow_private_urls=False)
    assert "TRUSTED_IMAGE_ORIGINS" in str(caught.value)  # what an operator can do about it
    assert caught.value.code == FailureCode.REFUSED_ADDRESS
    assert server.connections == 0


@pytest.mark.parametrize("host", ["10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254",
                                  "100.64.0.1", "198.18.0.1", "224.0.0.1", "240.0.0.1",
                                  "255.255.255.255", "[::1]", "[fd00:ec2::254]", "[fe80::1]",
                                  "[fec0::1]", "[::127.0.0.1]", "[64:ff9b::a00:1]",
                                  "[2002:a00:1::]", "[2001::1]", "[ff02::1]",
                                  "[::ffff:169.254.169.254]", "[::ffff:0:a00:1]"])
def test_private_literal_addresses_are_refused_before_connecting(host):
    started = time.monotonic()
    with pytest.raises(RefusedURL, match="refused"):
        fetch(f"http://{host}/latest/meta-data/", allow_private_urls=False, connect_timeout_s=5)
    # A connect attempt to a black-holed address would have waited for the connect timeout.
    assert time.monotonic() - started < 1


def test_https_is_filtered_too(server):
    with pytest.raises(RefusedURL, match="refused"):
        fetch(f"https://127.0.0.1:{server.port}/ok", allow_private_urls=False)
    assert server.connections == 0


def _public_session(cfg):
    return make_session(cfg, exempt_loopback=["127.0.0.2"])


def test_the_exempt_test_host_is_reachable(public_server):
    cfg = settings(allow_private_urls=False)
    with _public_session(cfg) as session:
        assert download(session, public_server.url("/hops/1"), cfg) == BODY


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::ffff:127.0.0.1]", "2130706433"])
def test_redirect_to_loopback_is_refused_and_never_connected(public_server, server, host):
    cfg = settings(allow_private_urls=False)
    target = f"http://{host}:{server.port}/ok"
    with _public_session(cfg) as session:
        with pytest.raises(RefusedURL, match="refused: redirected to '.+', which resolves"):
            download(session, public_server.url("/to/" + target), cfg)
    assert [unquote(path) for path in public_server.paths] == ["/to/" + target]
    assert server.connections == 0


@pytest.mark.parametrize("target", ["http://169.254.169.254/latest/meta-data/",
                                    "http://10.0.0.1/", "http://[fd00::1]/"])
def test_redirect_to_private_addresses_is_refused(public_server, target):
    cfg = settings(allow_private_urls=False, connect_timeout_s=5)
    started = time.monotonic()
    with _public_session(cfg) as session:
        with pytest.raises(RefusedURL, match="refused: redirected to '.+', which resolves"):
            download(session, public_server.url("/to/" + target), cfg)
    assert time.monotonic() - started < 1


@pytest.fixture
def tls_public_server(tmp_path):
    """HTTPS on 127.0.0.2 with a self-signed certificate for that address (moto brings
    `cryptography`); returns the server and the CA file to verify it with."""
    import datetime
    import ipaddress
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.2")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.2"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    srv = Server("127.0.0.2")
    srv.socket = context.wrap_socket(srv.socket, server_side=True)
    yield srv, str(cert_file)
    srv.stop()


def test_https_through_the_pinned_address_verifies_and_keeps_the_deadline(tls_public_server):
    srv, ca_file = tls_public_server
    cfg = settings(allow_private_urls=False, download_timeout_s=1)
    base = f"https://127.0.0.2:{srv.port}"
    with _public_session(cfg) as session:
        session.verify = ca_file
        assert download(session, base + "/ok", cfg) == BODY
        assert download(session, base + "/ok", cfg) == BODY
        assert srv.connections == 1  # pooled over TLS too
        started = time.monotonic()
        with pytest.raises(DownloadError, match="longer than 1 s") as caught:
            download(session, base + "/drip", cfg)
        assert caught.value.code == FailureCode.DOWNLOAD_TIMEOUT
        assert time.monotonic() - started < 2.0
    with _public_session(cfg) as session:  # the default trust store does not know this cert
        with pytest.raises(DownloadError, match="TLS") as caught:
            download(session, base + "/ok", cfg)
        assert caught.value.code == FailureCode.CONNECTION_FAILED


def test_only_loopback_can_be_exempted():
    with pytest.raises(ValueError):
        make_session(settings(allow_private_urls=False), exempt_loopback=["10.0.0.1"])


# ---------------------------------------------------------------- time limits

def test_dripping_body_hits_the_whole_download_deadline(server):
    started = time.monotonic()
    with pytest.raises(DownloadError, match="longer than 1 s") as caught:
        fetch(server.url("/drip"), download_timeout_s=1)
    assert caught.value.code == FailureCode.DOWNLOAD_TIMEOUT
    assert 0.9 < time.monotonic() - started < 2.0


@pytest.mark.parametrize("drip", ["body", "headers"])
@pytest.mark.parametrize("framing", DripServer.FRAMINGS)
def test_a_dripping_server_is_cut_at_the_deadline_however_it_frames_its_answer(framing, drip):
    # 250 bytes at one per 20 ms: the server would finish by itself after 5 s, well past 0.5 s.
    dripping = DripServer(framing, drip)
    try:
        with pytest.raises(DownloadError, match="longer than 0.5 s"):
            fetch(dripping.url("/a.jpg"), download_timeout_s=0.5)
        assert dripping.cut.wait(3), "the server was not cut off at the deadline"
        assert not dripping.served.is_set()
    finally:
        dripping.stop()


def test_dripping_headers_hit_the_whole_download_deadline(server):
    started = time.monotonic()
    with pytest.raises(DownloadError, match="longer than 1 s") as caught:
        fetch(server.url("/drip-headers"), download_timeout_s=1)
    assert caught.value.code == FailureCode.DOWNLOAD_TIMEOUT
    assert 0.9 < time.monotonic() - started < 2.0


def test_deadline_covers_the_redirects_too(server):
    started = time.monotonic()
    with pytest.raises(DownloadError, match="longer than 1 s") as caught:
        fetch(server.url("/to/" + server.url("/drip")), download_timeout_s=1)
    assert caught.value.code == FailureCode.DOWNLOAD_TIMEOUT
    assert time.monotonic() - started < 2.0


def test_a_stalled_server_hits_the_read_timeout(server):
    cfg = settings(download_timeout_s=5)
    started = time.monotonic()
    with make_session(cfg) as session:
        with pytest.raises(DownloadError, match="stopped sending data") as caught:
            download(session, server.url("/stall"), cfg, read_timeout_s=0.3)
        assert caught.value.code == FailureCode.DOWNLOAD_TIMEOUT
    assert time.monotonic() - started < 1


def test_connect_timeout_is_bounded():
    # 10.255.255.1 is not routed here: the SYN goes unanswered (or fails at once without a route).
    started = time.monotonic()
    with pytest.raises(DownloadError):
        fetch("http://10.255.255.1/a.jpg", connect_timeout_s=0.3)
    assert time.monotonic() - started < 1


def test_a_session_survives_a_timed_out_download(server):
    cfg = settings(download_timeout_s=0.5)
    with make_session(cfg) as session:
        with pytest.raises(DownloadError, match="longer than"):
            download(session, server.url("/drip"), cfg)
        assert download(session, server.url("/ok"), cfg) == BODY


# ---------------------------------------------------------------- size cap

def test_content_length_over_the_cap_is_refused_before_reading(server):
    with pytest.raises(DownloadError, match="10,000,000 bytes, over the 100,000-byte limit") as caught:
        fetch(server.url("/declared-big"), max_download_bytes=100_000)
    assert caught.value.code == FailureCode.TOO_LARGE
    assert server.big_started.wait(1)
    # The connection was closed at once: the server could not push the 10 MB through.
    time.sleep(0.2)
    assert server.big_bytes < 10_000_000


def test_chunked_body_that_lies_is_cut_at_the_cap(server):
    started = time.monotonic()
    with pytest.raises(DownloadError, match="over the 100,000-byte limit") as caught:
        fetch(server.url("/chunked-endless"), max_download_bytes=100_000)
    assert caught.value.code == FailureCode.TOO_LARGE
    assert time.monotonic() - started < 1


def test_close_delimited_body_is_cut_at_the_cap(server):
    with pytest.raises(DownloadError, match="over the 100,000-byte limit") as caught:
        fetch(server.url("/close-delimited"), max_download_bytes=100_000)
    assert caught.value.code == FailureCode.TOO_LARGE


def test_body_exactly_at_the_cap_is_accepted(server):
    assert fetch(server.url("/ok"), max_download_bytes=len(BODY)) == BODY
    with pytest.raises(DownloadError, match="over the"):
        fetch(server.url("/ok"), max_download_bytes=len(BODY) - 1)


# ---------------------------------------------------------------- trusted image origins

def _trusting(cfg, *origins):
    return make_session(cfg, trusted_origins=Settings(
        trusted_image_origins=",".join(origins)).image_origin_prefixes)


def test_a_trusted_origin_is_fetched_and_no_other_private_address(server):
    cfg = settings(allow_private_urls=False)
    other = Server()
    try:
        with _trusting(cfg, f"HTTP://127.0.0.1:{server.port}") as session:
            assert download(session, server.url("/ok"), cfg) == BODY
            with pytest.raises(RefusedURL, match="refused"):  # same host, another port
                download(session, other.url("/ok"), cfg)
            with pytest.raises(RefusedURL, match="refused"):  # the same server by another name
                download(session, server.url("/ok", host="localhost"), cfg)
            # A redirect leaving the trusted origin is checked like any URL.
            with pytest.raises(RefusedURL, match="redirected"):
                download(session, server.url("/to/" + other.url("/ok")), cfg)
        assert other.paths == []
    finally:
        other.stop()


@pytest.mark.parametrize("origin", ["ftp://127.0.0.1:21", "http://127.0.0.1:9000/images",
                                    "http://user@127.0.0.1", "http://127.0.0.1:99999", "nohost"])
def test_a_trusted_origin_must_be_scheme_host_and_port(origin):
    from pydantic import ValidationError
    with pytest.raises(ValidationError, match="not an origin"):
        Settings(trusted_image_origins=origin)


# ---------------------------------------------------------------- conditional GETs (re-imports)

def test_a_304_answers_not_modified_only_to_a_conditional_get(http_server):
    from worker.download import Validators, fetch as fetch_conditionally
    route = ConditionalRoute(BODY)
    http_server.routes["/img"] = route
    url, cfg = http_server.url("/img"), settings()
    with make_session(cfg) as session:
        first = fetch_conditionally(session, url, cfg)
        assert first.data == BODY and not first.not_modified
        assert first.etag == route.etag and first.last_modified == route.last_modified
        again = fetch_conditionally(session, url, cfg, validators=Validators(
            url, {"If-None-Match": first.etag}))
        assert again.not_modified and again.data == b"" and again.etag == route.etag
        by_date = fetch_conditionally(session, url, cfg, validators=Validators(
            url, {"If-Modified-Since": first.last_modified}))
        assert by_date.not_modified
        # A server that answers 304 to a plain GET is wrong: that is an HTTP status failure.
        http_server.routes["/odd"] = Route(b"", 304)
        with pytest.raises(DownloadError, match="HTTP 304") as caught:
            fetch_conditionally(session, http_server.url("/odd"), cfg)
    assert caught.value.code == FailureCode.HTTP_STATUS
    assert route.not_modified == 2


def test_304s_keep_the_connection_for_the_next_request(server):
    from worker.download import Validators, fetch as fetch_conditionally
    cfg, url = settings(), server.url("/unchanged")
    with make_session(cfg, pool_size=4) as session:
        for _ in range(5):
            assert fetch_conditionally(session, url, cfg, validators=Validators(
                url, {"If-None-Match": '"v1"'})).not_modified
    assert server.connections == 1
