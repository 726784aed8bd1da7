"""End to end: upload a CSV, run the worker, read the batch, its products and its CSVs."""
from __future__ import annotations

import csv
import io

import requests
from PIL import Image

from tests.servers import Route


def jpeg(width=40, height=30, quality=90, color=(200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, "JPEG", quality=quality)
    return out.getvalue()


def reference_q50_tables() -> dict:
    """The quantization tables Pillow writes at quality 50 (what every output must carry)."""
    out = io.BytesIO()
    Image.new("RGB", (8, 8)).save(out, "JPEG", quality=50)
    return Image.open(out).quantization


def upload(client, text: str, **kwargs):
    return client.post("/api/v1/batches", data={"file": (io.BytesIO(text.encode()), "products.csv"),
                                                **kwargs}, content_type="multipart/form-data")


def read_csv(response) -> list[list[str]]:
    return list(csv.reader(io.StringIO(response.get_data(as_text=True))))


def test_whole_flow(client, http_server, work):
    http_server.routes["/a.jpg"] = Route(jpeg(40, 30), headers={"Content-Type": "image/jpeg"})
    http_server.routes["/b.jpg"] = Route(jpeg(64, 48), headers={"Content-Type": "image/jpeg"})
    a, b, missing = http_server.url("/a.jpg"), http_server.url("/b.jpg"), http_server.url("/no.jpg")
    text = ("S. No.,Product Name,Input Image Urls,Colour\n"
            f'1,"Shirt, red","{a},{b}",red\n'
            f'2,Mug,"{missing},{a}",blue\n'
            "3,,http://x/y.jpg,green\n")
    response = upload(client, text)
    assert response.status_code == 202, response.get_json()
    batch = response.get_json()
    assert response.headers["Location"] == f"/api/v1/batches/{batch['id']}"
    assert batch["status"] == "queued"

    work()

    batch = client.get(f"/api/v1/batches/{batch['id']}").get_json()
    assert batch["status"] == "completed_with_errors"
    assert batch["rows"] == {"total": 3, "valid": 2, "invalid": 1}
    assert batch["images"] == {"total": 4, "processed": 3, "failed": 1}
    assert batch["progress"] == 1.0

    rows = read_csv(client.get(batch["links"]["output_csv"]))
    assert rows[0] == ["S. No.", "Product Name", "Input Image Urls", "Output Image Urls", "Colour"]
    assert [r[0] for r in rows[1:]] == ["1", "2", "3"]
    assert rows[1][1] == "Shirt, red" and rows[1][4] == "red"
    out_a, out_b = rows[1][3].split(",")
    assert rows[2][3].split(",") == ["", out_a]  # failed slot empty, same URL same output
    assert rows[3][3] == ""
    for url, size in ((out_a, (40, 30)), (out_b, (64, 48))):
        fetched = requests.get(url, timeout=5)
        assert fetched.status_code == 200
        image = Image.open(io.BytesIO(fetched.content))
        assert image.format == "JPEG" and image.size == size
        assert image.quantization == reference_q50_tables()

    errors = read_csv(client.get(batch["links"]["errors_csv"]))
    assert errors[0] == ["Line", "S. No.", "Input Image Url", "Error"]
    assert errors[1][:3] == ["3", "2", missing] and "404" in errors[1][3]
    assert errors[2][:2] == ["4", "3"] and "Product Name" in errors[2][3]

    products = client.get(f"/api/v1/batches/{batch['id']}/products").get_json()
    assert [p["serial_no"] for p in products["items"]] == [1, 2]
    assert products["items"][1]["status"] == "completed_with_errors"
    assert products["items"][1]["images"][0]["status"] == "failed"
    assert products["items"][0]["images"][0]["bytes_in"] > 0
