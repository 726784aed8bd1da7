"""Helpers for tests that drive batches through the API: CSV text, uploads, flat JPEGs served on
loopback, polling."""
from __future__ import annotations

import io
import time

from PIL import Image
from rq.job import Job

from infra import queues
from tests.servers import Route


def jpeg(color=(200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 24), color).save(out, "JPEG", quality=90)
    return out.getvalue()


def csv_text(urls_per_row: list[list[str]]) -> str:
    lines = ["S. No.,Product Name,Input Image Urls"]
    for n, urls in enumerate(urls_per_row, start=1):
        lines.append(f'{n},Item {n},"{",".join(urls)}"')
    return "\n".join(lines) + "\n"


def upload(client, text: str, headers: dict | None = None, **form):
    return client.post("/api/v1/batches", headers=headers or {},
                       data={"file": (io.BytesIO(text.encode()), "products.csv"), **form},
                       content_type="multipart/form-data")


def serve_images(http_server, count: int, prefix: str = "img", **route) -> list[str]:
    urls = []
    for i in range(count):
        path = f"/{prefix}{i}.jpg"
        http_server.routes[path] = Route(jpeg((i * 20 % 255, 80, 120)),
                                         headers={"Content-Type": "image/jpeg"}, **route)
        urls.append(http_server.url(path))
    return urls


def get(client, batch_id: str) -> dict:
    return client.get(f"/api/v1/batches/{batch_id}").get_json()


def requests_to(http_server, path: str, method: str = "GET") -> int:
    return sum(1 for r in http_server.requests if r["path"] == path and r["method"] == method)


def wait_for(condition, timeout: float = 10.0, step: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(step)
    raise AssertionError("condition not met in time")


def job_status(job_id: str):
    job = Job.fetch_many([job_id], connection=queues.get_redis())[0]
    return job.get_status(refresh=False) if job else None


def problem(response, status: int) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    return response.get_json()
