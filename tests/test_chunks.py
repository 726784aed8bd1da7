"""worker/chunks.py: a chunk's images through download, the pixel budget, encode and store."""
from __future__ import annotations

import threading

from infra import settings as settings_module
from infra.per_process import per_process
from tests.servers import Route
from tests.test_flow import jpeg, upload
from worker import chunks


def test_decodes_in_flight_follow_the_pixel_budget(client, http_server, work, monkeypatch):
    # Four 100x100 images (10,000 pixels each) with room for one at a time; two threads and
    # at least one encode slot each could otherwise decode two together.
    monkeypatch.setenv("MAX_PIXELS_IN_FLIGHT", "15000")
    monkeypatch.setenv("IMAGE_CONCURRENCY", "4")
    monkeypatch.setenv("CHUNK_SIZE", "4")
    settings_module.get_settings.cache_clear()
    monkeypatch.setattr(chunks, "_encode_slots", per_process(lambda: threading.BoundedSemaphore(4)))
    urls = []
    for n in range(4):
        http_server.routes[f"/{n}.jpg"] = Route(jpeg(100, 100, color=(n * 60, 10, 10)))
        urls.append(http_server.url(f"/{n}.jpg"))

    real_compress = chunks.compress
    lock, inside, peak = threading.Lock(), [0], [0]
    someone_else, waited = threading.Event(), []

    def watched_compress(data, **kwargs):  # the real encoder, counting who is inside it
        with lock:
            inside[0] += 1
            peak[0] = max(peak[0], inside[0])
            first = not waited
            waited.append(True)
            if inside[0] > 1:
                someone_else.set()
        try:
            if first:  # give a second decode the chance to start beside this one
                someone_else.wait(1.0)
            return real_compress(data, **kwargs)
        finally:
            with lock:
                inside[0] -= 1
    monkeypatch.setattr(chunks, "compress", watched_compress)

    rows = "".join(f"{n + 1},P{n},{url}\n" for n, url in enumerate(urls))
    batch = upload(client, "S. No.,Product Name,Input Image Urls\n" + rows).get_json()
    work()

    batch = client.get(f"/api/v1/batches/{batch['id']}").get_json()
    assert batch["status"] == "completed", batch
    assert batch["images"]["processed"] == 4
    assert peak[0] == 1
    assert chunks.pixel_budget(15000).peak == 10000
