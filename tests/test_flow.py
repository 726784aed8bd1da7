"""End to end: upload a CSV, run the worker, read the batch, its products and its CSVs."""
from __future__ import annotations

import csv
import io

import requests
from PIL import Image

from infra import settings as settings_module
from tests.image_factory import photo
from tests.servers import Route


def jpeg(width=40, height=30, quality=90, color=(200, 30, 30)) -> bytes:
    """A photo-like JPEG tinted with `color` (a flat one would be smaller as it came than at q50,
    and be kept as it is)."""
    out = io.BytesIO()
    size = (width, height)
    Image.blend(photo(size), Image.new("RGB", size, color), 0.3).save(out, "JPEG", quality=quality)
    return out.getvalue()


def reference_q50_tables() -> dict:
    """The quantization tables Pillow writes at quality 50 (what every output must carry)."""
    out = io.BytesIO()
    Image.new("RGB", (8, 8)).save(out, "JPEG", quality=50)
    return Image.open(out).quantization


def upload(client, text: str, **kwargs):
    return client.post("/api/v1/batches", data={"file": (io.BytesIO(text.encode()), "products.csv"),
                                                **kwargs}, content_type="multipart/form-data")


def read_csv(response, delimiter: str = ",") -> list[list[str]]:
    """The rows of a downloaded CSV (written in its input's dialect: pass a `;` or tab file's)."""
    text = response.get_data().decode("utf-8-sig")
    return list(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter))


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
    assert batch["rows"] == {"total": 3, "valid": 2, "invalid": 1, "done_reading": True}
    assert batch["images"] == {"total": 4, "processed": 3, "failed": 1, "reused": 0}
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
    assert errors[0] == ["Line", "S. No.", "Input Image Url", "Error", "Code"]
    assert errors[1][:3] == ["3", "2", missing] and "404" in errors[1][3]
    assert errors[1][4] == "http_status"
    assert errors[2][:2] == ["4", "3"] and "Product Name" in errors[2][3]
    assert errors[2][4] == "invalid_row"

    products = client.get(f"/api/v1/batches/{batch['id']}/products").get_json()
    assert [p["serial_no"] for p in products["items"]] == [1, 2]
    assert products["items"][1]["status"] == "completed_with_errors"
    assert products["items"][1]["images"][0]["status"] == "failed"
    assert products["items"][1]["images"][0]["code"] == "http_status"
    assert products["items"][1]["images"][1]["code"] is None
    assert products["items"][0]["images"][0]["bytes_in"] > 0


def test_an_image_that_q50_would_make_larger_is_stored_as_it_came_without_metadata(
        client, http_server, work, monkeypatch):
    exif = Image.Exif()
    exif[0x010F] = "SecretCam"
    out = io.BytesIO()
    photo((320, 240)).save(out, "JPEG", quality=30, exif=exif.tobytes())
    small = out.getvalue()
    http_server.routes["/small.jpg"] = Route(small)
    http_server.routes["/big.jpg"] = Route(jpeg(320, 240, quality=95))
    text = ("S. No.,Product Name,Input Image Urls\n"
            f'1,Mug,"{http_server.url("/small.jpg")},{http_server.url("/big.jpg")}"\n')

    def run_batch():
        batch = upload(client, text).get_json()
        work()
        return client.get(f"/api/v1/batches/{batch['id']}/products").get_json()["items"][0]

    kept, reencoded = run_batch()["images"]
    assert kept["kept_original"] is True and reencoded["kept_original"] is False
    assert kept["bytes_out"] < kept["bytes_in"] == len(small)
    stored = requests.get(kept["output_url"], timeout=5).content
    assert len(stored) == kept["bytes_out"] and b"SecretCam" not in stored
    assert Image.open(io.BytesIO(stored)).tobytes() == Image.open(io.BytesIO(small)).tobytes()
    assert Image.open(io.BytesIO(requests.get(reencoded["output_url"], timeout=5).content)
                      ).quantization == reference_q50_tables()

    monkeypatch.setenv("KEEP_ORIGINAL_WHEN_SMALLER", "false")
    settings_module.get_settings.cache_clear()
    again = run_batch()["images"][0]
    assert again["kept_original"] is False and again["bytes_out"] >= len(small) - 200
    assert Image.open(io.BytesIO(requests.get(again["output_url"], timeout=5).content)
                      ).quantization == reference_q50_tables()


def test_every_failed_image_carries_a_stable_code_in_the_api_the_csv_and_the_metrics(
        client, http_server, work):
    from tests import image_factory as make
    from tests.helpers import metric
    cases = {  # path -> (body, status, expected code)
        "/gone.jpg": (b"gone", 410, "http_status"),
        "/page.jpg": (b"<html>a web page</html>", 200, "not_an_image"),
        "/cut.jpg": (make.truncated_jpeg(), 200, "broken_image"),
        "/huge.png": (make.png_header_claiming(20_000, 20_000), 200, "too_many_pixels"),
    }
    for path, (body, status, _) in cases.items():
        http_server.routes[path] = Route(body, status)
    urls = [http_server.url(path) for path in cases] + ["ftp://example.com/x.jpg"]
    text = "S. No.,Product Name,Input Image Urls\n" + "".join(
        f"{n},Item {n},{url}\n" for n, url in enumerate(urls, 1))
    batch = upload(client, text).get_json()
    work()

    expected = [code for _, _, code in cases.values()]
    products = client.get(f"/api/v1/batches/{batch['id']}/products").get_json()["items"]
    assert [p["images"][0]["code"] for p in products] == expected
    errors = read_csv(client.get(f"/api/v1/batches/{batch['id']}/errors.csv"))
    assert [row[4] for row in errors[1:]] == expected + ["invalid_row"]  # ftp: a rejected row
    body = client.get("/metrics").get_data(as_text=True)
    for code in expected:
        assert metric(body, "batchpress_images_total", result="failed", reason=code) == 1, code


def test_errors_csv_cells_never_run_as_spreadsheet_formulas(client, work):
    serials = ["=7", "@11", "+3", "-2", "\t=1+1", "\r=2"]
    text = "S. No.,Product Name,Input Image Urls\n" + "".join(
        f'"{serial}",P,http://h.example/a.jpg\n' for serial in serials)
    batch = upload(client, text).get_json()
    work()
    errors = read_csv(client.get(batch["links"]["errors_csv"]))
    # (a cell's surrounding whitespace is not kept in errors.csv: "\t=1+1" is shown as "=1+1")
    assert [row[1] for row in errors[1:]] == ["'" + serial.strip() for serial in serials]
    assert not any(cell.startswith(("=", "+", "-", "@", "\t", "\r"))
                   for row in errors for cell in row)
    output = read_csv(client.get(batch["links"]["output_csv"]))  # the input's rows, as they came
    assert [row[0] for row in output[1:]] == serials


def test_every_output_row_has_the_headers_cells_however_short_the_input_row(
        client, http_server, work):
    http_server.routes["/a.jpg"] = Route(jpeg(64, 48))
    a = http_server.url("/a.jpg")
    text = ("S. No.;Product Name;Input Image Urls;Colour;Brand\n"
            f"1;A;{a};red;acme\n"
            "4;D\n"  # too few cells: rejected
            f"2;B;{a}\n"  # accepted, its last two cells missing
            f"3;C;{a};blue;acme;extra\n")  # one cell more than the header: kept
    batch = upload(client, text, sizes="thumb=32").get_json()
    work()
    rows = read_csv(client.get(batch["links"]["output_csv"] + "?delimiter=input"), ";")
    assert rows[0] == ["S. No.", "Product Name", "Input Image Urls", "Output Image Urls",
                       "Output Image Urls (thumb)", "Colour", "Brand"]
    assert [len(r) for r in rows] == [7, 7, 7, 7, 8]
    assert rows[2] == ["4", "D", "", "", "", "", ""]
    assert rows[3][:3] == ["2", "B", a] and rows[3][3] and rows[3][5:] == ["", ""]
    assert rows[4][5:] == ["blue", "acme", "extra"]


def test_the_csvs_send_their_header_first_and_every_row_after_it(client):
    from worker import tasks
    rows = 600  # of 250 bytes: output.csv in several 64 KB writes
    text = "S. No.,Product Name,Input Image Urls\n" + "".join(
        f"{n},Product {n} {'x' * 200},http://h.example/{n}.jpg\n"
        for n in range(1, rows + 1)) + "0,Zero,x\n"
    batch = upload(client, text).get_json()
    tasks.parse_batch(batch["id"])  # read, no image processed: the outputs are empty slots
    for link, header in (("output_csv", "S. No.,Product Name,Input Image Urls,"
                                        "Output Image Urls\r\n"),
                         ("errors_csv", "Line,S. No.,Input Image Url,Error,Code\r\n")):
        response = client.get(batch["links"][link], buffered=False)
        parts = [part.decode() for part in response.response]
        response.close()
        assert parts[0] == header  # before any row is read, whatever the batch's size
        found = list(csv.reader(io.StringIO("".join(parts))))
        if link == "output_csv":
            assert len(parts) > 2 and len(found) == rows + 2
            assert found[1] == ["1", f"Product 1 {'x' * 200}", "http://h.example/1.jpg", ""]
            assert found[-1] == ["0", "Zero", "x", ""]
        else:
            assert [row[0] for row in found[1:]] == [str(rows + 2)]  # the rejected row only


def test_each_image_says_what_it_is_and_the_batch_what_it_saved(client, http_server, work):
    from tests import image_factory as make
    from tests.helpers import metric
    rotated = make.exif_rotated_jpeg(size=(96, 64), orientation=6)
    http_server.routes["/rotated.jpg"] = Route(rotated)
    http_server.routes["/alpha.png"] = Route(make.png(mode="RGBA"))
    http_server.routes["/gone.jpg"] = Route(b"gone", 404)
    urls = [http_server.url(p) for p in ("/rotated.jpg", "/alpha.png", "/gone.jpg")]
    text = ("S. No.,Product Name,Input Image Urls\n"
            f'1,Chair,"{urls[0]},{urls[1]}"\n2,Lamp,"{urls[2]},{urls[0]}"\n')
    batch_id = upload(client, text).get_json()["id"]
    work()

    items = client.get(f"/api/v1/batches/{batch_id}/products").get_json()["items"]
    first, second = items[0]["images"]
    assert (first["width"], first["height"], first["format"], first["output_format"]) == (
        64, 96, "jpeg", "jpeg")  # upright: the EXIF turn swaps width and height
    assert (second["width"], second["height"], second["format"], second["output_format"]) == (
        96, 64, "png", "webp")
    gone = items[1]["images"][0]
    assert (gone["width"], gone["format"], gone["output_format"]) == (None, None, None)

    batch = client.get(f"/api/v1/batches/{batch_id}").get_json()
    bytes_in = first["bytes_in"] + second["bytes_in"]  # the repeated URL counts once
    bytes_out = first["bytes_out"] + second["bytes_out"]
    assert batch["bytes"] == {"in": bytes_in, "out": bytes_out}
    assert batch["saving_percent"] == round(100 * (bytes_in - bytes_out) / bytes_in, 1) > 0
    body = client.get("/metrics").get_data(as_text=True)
    assert metric(body, "batchpress_image_bytes_saved_total") == bytes_in - bytes_out


def test_named_sizes_get_their_own_outputs_columns_and_urls(client, http_server, work):
    http_server.routes["/big.jpg"] = Route(jpeg(800, 600))
    http_server.routes["/small.jpg"] = Route(jpeg(120, 90))
    big, small, missing = (http_server.url(p) for p in ("/big.jpg", "/small.jpg", "/no.jpg"))
    text = ("S. No.,Product Name,Input Image Urls,Colour\n"
            f'1,Desk,"{big},,{small}",oak\n2,Lamp,"{missing},{big}",red\nx,Bad,{big},-\n')
    response = upload(client, text, sizes="thumb=100, medium=400")
    assert response.status_code == 202, response.get_json()
    batch_id = response.get_json()["id"]
    work()

    images = client.get(f"/api/v1/batches/{batch_id}/products").get_json()["items"][0]["images"]
    large, little = images
    assert set(large["sizes"]) == {"thumb", "medium"}
    for name, edge in (("thumb", 100), ("medium", 400)):
        fetched = Image.open(io.BytesIO(requests.get(large["sizes"][name], timeout=5).content))
        assert max(fetched.size) == edge and fetched.size == (edge, edge * 3 // 4)
    assert little["sizes"]["medium"] == little["output_url"]  # 120 px: never enlarged
    assert little["sizes"]["thumb"] != little["output_url"]

    rows = read_csv(client.get(f"/api/v1/batches/{batch_id}/output.csv"))
    assert rows[0] == ["S. No.", "Product Name", "Input Image Urls", "Output Image Urls",
                       "Output Image Urls (thumb)", "Output Image Urls (medium)", "Colour"]
    assert rows[1][4].split(",") == [large["sizes"]["thumb"], "", little["sizes"]["thumb"]]
    assert rows[1][5].split(",") == [large["sizes"]["medium"], "", little["output_url"]]
    assert rows[2][4].split(",") == ["", large["sizes"]["thumb"]]  # failed slot empty
    assert rows[3][4:6] == ["", ""] and rows[3][6] == "-"  # rejected row: slots empty


def test_bad_sizes_are_refused_at_upload_and_defaults_apply_without_them(
        client, http_server, work, monkeypatch):
    response = upload(client, "S. No.,Product Name,Input Image Urls\n1,A,http://h/a.jpg\n",
                      sizes="thumb=9000")
    assert response.status_code == 422
    problem = response.get_json()
    assert problem["type"].endswith("/invalid-sizes") and "4096" in problem["detail"]

    monkeypatch.setenv("DEFAULT_SIZES", "tiny=16")
    settings_module.get_settings.cache_clear()
    from api import create_app
    client = create_app(settings_module.get_settings()).test_client()
    http_server.routes["/a.jpg"] = Route(jpeg(64, 48))
    text = f"S. No.,Product Name,Input Image Urls\n1,A,{http_server.url('/a.jpg')}\n"
    with_default = upload(client, text).get_json()["id"]
    without = client.post("/api/v1/batches?sizes=", data=text,
                          content_type="text/csv").get_json()["id"]
    work()
    assert read_csv(client.get(f"/api/v1/batches/{with_default}/output.csv"))[0][4] == (
        "Output Image Urls (tiny)")
    assert read_csv(client.get(f"/api/v1/batches/{without}/output.csv"))[0] == [
        "S. No.", "Product Name", "Input Image Urls", "Output Image Urls"]


def test_without_full_size_the_main_output_is_the_largest_size(client, http_server, work, s3,
                                                                env):
    http_server.routes["/big.jpg"] = Route(jpeg(800, 600))
    http_server.routes["/small.jpg"] = Route(jpeg(120, 90))
    big, small = http_server.url("/big.jpg"), http_server.url("/small.jpg")
    text = f'S. No.,Product Name,Input Image Urls\n1,Desk,"{big},{small}"\n'
    response = upload(client, text, sizes="thumb=100,large=400", full_size="false")
    assert response.status_code == 202, response.get_json()
    batch_id = response.get_json()["id"]
    work()

    large, little = client.get(f"/api/v1/batches/{batch_id}/products").get_json()["items"][0][
        "images"]
    assert large["output_url"] == large["sizes"]["large"]
    assert large["output_url"].endswith("/big-large.jpg")
    main = Image.open(io.BytesIO(requests.get(large["output_url"], timeout=5).content))
    assert (main.format, main.size) == ("JPEG", (400, 300))
    assert (large["width"], large["height"]) == (400, 300)
    thumb = Image.open(io.BytesIO(requests.get(large["sizes"]["thumb"], timeout=5).content))
    assert thumb.size == (100, 75)
    # 120 px: not larger than `large`, so kept at its own size (never enlarged) and serving it
    assert little["sizes"]["large"] == little["output_url"] != little["sizes"]["thumb"]
    keys = [o["Key"].rsplit("/", 1)[1] for o in s3.list_objects_v2(
        Bucket=env.s3_bucket, Prefix=f"outputs/{batch_id}/")["Contents"]]
    assert sorted(keys) == ["big-large.jpg", "big-thumb.jpg", "small-thumb.jpg", "small.jpg"]

    rows = read_csv(client.get(f"/api/v1/batches/{batch_id}/output.csv"))
    assert rows[1][3].split(",") == [large["sizes"]["large"], little["output_url"]]
    assert rows[1][5].split(",") == rows[1][3].split(",")  # Output Image Urls (large)


def test_the_batch_object_says_what_was_asked_for_and_links_the_zip(client, http_server, work):
    http_server.routes["/a.jpg"] = Route(jpeg(64, 48))
    text = f"S. No.,Product Name,Input Image Urls\n1,A,{http_server.url('/a.jpg')}\n"
    asked = upload(client, text, sizes="thumb=32,large=48", full_size="false").get_json()
    assert asked["sizes"] == {"thumb": 32, "large": 48} and asked["full_size"] is False
    assert list(asked["sizes"]) == ["thumb", "large"]  # in the order given
    plain = client.post("/api/v1/batches?sizes=", data=text, content_type="text/csv").get_json()
    assert plain["sizes"] == {} and plain["full_size"] is True
    work()
    batch = client.get(f"/api/v1/batches/{asked['id']}").get_json()
    assert batch["sizes"] == {"thumb": 32, "large": 48} and batch["full_size"] is False
    assert batch["links"]["outputs_zip"].endswith(f"/api/v1/batches/{asked['id']}/outputs.zip")
    archive = client.get(batch["links"]["outputs_zip"])
    assert archive.status_code == 200 and archive.mimetype == "application/zip"
    listed = client.get("/api/v1/batches").get_json()["items"]
    assert {b["id"]: b["sizes"] for b in listed}[plain["id"]] == {}


def test_full_size_is_checked_at_upload(client):
    text = "S. No.,Product Name,Input Image Urls\n1,A,http://h/a.jpg\n"
    for fields, words in (({"full_size": "maybe", "sizes": "t=100"}, "true or false"),
                          ({"full_size": "false"}, "needs at least one size"),
                          ({"full_size": "false", "sizes": ""}, "needs at least one size")):
        response = upload(client, text, **fields)
        assert response.status_code == 422, fields
        problem = response.get_json()
        assert problem["type"].endswith("/invalid-full-size") and words in problem["detail"]
        assert problem["field"] == "full_size"
    raw = client.post("/api/v1/batches?full_size=no&sizes=t%3D100", data=text,
                      content_type="text/csv")
    assert raw.status_code == 202


def test_a_column_a_size_adds_to_the_output_is_refused_when_that_size_is_asked_for(client):
    # e.g. a previous output.csv uploaded again with its 'Output Image Urls' column deleted
    text = ("S. No.,Product Name,Input Image Urls,output image urls (thumb),Brand\n"
            "1,A,http://h/a.jpg,http://old/a-thumb.jpg,Acme\n")
    response = upload(client, text, sizes="thumb=100,large=400")
    assert response.status_code == 422
    problem = response.get_json()
    assert problem["type"].endswith("/bad-header")
    assert problem["column"] == "output image urls (thumb)"
    assert "Output Image Urls (thumb)" in problem["detail"] and "column 4" in problem["detail"]
    # without that size it is just another column, carried through
    assert upload(client, text, sizes="large=400").status_code == 202
    assert upload(client, text).status_code == 202


def test_sizes_or_full_size_given_twice_is_refused_not_half_read(client):
    text = "S. No.,Product Name,Input Image Urls\n1,A,http://h/a.jpg\n"
    cases = (
        ("/api/v1/batches", {"sizes": ["t=200", "u=300"]}, "invalid-sizes", "sizes"),
        ("/api/v1/batches?sizes=t%3D200", {"sizes": "t=200"}, "invalid-sizes", "sizes"),
        ("/api/v1/batches", {"sizes": "t=200", "full_size": ["true", "false"]},
         "invalid-full-size", "full_size"),
        ("/api/v1/batches?full_size=false", {"sizes": "t=200", "full_size": "true"},
         "invalid-full-size", "full_size"),
    )
    for path, fields, kind, field in cases:
        response = client.post(path, data={"file": (io.BytesIO(text.encode()), "p.csv"),
                                           **fields}, content_type="multipart/form-data")
        assert response.status_code == 422, (path, fields, response.get_json())
        problem = response.get_json()
        assert problem["type"].endswith("/" + kind) and problem["field"] == field
        assert "more than once" in problem["detail"]
    twice = client.post("/api/v1/batches?sizes=t%3D100&sizes=u%3D200", data=text,
                        content_type="text/csv")
    assert twice.status_code == 422 and twice.get_json()["type"].endswith("/invalid-sizes")


def test_output_objects_are_named_after_the_input_file(client, http_server, work, s3, env):
    http_server.routes["/shop/p800_coffee.jpg"] = Route(jpeg(64, 48))
    http_server.routes["/x/caf%C3%A9%20cup%20(1).JPG"] = Route(jpeg(64, 48))
    http_server.routes["/"] = Route(jpeg(64, 48))
    urls = [http_server.url(p) for p in ("/shop/p800_coffee.jpg?w=2", "/x/caf%C3%A9 cup (1).JPG",
                                        "/")]
    text = "S. No.,Product Name,Input Image Urls\n" + "".join(
        f'{n},P{n},"{url}"\n' for n, url in enumerate(urls, 1))
    batch_id = upload(client, text, sizes="thumb=32").get_json()["id"]
    work()
    items = client.get(f"/api/v1/batches/{batch_id}/products").get_json()["items"]
    names = [item["images"][0]["output_url"].rsplit("/", 1)[1] for item in items]
    assert names == ["p800_coffee.jpg", "caf_cup_1.jpg", "image.jpg"]
    assert items[0]["images"][0]["sizes"]["thumb"].endswith("/p800_coffee-thumb.jpg")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=env.s3_bucket,
                                                 Prefix=f"outputs/{batch_id}/")["Contents"]]
    assert len(keys) == 6  # a main output and a thumb each
    for item in items:
        assert requests.get(item["images"][0]["output_url"], timeout=5).status_code == 200
