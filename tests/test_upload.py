"""Upload checks: every refusal is a specific problem+json, and accepted dialects all parse."""
from __future__ import annotations

import io

import pytest

from tests.test_flow import read_csv, upload

HEADER = "S. No.,Product Name,Input Image Urls\n"


def post_raw(client, body: bytes, content_type="text/csv", query=""):
    return client.post("/api/v1/batches" + query, data=body, content_type=content_type)


def assert_problem(response, status: int, *words: str) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    body = response.get_json()
    assert body["status"] == status and body["title"] and body["type"].startswith("/problems/")
    for word in words:
        assert word in body["detail"], body
    return body


@pytest.mark.parametrize("body, status, words", [
    (b"", 400, ["empty"]),
    (b"   \n\n", 400, ["empty"]),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", 415, ["binary"]),
    ("S. No.,Product Name,Input Image Urls\n1,Caf\u00e9,http://x/a.jpg\n".encode("latin-1"),
     415, ["UTF-8", "0xe9"]),
    (b"\n1,Mug,http://x/a.jpg\n", 422, ["header"]),
    (b"S. No.,Name\n1,Mug\n", 422, ["Input Image Urls"]),
    (b"Serial,Product Name,Input Image Urls\n1,Mug,http://x/a.jpg\n", 422, ["S. No."]),
    (b"sno,name,name,urls\n1,a,b,http://x/a.jpg\n", 422, ["twice"]),
    (HEADER.encode(), 422, ["no data rows"]),
])
def test_bad_files_are_refused_with_a_reason(client, s3, env, body, status, words):
    assert_problem(post_raw(client, body), status, *words)
    # nothing stored: no upload object and no batch
    assert s3.list_objects_v2(Bucket=env.s3_bucket).get("KeyCount", 0) == 0
    assert client.get("/api/v1/batches").get_json()["items"] == []


def test_missing_column_names_each_missing_one(client):
    body = assert_problem(post_raw(client, b"id,title\n1,x\n"), 422)
    assert body["missing_columns"] == ["S. No.", "Product Name", "Input Image Urls"]


def test_too_large_is_413_and_stores_nothing(client, s3, env, monkeypatch):
    from infra.settings import get_settings
    monkeypatch.setattr(get_settings(), "max_upload_bytes", 200 * 1024)
    rows = "".join(f"{i},Product {i},http://x/{i}.jpg\n" for i in range(1, 10000))
    assert_problem(post_raw(client, (HEADER + rows).encode()), 413, "MAX_UPLOAD_BYTES")
    assert s3.list_objects_v2(Bucket=env.s3_bucket).get("KeyCount", 0) == 0


def test_wrong_content_type_and_missing_field(client):
    assert_problem(post_raw(client, b"{}", content_type="application/json"), 415, "text/csv")
    response = client.post("/api/v1/batches", data={"other": (io.BytesIO(b"x"), "a.csv")},
                           content_type="multipart/form-data")
    assert_problem(response, 400, "'file'")


def test_bad_webhook_url_is_422(client):
    body = (HEADER + "1,Mug,http://x/a.jpg\n").encode()
    assert_problem(post_raw(client, body, query="?webhook_url=ftp://x/y"), 422, "webhook_url")


def test_raw_body_upload_is_accepted_and_stored_with_its_hash(client, s3, env):
    import hashlib
    body = (HEADER + "1,Mug,http://x/a.jpg\n").encode()
    response = post_raw(client, body, query="?filename=mugs.csv")
    assert response.status_code == 202
    batch = response.get_json()
    assert batch["filename"] == "mugs.csv"
    stored = s3.get_object(Bucket=env.s3_bucket, Key=f"uploads/{batch['id']}.csv")["Body"].read()
    assert stored == body
    from infra import db
    assert db.batches().find_one({"_id": batch["id"]})["csv_sha256"] == hashlib.sha256(body).hexdigest()


def test_unknown_batch_is_404_problem(client):
    for path in ("", "/products", "/output.csv", "/errors.csv"):
        assert_problem(client.get(f"/api/v1/batches/bat_nope{path}"), 404, "bat_nope")


@pytest.mark.parametrize("name, raw", [
    ("bom-crlf", "\ufeffS. No.,Product Name,Input Image Urls,Notes\r\n"
                 "1,Mug,http://h/a.jpg,n1\r\n2,Cup,http://h/b.jpg,n2\r\n"),
    ("semicolon", "S. No.;Product Name;Input Image Urls;Notes\n"
                  "1;Mug;http://h/a.jpg;n1\n2;Cup;http://h/b.jpg;n2\n"),
    ("tab", "S. No.\tProduct Name\tInput Image Urls\tNotes\n"
            "1\tMug\thttp://h/a.jpg\tn1\n2\tCup\thttp://h/b.jpg\tn2\n"),
    ("aliases", "serial_no,name,urls,Notes\n1,Mug,http://h/a.jpg,n1\n2,Cup,http://h/b.jpg,n2\n"),
])
def test_dialects_parse_to_the_same_rows(client, work, name, raw):
    response = post_raw(client, raw.encode())
    assert response.status_code == 202, response.get_json()
    batch_id = response.get_json()["id"]
    work()
    products = client.get(f"/api/v1/batches/{batch_id}/products").get_json()["items"]
    assert [(p["serial_no"], p["product_name"], p["input_image_urls"]) for p in products] == [
        (1, "Mug", ["http://h/a.jpg"]), (2, "Cup", ["http://h/b.jpg"])]
    rows = read_csv(client.get(f"/api/v1/batches/{batch_id}/output.csv"))
    assert rows[0][-1] == "Notes" and [r[-1] for r in rows[1:]] == ["n1", "n2"]
    assert rows[0][3] == "Output Image Urls"


def test_quotes_commas_and_non_ascii_names_survive(client, work):
    raw = ('S. No.,Product Name,Input Image Urls,Description\n'
           '1,"Mug, ""Large""",http://h/a.jpg,"two\nlines"\n'
           '2,Crème brûlée 皿 🍮,http://h/b.jpg,ünïcode\n')
    response = upload(client, raw)
    assert response.status_code == 202
    batch_id = response.get_json()["id"]
    work()
    products = client.get(f"/api/v1/batches/{batch_id}/products").get_json()["items"]
    assert [p["product_name"] for p in products] == ['Mug, "Large"', "Crème brûlée 皿 🍮"]
    rows = read_csv(client.get(f"/api/v1/batches/{batch_id}/output.csv"))
    assert rows[1][1] == 'Mug, "Large"' and rows[1][4] == "two\nlines"
    assert rows[2][1] == "Crème brûlée 皿 🍮" and rows[2][4] == "ünïcode"
    # the second record starts on physical line 4 (the first spans lines 2-3)
    assert products[1]["line"] == 4
