"""GET /batches/{id}/outputs.zip: every output image, named by product and input file name."""
from __future__ import annotations

import io
import zipfile

import requests
from PIL import Image

from schemas.archive_names import ArchiveNames, clean_part
from tests import image_factory as images
from tests.servers import Route
from tests.test_flow import upload


def test_the_zip_holds_each_output_image_under_its_product_and_input_name(client, http_server,
                                                                          work):
    http_server.routes["/shots/front%20view.jpg"] = Route(images.jpeg((40, 30)))
    http_server.routes["/logo.png"] = Route(images.png((20, 20), mode="RGBA"))
    front, logo = http_server.url("/shots/front%20view.jpg"), http_server.url("/logo.png")
    missing = http_server.url("/gone.jpg")
    text = ("S. No.,Product Name,Input Image Urls\n"
            f'7,"Mug: red/blue","{front},{logo},{missing}"\n'
            f"8,Mug: red/blue,{logo}?v=2\n"
            f"9,Tray,{logo}\n")
    batch = upload(client, text, ).get_json()
    work()

    response = client.get(f"/api/v1/batches/{batch['id']}/outputs.zip")
    assert response.status_code == 200
    assert response.mimetype == "application/zip"
    assert 'filename="products-images.zip"' in response.headers["Content-Disposition"]
    archive = zipfile.ZipFile(io.BytesIO(response.get_data()))
    assert archive.testzip() is None
    assert archive.namelist() == ["7 Mug_ red_blue/front view.jpg", "7 Mug_ red_blue/logo.webp",
                                  "8 Mug_ red_blue/logo.webp", "9 Tray/logo.webp"]
    products = client.get(f"/api/v1/batches/{batch['id']}/products").get_json()["items"]
    stored = requests.get(products[0]["images"][0]["output_url"], timeout=5).content
    assert archive.read("7 Mug_ red_blue/front view.jpg") == stored


def _zip(client, batch_id: str) -> zipfile.ZipFile:
    response = client.get(f"/api/v1/batches/{batch_id}/outputs.zip")
    assert response.status_code == 200
    archive = zipfile.ZipFile(io.BytesIO(response.get_data()))
    assert archive.testzip() is None
    return archive


def _size_of(archive: zipfile.ZipFile, name: str) -> tuple[int, int]:
    return Image.open(io.BytesIO(archive.read(name))).size


def test_the_zip_holds_every_size_output_beside_the_main_one(client, http_server, work):
    http_server.routes["/front.jpg"] = Route(images.jpeg((400, 300)))
    http_server.routes["/logo.png"] = Route(images.png((20, 20), mode="RGBA"))
    http_server.routes["/a/front-thumb.jpg"] = Route(images.jpeg((64, 48)))
    front, logo = http_server.url("/front.jpg"), http_server.url("/logo.png")
    lookalike = http_server.url("/a/front-thumb.jpg")  # its main name is front's thumb's name
    text = ("S. No.,Product Name,Input Image Urls\n"
            f'7,Mug,"{front},{logo},{lookalike}"\n')
    batch = upload(client, text, sizes="thumb=16,medium=100").get_json()
    work()

    archive = _zip(client, batch["id"])
    assert archive.namelist() == [
        "7 Mug/front.jpg", "7 Mug/front-thumb.jpg", "7 Mug/front-medium.jpg",
        "7 Mug/logo.webp", "7 Mug/logo-thumb.webp",  # 20 px: `medium` is the main output
        "7 Mug/front-thumb (2).jpg", "7 Mug/front-thumb-thumb.jpg"]
    assert _size_of(archive, "7 Mug/front.jpg") == (400, 300)
    assert _size_of(archive, "7 Mug/front-thumb.jpg") == (16, 12)
    assert _size_of(archive, "7 Mug/front-medium.jpg") == (100, 75)
    assert _size_of(archive, "7 Mug/logo-thumb.webp") == (16, 16)
    assert _size_of(archive, "7 Mug/front-thumb (2).jpg") == (64, 48)
    products = client.get(f"/api/v1/batches/{batch['id']}/products").get_json()["items"]
    stored = requests.get(products[0]["images"][0]["sizes"]["medium"], timeout=5).content
    assert archive.read("7 Mug/front-medium.jpg") == stored


def test_without_full_size_the_zip_names_outputs_by_their_size(client, http_server, work):
    http_server.routes["/front.jpg"] = Route(images.jpeg((400, 300)))
    http_server.routes["/tiny.jpg"] = Route(images.jpeg((60, 45)))
    text = ("S. No.,Product Name,Input Image Urls\n"
            f'1,Cup,"{http_server.url("/front.jpg")},{http_server.url("/tiny.jpg")}"\n')
    batch = upload(client, text, sizes="thumb=50,large=200", full_size="false").get_json()
    work()

    archive = _zip(client, batch["id"])
    assert archive.namelist() == ["1 Cup/front-thumb.jpg", "1 Cup/front-large.jpg",
                                  "1 Cup/tiny-thumb.jpg", "1 Cup/tiny-large.jpg"]
    assert _size_of(archive, "1 Cup/front-large.jpg") == (200, 150)
    assert _size_of(archive, "1 Cup/tiny-large.jpg") == (60, 45)  # never enlarged


def test_sizes_of_one_edge_are_one_object_and_a_small_image_is_named_after_the_largest(
        client, http_server, work, s3, env):
    http_server.routes["/front.jpg"] = Route(images.jpeg((400, 300)))
    http_server.routes["/tiny.jpg"] = Route(images.jpeg((60, 45)))
    text = ("S. No.,Product Name,Input Image Urls\n"
            f'1,Cup,"{http_server.url("/front.jpg")},{http_server.url("/tiny.jpg")}"\n')
    batch = upload(client, text, sizes="a=100,b=100,c=200", full_size="false").get_json()
    work()

    front, tiny = client.get(f"/api/v1/batches/{batch['id']}/products").get_json()[
        "items"][0]["images"]
    assert front["sizes"]["b"] == front["sizes"]["a"] != front["output_url"]
    assert front["sizes"]["a"].endswith("/front-a.jpg")  # named after the first of the edge
    assert set(tiny["sizes"].values()) == {tiny["output_url"]}  # 60 px: smaller than every size
    keys = sorted(o["Key"].rsplit("/", 1)[1] for o in s3.list_objects_v2(
        Bucket=env.s3_bucket, Prefix=f"outputs/{batch['id']}/")["Contents"])
    assert keys == ["front-a.jpg", "front-c.jpg", "tiny.jpg"]  # each edge encoded and stored once

    archive = _zip(client, batch["id"])
    # the tiny image's only output counts as the largest size, so it is named after it
    assert archive.namelist() == ["1 Cup/front-a.jpg", "1 Cup/front-c.jpg", "1 Cup/tiny-c.jpg"]
    assert _size_of(archive, "1 Cup/front-a.jpg") == (100, 75)
    assert _size_of(archive, "1 Cup/tiny-c.jpg") == (60, 45)


def test_a_batch_without_processed_images_answers_409_and_unknown_ids_404(client, work):
    batch = upload(client, "S. No.,Product Name,Input Image Urls\n1,Mug,http://127.0.0.1:9/x.jpg\n"
                   ).get_json()
    queued = client.get(f"/api/v1/batches/{batch['id']}/outputs.zip")
    assert queued.status_code == 409 and queued.mimetype == "application/problem+json"
    assert queued.get_json()["type"] == "/problems/no-outputs"
    work()  # the only image fails: still nothing to put in a ZIP
    failed = client.get(f"/api/v1/batches/{batch['id']}/outputs.zip").get_json()
    assert failed["batch_status"] == "failed" and "no processed image" in failed["detail"]
    assert client.get("/api/v1/batches/bat_nope/outputs.zip").status_code == 404


def test_entry_names_are_safe_and_unique():
    names = ArchiveNames()
    assert names.name(1, "Cup", "https://x/a/CON.jpg", 1, "jpg") == "1 Cup/image-1.jpg"
    assert names.name(1, "Cup", "https://x/b/photo.JPG", 2, "jpg") == "1 Cup/photo.jpg"
    assert names.name(1, "Cup", "https://x/c/Photo.png", 3, "webp") == "1 Cup/Photo.webp"
    assert names.name(1, "Cup", "https://x/d/photo.jpeg", 4, "jpg") == "1 Cup/photo (2).jpg"
    assert names.name(2, "../../etc", "https://x/", 1, "jpg") == "2 .._.._etc/image-1.jpg"
    assert names.name(1, "Cup", "https://x/e/photo.jpg", 5, "jpg", "thumb") == "1 Cup/photo-thumb.jpg"
    assert names.name(1, "Cup", "https://x/f/photo-thumb.jpg", 6, "jpg") == (
        "1 Cup/photo-thumb (2).jpg")
    assert clean_part("a\x00b\nc" + "x" * 200, "f") == "a b c" + "x" * 75
    assert clean_part(" . ", "fallback") == "fallback"
