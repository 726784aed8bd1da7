"""infra/storage.py against a real HTTP server that records what boto3 sends."""
from __future__ import annotations

import pytest

from infra import storage
from tests.servers import HttpServer, Route


@pytest.fixture()
def recording_s3(env):
    server = HttpServer()
    storage.use_endpoint(server.base)
    yield server
    server.stop()


def _put(server: HttpServer, key: str, size: int) -> dict:
    path = f"/{storage.get_settings().s3_bucket}/{key}"
    server.routes[path] = Route(b"", 200)
    storage.put_bytes(key, b"x" * size, "image/jpeg")
    [request] = [r for r in server.requests if r["path"] == path]
    assert len(request["body"]) == size
    return request["headers"]


def test_an_image_sized_put_does_not_wait_for_100_continue(recording_s3):
    headers = _put(recording_s3, "outputs/small.jpg", 300_000)
    assert "Expect" not in headers


def test_a_put_over_2_mib_still_asks_before_sending_its_body(recording_s3):
    headers = _put(recording_s3, "outputs/large.jpg", storage.CONTINUE_THRESHOLD_BYTES + 1)
    assert headers["Expect"] == "100-continue"
