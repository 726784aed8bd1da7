"""GET /batches/{id}/outputs.zip: every output image, named by product and input file name."""
from __future__ import annotations

import io
import zipfile

import requests

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
    assert clean_part("a\x00b\nc" + "x" * 200, "f") == "a b c" + "x" * 75
    assert clean_part(" . ", "fallback") == "fallback"
