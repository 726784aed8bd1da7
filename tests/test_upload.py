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
    (b"\xef\xbb\xbf", 400, ["empty"]),            # only a UTF-8 BOM
    (b"\xef\xbb\xbf \r\n\r\n", 400, ["empty"]),  # a BOM and blank lines
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", 415, ["binary"]),
    ("S. No.,Product Name,Input Image Urls\n1,Caf\u00e9,http://x/a.jpg\n".encode("latin-1"),
     415, ["UTF-8", "0xe9"]),
    (b"\n1,Mug,http://x/a.jpg\n", 422, ["header"]),
    (b"S. No.,Name\n1,Mug\n", 422, ["Input Image Urls"]),
    (b"Serial,Product Name,Input Image Urls\n1,Mug,http://x/a.jpg\n", 422, ["S. No."]),
    (b"sno,name,name,urls\n1,a,b,http://x/a.jpg\n", 422, ["twice"]),
    (HEADER.encode(), 422, ["no data rows"]),
    ((HEADER + ",,\n").encode(), 422, ["no data rows"]),            # only empty cells
    ((HEADER + " , ,\r\n,,\r\n").encode(), 422, ["no data rows"]),
    (b"sno;name;urls\n;;\n", 422, ["no data rows"]),
    ((HEADER.strip() + ",Output Image Urls\n1,Mug,http://x/a.jpg,old\n").encode(), 422,
     ["'Output Image Urls'", "column 4", "rename"]),
])
def test_bad_files_are_refused_with_a_reason(client, s3, env, body, status, words):
    assert_problem(post_raw(client, body), status, *words)
    # nothing stored: no upload object and no batch
    assert s3.list_objects_v2(Bucket=env.s3_bucket).get("KeyCount", 0) == 0
    assert client.get("/api/v1/batches").get_json()["items"] == []


def test_an_output_column_in_the_input_is_named(client):
    body = assert_problem(post_raw(client, b"sno,output_image_urls,name,urls\n1,a,b,c\n"), 422)
    assert body["type"] == "/problems/bad-header" and body["column"] == "output_image_urls"


def test_missing_column_names_each_missing_one(client):
    body = assert_problem(post_raw(client, b"id,title\n1,x\n"), 422)
    assert body["missing_columns"] == ["S. No.", "Product Name", "Input Image Urls"]


def test_too_large_is_413_and_stores_nothing(client, s3, env, monkeypatch):
    from infra.settings import get_settings
    monkeypatch.setattr(get_settings(), "max_upload_bytes", 200 * 1024)
    rows = "".join(f"{i},Product {i},http://x/{i}.jpg\n" for i in range(1, 10000))
    assert_problem(post_raw(client, (HEADER + rows).encode()), 413, "MAX_UPLOAD_BYTES")
    assert s3.list_objects_v2(Bucket=env.s3_bucket).get("KeyCount", 0) == 0


def test_the_upload_limit_is_the_apps_own_setting(env, s3):
    from api import create_app
    small = create_app(env.model_copy(update={"max_upload_bytes": 2000}), prepare_stores=False)
    rows = "".join(f"{i},Product {i},http://x/{i}.jpg\n" for i in range(1, 200))
    body = (HEADER + rows).encode()
    assert_problem(post_raw(small.test_client(), body), 413, "(2000 bytes)")


def test_wrong_content_type_and_missing_field(client):
    assert_problem(post_raw(client, b"{}", content_type="application/json"), 415, "text/csv")
    response = client.post("/api/v1/batches", data={"other": (io.BytesIO(b"x"), "a.csv")},
                           content_type="multipart/form-data")
    assert_problem(response, 400, "'file'")


def test_a_field_given_twice_or_as_the_wrong_kind_of_part_is_refused_by_name(client, s3, env):
    csv_file = lambda: (io.BytesIO((HEADER + "1,Mug,http://x/a.jpg\n").encode()), "p.csv")
    hook, other = "http://127.0.0.1:9/a", "http://127.0.0.1:9/b"
    cases = [  # (query, form fields, status, kind, field, words)
        ("", {"file": [csv_file(), csv_file()]}, 400, "invalid-file", "file", "more than once"),
        ("", {"sizes": (io.BytesIO(b"t=100"), "sizes.txt")}, 422, "invalid-sizes", "sizes",
         "file part"),
        ("", {"full_size": (io.BytesIO(b"false"), "f.txt"), "sizes": "t=100"}, 422,
         "invalid-full-size", "full_size", "file part"),
        ("", {"webhook_url": [hook, other]}, 422, "invalid-webhook-url", "webhook_url",
         "more than once"),
        ("?webhook_url=" + hook, {"webhook_url": other}, 422, "invalid-webhook-url",
         "webhook_url", "more than once"),
    ]
    for query, fields, status, kind, field, words in cases:
        fields.setdefault("file", csv_file())
        response = client.post("/api/v1/batches" + query, data=fields,
                               content_type="multipart/form-data")
        problem = assert_problem(response, status, words, f"{field}:")
        assert problem["type"].endswith("/" + kind) and problem["field"] == field, problem
    raw = post_raw(client, (HEADER + "1,Mug,http://x/a.jpg\n").encode(),
                   query=f"?webhook_url={hook}&webhook_url={other}")
    assert_problem(raw, 422, "more than once")["field"] == "webhook_url"
    plain = client.post("/api/v1/batches", data={"file": HEADER + "1,Mug,http://x/a.jpg\n"},
                        content_type="multipart/form-data")
    assert assert_problem(plain, 400, "plain form field")["type"].endswith("/missing-file")
    assert "Contents" not in s3.list_objects_v2(Bucket=env.s3_bucket)  # nothing was stored


def test_a_huge_value_is_quoted_cut_short_in_every_problem(client):
    huge = "x" * 100_000
    body = (HEADER + "1,Mug,http://x/a.jpg\n").encode()
    answers = {
        "sizes": upload(client, body.decode(), sizes="thumb=" + huge),
        "sizes name": upload(client, body.decode(), sizes=huge + "=200"),
        "full_size": upload(client, body.decode(), sizes="t=100", full_size=huge),
        "created_after": client.get("/api/v1/batches?created_after=" + huge[:8000]),
        "batch id": client.get("/api/v1/batches/" + huge[:8000]),
        "event": client.post("/api/v1/webhooks",
                             json={"url": "http://127.0.0.1:9/h", "events": [huge]}),
        "field": client.post("/api/v1/webhooks", json={"url": "http://127.0.0.1:9/h",
                                                       "events": ["batch.completed"], huge: 1}),
        "header": post_raw(client, ("Name," + ",".join([huge[:10_000]] * 3)
                                    + "\n1,a,b,c\n").encode()),
        "content type": post_raw(client, body, content_type="application/" + huge[:4000]),
    }
    for what, answer in answers.items():
        assert 400 <= answer.status_code < 500, what
        detail = answer.get_json()["detail"]
        assert "xxxxx" in detail and len(detail) < 400, (what, len(detail))  # quoted, cut
        if what not in ("created_after", "batch id"):  # (`instance` is the path asked for)
            assert len(answer.get_data()) < 2000, (what, len(answer.get_data()))
    assert "100,000 characters" in answers["sizes"].get_json()["detail"]


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
    ("cr-only", "S. No.,Product Name,Input Image Urls,Notes\r"
                "1,Mug,http://h/a.jpg,n1\r2,Cup,http://h/b.jpg,n2\r"),
    ("bom-cr-only-semicolon", "\ufeffS. No.;Product Name;Input Image Urls;Notes\r"
                              "1;Mug;http://h/a.jpg;n1\r2;Cup;http://h/b.jpg;n2"),
    ("quoted-newline-in-header", '"S. No.","Product\nName","Input Image Urls",Notes\n'
                                 "1,Mug,http://h/a.jpg,n1\n2,Cup,http://h/b.jpg,n2\n"),
])
def test_dialects_parse_to_the_same_rows(client, work, name, raw):
    response = post_raw(client, raw.encode())
    assert response.status_code == 202, response.get_json()
    batch_id = response.get_json()["id"]
    work()
    products = client.get(f"/api/v1/batches/{batch_id}/products").get_json()["items"]
    assert [(p["serial_no"], p["product_name"], p["input_image_urls"]) for p in products] == [
        (1, "Mug", ["http://h/a.jpg"]), (2, "Cup", ["http://h/b.jpg"])]
    output = client.get(f"/api/v1/batches/{batch_id}/output.csv?delimiter=input&bom=input")
    # asked for in the input's dialect: its delimiter, and a BOM when it had one
    assert output.get_data().startswith(b"\xef\xbb\xbf") == raw.startswith("\ufeff")
    delimiter = ";" if "semicolon" in name else "\t" if name == "tab" else ","
    rows = read_csv(output, delimiter)
    assert rows[0][-1] == "Notes" and [r[-1] for r in rows[1:]] == ["n1", "n2"]
    assert rows[0][0] == raw.removeprefix("\ufeff").split(delimiter)[0].strip('"')
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


def test_cr_only_file_is_accepted_and_parsed_with_its_line_numbers(client, work):
    response = post_raw(client, b"sno,name,urls\r1,a,http://x/a.jpg\r2,b,http://x/b.jpg\r")
    assert response.status_code == 202, response.get_data(as_text=True)
    batch_id = response.get_json()["id"]
    work()
    products = client.get(f"/api/v1/batches/{batch_id}/products").get_json()["items"]
    assert [(p["line"], p["serial_no"], p["product_name"]) for p in products] == [
        (2, 1, "a"), (3, 2, "b")]
    batch = client.get(f"/api/v1/batches/{batch_id}").get_json()
    assert batch["rows"] == {"total": 2, "valid": 2, "invalid": 0, "done_reading": True}


def test_a_header_spanning_lines_counts_its_lines(client, work):
    raw = ('"S. No.","Product\r\nName","Input\nImage\rUrls"\r\n'
           "1,Mug,http://h/a.jpg\r\n2,Cup,http://h/b.jpg\r\n")
    response = post_raw(client, raw.encode())
    assert response.status_code == 202, response.get_data(as_text=True)
    batch_id = response.get_json()["id"]
    work()
    products = client.get(f"/api/v1/batches/{batch_id}/products").get_json()["items"]
    assert [(p["line"], p["product_name"]) for p in products] == [(5, "Mug"), (6, "Cup")]
    rows = read_csv(client.get(f"/api/v1/batches/{batch_id}/output.csv"))
    assert rows[0] == ["S. No.", "Product\r\nName", "Input\nImage\rUrls", "Output Image Urls"]


def test_a_header_that_is_not_readable_csv_is_422_bad_header(client, s3, env):
    import csv
    limit = csv.field_size_limit(16)  # any csv.Error in the header: here, a field too long
    try:
        response = post_raw(client, (HEADER.replace("Product Name", "Product Name" + " " * 20)
                                     + "1,Mug,http://x/a.jpg\n").encode())
    finally:
        csv.field_size_limit(limit)
    body = assert_problem(response, 422, "header")
    assert body["type"] == "/problems/bad-header"
    assert s3.list_objects_v2(Bucket=env.s3_bucket).get("KeyCount", 0) == 0


def test_worker_reads_the_header_with_the_same_parser():
    import csv

    from schemas.csv_format import Dialect, parse_header
    from worker.csv_reader import CsvFileError, read_csv as read_stored

    for raw, dialect in (("sno,name,urls\r1,a,http://x/a.jpg\r", Dialect(",", bom=False)),
                         ("\ufeffsno;name;urls\n1;a;http://x/a.jpg", Dialect(";", bom=True)),
                         ('"s\nno",name,"ur\r\nls"\r\n1,a,http://x/a.jpg\r\n', Dialect(",")),
                         ("sno\tname\turls\n1\ta\thttp://x/a.jpg\n", Dialect("\t"))):
        header, rows, read_dialect = read_stored(io.BytesIO(raw.encode()))
        parsed = parse_header(raw.removeprefix("\ufeff"))
        assert header == parsed.cells and len(header) == 3
        assert read_dialect == dialect
        assert [cells for _, cells, _ in rows] == [["1", "a", "http://x/a.jpg"]]
    limit = csv.field_size_limit(4)
    try:
        with pytest.raises(CsvFileError, match="header"):
            read_stored(io.BytesIO(b"sno,name,urls\n1,a,b\n"))
    finally:
        csv.field_size_limit(limit)


def test_a_huge_multiline_header_is_read_in_linear_time():
    import time

    from worker.csv_reader import read_csv as read_stored
    raw = '"S. No.' + "\n" * 30000 + '",Product Name,Input Image Urls\n1,a,http://x/a.jpg\n'
    started = time.monotonic()
    header, rows, _ = read_stored(io.BytesIO(raw.encode()))
    assert header[1:] == ["Product Name", "Input Image Urls"]
    assert [(line, cells) for line, cells, _ in rows] == [(30002, ["1", "a", "http://x/a.jpg"])]
    assert time.monotonic() - started < 2


# --- filenames --------------------------------------------------------------------------------

def _disposition_name(response) -> str:
    from werkzeug.http import parse_options_header
    value = response.headers["Content-Disposition"]
    assert "\r" not in value and "\n" not in value
    kind, options = parse_options_header(value)
    assert kind == "attachment"
    return options["filename"]


def test_filename_with_control_characters_is_cleaned(client, work):
    body = (HEADER + "1,Mug,http://x/a.jpg\n").encode()
    response = post_raw(client, body, query="?filename=x%0d%0aSet-Cookie:%20a=b.csv")
    assert response.status_code == 202
    batch = response.get_json()
    assert batch["filename"] == "xSet-Cookie: a=b.csv"
    work()
    for link, suffix in (("output_csv", "-output.csv"), ("errors_csv", "-errors.csv")):
        answer = client.get(batch["links"][link])
        answer.get_data()
        assert answer.status_code == 200, answer.get_data(as_text=True)
        assert "Set-Cookie" not in answer.headers
        assert _disposition_name(answer) == "xSet-Cookie: a=b" + suffix


@pytest.mark.parametrize("via, given, stored", [
    ("query", 'my "best" products.csv', 'my "best" products.csv'),
    ("query", "C:\\Users\\me\\Desktop\\prods.csv", "prods.csv"),
    ("query", "a\x00b\x7f\u2028\u202ec.csv", "abc.csv"),
    ("query", "Crème brûlée 皿.csv", "Crème brûlée 皿.csv"),
    ("multipart", "Crème brûlée 皿.csv", "Crème brûlée 皿.csv"),
    ("multipart", "../../etc/passwd.csv", "passwd.csv"),
    ("multipart", "a\tb\x1bc.csv", "abc.csv"),
])
def test_filenames_are_stored_as_basenames_and_sent_back_quoted(client, work, via, given, stored):
    from urllib.parse import quote
    body = (HEADER + "1,Mug,http://x/a.jpg\n").encode()
    if via == "query":
        response = post_raw(client, body, query="?filename=" + quote(given))
    else:
        response = client.post("/api/v1/batches", content_type="multipart/form-data",
                               data={"file": (io.BytesIO(body), given)})
    assert response.status_code == 202, response.get_data(as_text=True)
    batch = response.get_json()
    assert batch["filename"] == stored
    work()
    answer = client.get(batch["links"]["output_csv"])
    answer.get_data()
    assert answer.status_code == 200
    assert _disposition_name(answer) == stored.rsplit(".", 1)[0] + "-output.csv"
    value = answer.headers["Content-Disposition"]
    value.encode("ascii")  # the plain filename= is an ASCII fallback, filename* the exact name
    assert "filename*=UTF-8''" in value


def test_long_filenames_are_capped(client):
    body = (HEADER + "1,Mug,http://x/a.jpg\n").encode()
    response = post_raw(client, body, query="?filename=" + "n" * 20000 + ".csv")
    assert response.status_code == 202
    assert len(response.get_json()["filename"]) == 255
    blank = post_raw(client, body, query="?filename=%0d%0a")
    assert blank.status_code == 202 and blank.get_json()["filename"] is None


# --- 413 --------------------------------------------------------------------------------------

def test_both_413_paths_share_one_problem_type(client, monkeypatch):
    from infra.settings import get_settings
    monkeypatch.setattr(get_settings(), "max_upload_bytes", 200 * 1024)
    rows = "".join(f"{i},Product {i},http://x/{i}.jpg\n" for i in range(1, 10000))
    streamed = assert_problem(post_raw(client, (HEADER + rows).encode()), 413)
    client.application.config["MAX_CONTENT_LENGTH"] = 100 * 1024
    declared = assert_problem(client.post("/api/v1/batches", content_type="multipart/form-data",
                                          data={"file": (io.BytesIO((HEADER + rows).encode()),
                                                         "big.csv")}), 413)
    for body in (streamed, declared):
        assert body["type"] == "/problems/too-large" and body["title"] == "Upload too large"
        assert "MAX_UPLOAD_BYTES" in body["detail"]
