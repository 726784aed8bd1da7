"""Re-imports (schemas/reuse.py, worker/reuse.py): the same images uploaded again by the same API
key with the same output settings are fetched conditionally and their outputs copied, not
encoded; anything else is processed as usual."""
from __future__ import annotations

import io

import pytest
import requests
from PIL import Image

from schemas.reuse import output_fingerprint, source_id, validator
from tests.batch_helpers import csv_text, upload
from tests.helpers import bearer, make_app, metric
from tests.image_factory import photo
from tests.servers import ConditionalRoute, Route

SETTINGS = dict(quality=50, optimize=False, webp_method=2, keep_original=True)


def jpeg(size=(96, 64), tint=(200, 30, 30)) -> bytes:
    """A photo-like JPEG (a flat one would be kept as it came, not encoded)."""
    out = io.BytesIO()
    Image.blend(photo(size), Image.new("RGB", size, tint), 0.3).save(out, "JPEG", quality=90)
    return out.getvalue()


def serve(http_server, count: int, **options) -> tuple[list[str], list[ConditionalRoute]]:
    routes = [ConditionalRoute(jpeg(tint=(40 * i % 255, 90, 120)), **options)
              for i in range(count)]
    for i, route in enumerate(routes):
        http_server.routes[f"/p{i}.jpg"] = route
    return [http_server.url(f"/p{i}.jpg") for i in range(count)], routes


def images_of(client, batch_id: str, headers: dict | None = None) -> list[dict]:
    items = client.get(f"/api/v1/batches/{batch_id}/products", headers=headers or {}).get_json()
    return [image for item in items["items"] for image in item["images"]]


def run(client, work, urls, headers=None, **form) -> tuple[dict, list[dict]]:
    response = upload(client, csv_text([[url] for url in urls]), headers=headers, **form)
    assert response.status_code == 202, response.get_json()
    batch_id = response.get_json()["id"]
    work()
    batch = client.get(f"/api/v1/batches/{batch_id}", headers=headers or {}).get_json()
    return batch, images_of(client, batch_id, headers)


def encodes(client) -> float:
    return metric(client.get("/metrics").get_data(as_text=True),
                  "batchpress_encode_seconds_count") or 0.0


def fetched(url: str) -> bytes:
    response = requests.get(url, timeout=5)
    assert response.status_code == 200, url
    return response.content


# --- the fingerprint and the validators ---------------------------------------------------------

def test_the_fingerprint_changes_with_every_setting_that_changes_the_output_bytes():
    base = output_fingerprint(**SETTINGS, sizes={"thumb": 200, "medium": 800})
    assert base == output_fingerprint(**SETTINGS, sizes={"medium": 800, "thumb": 200})
    changed = [output_fingerprint(**{**SETTINGS, **change}, sizes={"thumb": 200, "medium": 800})
               for change in ({"quality": 51}, {"optimize": True}, {"webp_method": 4},
                              {"keep_original": False})]
    changed += [output_fingerprint(**SETTINGS, sizes=sizes)
                for sizes in ({"thumb": 200}, {"thumb": 201, "medium": 800},
                              {"small": 200, "medium": 800}, {})]
    changed += [output_fingerprint(**SETTINGS, sizes={"thumb": 200, "medium": 800},
                                   full_size=False)]
    assert len({base, *changed}) == 1 + len(changed)


def test_no_owner_is_an_owner_of_its_own_and_validators_are_kept_only_when_sendable():
    assert source_id(None, "f", "u") != source_id("None", "f", "u")
    assert source_id("alice", "f", "u") != source_id("bob", "f", "u")
    assert validator(' "abc" ') == '"abc"'
    assert validator(None) is None and validator("") is None
    assert validator('"\u00e9t\u00e9"') is None and validator("x" * 513) is None


# --- end to end ---------------------------------------------------------------------------------

def test_the_same_csv_again_costs_a_304_and_a_copy_per_image(client, http_server, work, s3, env):
    urls, routes = serve(http_server, 3)
    first, first_images = run(client, work, urls, sizes="thumb=32")
    assert first["status"] == "completed" and first["images"]["reused"] == 0
    assert not any(image["reused"] for image in first_images)
    encoded = encodes(client)

    second, second_images = run(client, work, urls, sizes="thumb=32")

    assert second["status"] == "completed"
    assert second["images"] == {"total": 3, "processed": 3, "failed": 0, "reused": 3}
    assert encodes(client) == encoded  # nothing decoded or encoded
    assert all(route.conditional == 1 and route.not_modified == 1 for route in routes)
    for old, new in zip(first_images, second_images):
        assert new["reused"] is True
        for name in ("width", "height", "format", "output_format", "bytes_in", "bytes_out",
                     "kept_original"):
            assert new[name] == old[name], name
        assert f"/{second['id']}/" in new["output_url"] and new["output_url"] != old["output_url"]
        assert fetched(new["output_url"]) == fetched(old["output_url"])
        assert fetched(new["sizes"]["thumb"]) == fetched(old["sizes"]["thumb"])
    assert second["bytes"] == first["bytes"]
    body = client.get("/metrics").get_data(as_text=True)
    assert metric(body, "batchpress_images_reused_total", how="not_modified") == 3

    # The new batch's outputs are objects of their own: the first batch's going away leaves them.
    for item in s3.list_objects_v2(Bucket=env.s3_bucket,
                                   Prefix=f"outputs/{first['id']}/")["Contents"]:
        s3.delete_object(Bucket=env.s3_bucket, Key=item["Key"])
    assert all(fetched(image["output_url"]) for image in second_images)

    # ... and what is remembered now points at them: a third upload still reuses.
    third, third_images = run(client, work, urls, sizes="thumb=32")
    assert third["images"]["reused"] == 3 and encodes(client) == encoded
    assert [fetched(i["output_url"]) for i in third_images] == [
        fetched(i["output_url"]) for i in second_images]


def test_a_server_that_ignores_validators_is_recognised_by_the_bytes(client, http_server, work):
    urls, routes = serve(http_server, 2, honour_validators=False)
    run(client, work, urls)
    encoded = encodes(client)
    batch, images = run(client, work, urls)
    assert batch["images"]["reused"] == 2 and all(image["reused"] for image in images)
    assert encodes(client) == encoded
    assert all(route.conditional == 1 and route.not_modified == 0 for route in routes)
    body = client.get("/metrics").get_data(as_text=True)
    assert metric(body, "batchpress_images_reused_total", how="same_bytes") == 2


def test_a_changed_image_is_encoded_again_and_the_others_reused(client, http_server, work):
    urls, routes = serve(http_server, 2)
    _, first = run(client, work, urls)
    routes[1].body = jpeg(size=(120, 80), tint=(10, 200, 10))
    encoded = encodes(client)
    batch, second = run(client, work, urls)
    assert [image["reused"] for image in second] == [True, False]
    assert encodes(client) == encoded + 1
    assert second[1]["width"] == 120 and first[1]["width"] == 96
    assert fetched(second[1]["output_url"]) != fetched(first[1]["output_url"])
    # The new image is what is remembered now.
    batch, third = run(client, work, urls)
    assert [image["reused"] for image in third] == [True, True]
    assert third[1]["width"] == 120


def test_another_api_key_does_not_reuse(env, monkeypatch, http_server, work):
    client = make_app(monkeypatch, API_KEYS="alice:ak_0123456789abcdef,"
                                            "bob:bk_fedcba9876543210").test_client()
    alice, bob = bearer("ak_0123456789abcdef"), bearer("bk_fedcba9876543210")
    urls, routes = serve(http_server, 2)
    run(client, work, urls, headers=alice)
    batch, images = run(client, work, urls, headers=bob)
    assert batch["images"]["reused"] == 0 and not any(image["reused"] for image in images)
    assert all(route.conditional == 0 for route in routes)  # bob's requests ask nothing
    batch, _ = run(client, work, urls, headers=alice)
    assert batch["images"]["reused"] == 2


def test_other_sizes_or_quality_do_not_reuse(client, http_server, work, monkeypatch):
    urls, routes = serve(http_server, 1)
    run(client, work, urls, sizes="thumb=32")
    for form in ({"sizes": "thumb=48"}, {"sizes": "small=32"}, {"sizes": ""}):
        batch, _ = run(client, work, urls, **form)
        assert batch["images"]["reused"] == 0, form
    monkeypatch.setenv("OUTPUT_QUALITY", "70")
    from infra import settings as settings_module
    settings_module.get_settings.cache_clear()
    batch, images = run(client, work, urls, sizes="thumb=32")
    assert batch["images"]["reused"] == 0 and images[0]["bytes_out"] > 0
    assert routes[0].not_modified == 0


def test_sizes_only_reuses_only_sizes_only_and_keeps_the_main_output_named_after_its_size(
        client, http_server, work):
    urls, routes = serve(http_server, 1)
    run(client, work, urls, sizes="thumb=32,large=48")  # with a full-size output
    first, first_images = run(client, work, urls, sizes="thumb=32,large=48", full_size="false")
    assert first["images"]["reused"] == 0  # other outputs than the batch before's
    second, second_images = run(client, work, urls, sizes="thumb=32,large=48", full_size="false")
    assert second["images"]["reused"] == 1
    image = second_images[0]
    assert image["output_url"] == image["sizes"]["large"]
    assert image["output_url"].endswith(f"/{second['id']}/{image['output_url'].split('/')[-2]}"
                                         "/p0-large.jpg")
    assert Image.open(io.BytesIO(fetched(image["output_url"]))).size == (48, 32)
    assert fetched(image["output_url"]) == fetched(first_images[0]["output_url"])


def test_a_reuse_copies_an_object_shared_by_sizes_of_one_edge_once(client, http_server, work,
                                                                     s3, env):
    urls, routes = serve(http_server, 1)
    first, first_images = run(client, work, urls, sizes="a=32,b=32")
    second, second_images = run(client, work, urls, sizes="a=32,b=32")
    assert second["images"]["reused"] == 1
    image = second_images[0]
    assert image["sizes"]["a"] == image["sizes"]["b"] != image["output_url"]
    assert f"/{second['id']}/" in image["sizes"]["b"]
    assert fetched(image["sizes"]["b"]) == fetched(first_images[0]["sizes"]["a"])
    keys = sorted(o["Key"].rsplit("/", 1)[1] for o in s3.list_objects_v2(
        Bucket=env.s3_bucket, Prefix=f"outputs/{second['id']}/")["Contents"])
    assert keys == ["p0-a.jpg", "p0.jpg"]


def test_a_304_whose_outputs_are_gone_fetches_the_image_again(client, http_server, work, s3,
                                                              env):
    urls, routes = serve(http_server, 1)
    first, _ = run(client, work, urls)
    for item in s3.list_objects_v2(Bucket=env.s3_bucket,
                                   Prefix=f"outputs/{first['id']}/")["Contents"]:
        s3.delete_object(Bucket=env.s3_bucket, Key=item["Key"])
    batch, images = run(client, work, urls)
    assert batch["status"] == "completed" and images[0]["reused"] is False
    assert routes[0].not_modified == 1 and routes[0].requests == 3  # 200, 304, then 200
    assert Image.open(io.BytesIO(fetched(images[0]["output_url"]))).size == (96, 64)


def test_an_image_that_failed_before_is_fetched_and_encoded_as_new(client, http_server, work):
    http_server.routes["/late.jpg"] = Route(b"not yet", 404)
    url = http_server.url("/late.jpg")
    first, _ = run(client, work, [url])
    assert first["images"]["failed"] == 1
    route = ConditionalRoute(jpeg())
    http_server.routes["/late.jpg"] = route
    batch, images = run(client, work, [url])
    assert batch["status"] == "completed" and images[0]["reused"] is False
    assert route.conditional == 0


def test_a_retry_and_a_re_run_reuse_without_counting_twice(client, http_server, work, env):
    from worker.chunks import process_chunk
    urls, routes = serve(http_server, 2)
    run(client, work, urls)
    http_server.routes["/p1.jpg"] = Route(b"gone", 503)
    batch, _ = run(client, work, urls)
    assert batch["images"] == {"total": 2, "processed": 1, "failed": 1, "reused": 1}
    http_server.routes["/p1.jpg"] = routes[1]
    assert client.post(f"/api/v1/batches/{batch['id']}/retry").status_code == 202
    work()
    after = client.get(f"/api/v1/batches/{batch['id']}").get_json()
    assert after["images"] == {"total": 2, "processed": 2, "failed": 0, "reused": 2}
    assert process_chunk(batch["id"], 0, env) == 0  # a re-run finds nothing left to do
    again = client.get(f"/api/v1/batches/{batch['id']}").get_json()
    assert again["images"] == after["images"] and again["bytes"] == after["bytes"]


@pytest.mark.parametrize("honour", [True, False])
def test_validators_go_only_to_the_url_they_came_from(client, http_server, work, honour):
    route = ConditionalRoute(jpeg(), honour_validators=honour)
    http_server.routes["/final.jpg"] = route
    http_server.routes["/moved.jpg"] = Route(b"", 302, {"Location": "/final.jpg"})
    url = http_server.url("/moved.jpg")
    run(client, work, [url])
    batch, images = run(client, work, [url])
    assert images[0]["reused"] is True
    hops = [r for r in http_server.requests if r["path"] == "/moved.jpg"]
    assert len(hops) == 2 and not any("If-None-Match" in r["headers"] for r in hops)
    assert route.conditional == 1 and route.not_modified == int(honour)
