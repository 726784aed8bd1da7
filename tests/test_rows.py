"""Row rules: each bad row is rejected alone, with its line number and a reason."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from schemas.rows import ProductRow, row_error
from tests.test_flow import read_csv
from tests.test_upload import HEADER, post_raw

GOOD = "http://h/a.jpg"


def errors_by_line(client, batch_id: str) -> dict[int, str]:
    rows = read_csv(client.get(f"/api/v1/batches/{batch_id}/errors.csv"))
    return {int(r[0]): r[3] for r in rows[1:] if r[2] == ""}


def test_each_rule_rejects_its_row_alone(client, work):
    many = ",".join(f"http://h/{i}.jpg" for i in range(51))
    long_url = "http://h/" + "a" * 2050
    lines = [
        f"1,Good,{GOOD}",                  # line 2: fine
        f"x1,Bad serial,{GOOD}",           # 3
        f"0,Zero serial,{GOOD}",           # 4
        f"-4,Negative,{GOOD}",             # 5
        f"1,Duplicate serial,{GOOD}",      # 6
        f"7,   ,{GOOD}",                   # 7 blank name
        f"8,{'n' * 301},{GOOD}",           # 8 long name
        "9,No urls,",                      # 9
        f'10,Too many,"{many}"',           # 10
        f"11,Long url,{long_url}",         # 11
        "12,Ftp,ftp://h/a.jpg",            # 12
        "13,Relative,/images/a.jpg",       # 13
        "14",                              # 14 too few fields
        f"15,Also good,{GOOD}",            # 15
    ]
    response = post_raw(client, (HEADER + "\n".join(lines) + "\n").encode())
    assert response.status_code == 202
    batch_id = response.get_json()["id"]
    work()
    batch = client.get(f"/api/v1/batches/{batch_id}").get_json()
    assert batch["rows"] == {"total": 14, "valid": 2, "invalid": 12, "done_reading": True}
    errors = errors_by_line(client, batch_id)
    assert sorted(errors) == list(range(3, 15))
    assert "positive whole number" in errors[3]
    assert "positive whole number" in errors[4]
    assert "positive whole number" in errors[5]
    assert "already used on line 2" in errors[6]
    assert "Product Name" in errors[7] and "empty" in errors[7]
    assert "300" in errors[8]
    assert "at least one URL" in errors[9]
    assert "more than 50" in errors[10]
    assert "2048" in errors[11]
    assert "http(s)" in errors[12] and "http(s)" in errors[13]
    assert "fields" in errors[14]
    products = client.get(f"/api/v1/batches/{batch_id}/products").get_json()["items"]
    assert [p["serial_no"] for p in products] == [1, 15]
    output = read_csv(client.get(f"/api/v1/batches/{batch_id}/output.csv"))
    assert len(output) == 15  # header + every data row, rejected ones included
    assert [r[3] for r in output[2:14]] == [""] * 7 + ["," * 50] + [""] * 4  # a slot per URL


def test_invalid_utf8_after_the_first_block_fails_only_its_row(client, work):
    filler = "".join(f"{i},Product {i:05d} {'x' * 40},{GOOD}\n" for i in range(1, 1400))
    body = (HEADER + filler).encode() + b"5000,Caf\xe9,http://h/z.jpg\n" + b"5001,Fine,http://h/y.jpg\n"
    assert len(body) > 64 * 1024
    response = post_raw(client, body)
    assert response.status_code == 202
    batch_id = response.get_json()["id"]
    work()
    batch = client.get(f"/api/v1/batches/{batch_id}").get_json()
    assert batch["rows"]["invalid"] == 1 and batch["rows"]["valid"] == 1400
    errors = errors_by_line(client, batch_id)
    assert list(errors.values()) == ["the row is not valid UTF-8"]
    assert list(errors) == [1401]


def test_a_file_of_only_bad_rows_fails_the_batch(client, work):
    response = post_raw(client, (HEADER + "x,,\n").encode())
    batch_id = response.get_json()["id"]
    work()
    batch = client.get(f"/api/v1/batches/{batch_id}").get_json()
    assert batch["status"] == "failed" and "no valid rows" in batch["error"]


def test_output_slots_line_up_with_input_urls_for_rejected_rows_and_empty_parts(
        client, http_server, work):
    from tests.servers import Route
    from tests.test_flow import jpeg
    http_server.routes["/a.jpg"] = Route(jpeg(20, 10))
    http_server.routes["/b.jpg"] = Route(jpeg(30, 10))
    a, b = http_server.url("/a.jpg"), http_server.url("/b.jpg")
    lines = [
        f'1,Gap,"{a},,{b}"',                 # line 2: accepted, the empty part keeps its slot
        f'x,Rejected,"{a},{b},ftp://h/c"',   # 3: rejected, three slots
        f'3,Trailing,"{a}, ,"',              # 4: accepted, blank and trailing parts keep theirs
        f'4,Rejected gap,"{a},,"',           # 5: rejected (bad serial below), three slots
        "5,No urls,",                        # 6: rejected, one (empty) slot
    ]
    lines[3] = lines[3].replace("4,", "0,", 1)
    batch_id = post_raw(client, (HEADER + "\n".join(lines) + "\n").encode()).get_json()["id"]
    work()
    output = read_csv(client.get(f"/api/v1/batches/{batch_id}/output.csv"))
    slots = {row[0]: row[3].split(",") for row in output[1:]}
    out_a, gap, out_b = slots["1"]
    assert out_a.endswith(".jpg") and gap == "" and out_b.endswith(".jpg") and out_a != out_b
    assert slots["x"] == ["", "", ""]
    assert slots["3"] == [out_a, "", ""]
    assert slots["0"] == ["", "", ""]
    assert slots["5"] == [""]
    for row in output[1:]:  # one output slot per input slot, on every row
        assert len(row[3].split(",")) == len(row[2].split(","))
    batch = client.get(f"/api/v1/batches/{batch_id}").get_json()
    assert batch["rows"] == {"total": 5, "valid": 2, "invalid": 3, "done_reading": True}
    assert batch["images"] == {"total": 3, "processed": 3, "failed": 0, "reused": 0}


def test_a_field_over_one_mib_rejects_only_its_row(client, work):
    huge = "n" * (2 * 1024 * 1024)
    body = (HEADER + f"1,Good,{GOOD}\n2,{huge},{GOOD}\n3,Also good,{GOOD}\n").encode()
    response = post_raw(client, body)
    assert response.status_code == 202
    batch_id = response.get_json()["id"]
    work()
    batch = client.get(f"/api/v1/batches/{batch_id}").get_json()
    assert "could not be read" not in (batch["error"] or "")  # the file as a whole is fine
    assert batch["rows"] == {"total": 3, "valid": 2, "invalid": 1, "done_reading": True}
    errors = errors_by_line(client, batch_id)
    assert list(errors) == [3] and "300" in errors[3]


def test_serial_numbers_take_ascii_digits_only_and_fit_in_int64(client, http_server, work):
    from tests.servers import Route
    from tests.test_flow import jpeg
    http_server.routes["/a.jpg"] = Route(jpeg(20, 10))
    image = http_server.url("/a.jpg")
    lines = [
        f"1,Good,{image}",                          # line 2: fine
        f"\u0661\u0662,Arabic-Indic twelve,{image}",  # 3: str.isdigit() says yes, not 0-9
        f"\u00b2,Superscript two,{image}",           # 4: isdigit() yes, int() fails
        f"99999999999999999999999,Huge,{image}",     # 5: beyond MongoDB's int64
        f"9223372036854775808,Just over,{image}",    # 6: 2**63
        f"9223372036854775807,Largest,{image}",      # 7: 2**63 - 1 is fine
    ]
    response = post_raw(client, (HEADER + "\n".join(lines) + "\n").encode())
    assert response.status_code == 202
    batch_id = response.get_json()["id"]
    work()
    batch = client.get(f"/api/v1/batches/{batch_id}").get_json()
    assert batch["status"] == "completed_with_errors", batch
    assert batch["rows"] == {"total": 6, "valid": 2, "invalid": 4, "done_reading": True}
    errors = errors_by_line(client, batch_id)
    assert sorted(errors) == [3, 4, 5, 6]
    assert "positive whole number" in errors[3] and "positive whole number" in errors[4]
    assert "invalid literal" not in errors[4]
    assert "S. No." in errors[5] and "too large" in errors[5]
    assert "too large" in errors[6]
    products = client.get(f"/api/v1/batches/{batch_id}/products").get_json()["items"]
    assert [p["serial_no"] for p in products] == [1, 2**63 - 1]


def test_an_unclosed_quote_is_reported_on_the_line_it_opens(client, work):
    lines = [
        f"1,Good,{GOOD}",                      # line 2
        f'2,"Teapot, large,{GOOD}',            # 3: the quote never closes
        f"3,Swallowed,{GOOD}",                 # 4 and 5 are read as part of line 3's cell
        f"4,Swallowed too,{GOOD}",
    ]
    batch_id = post_raw(client, (HEADER + "\n".join(lines) + "\n").encode()).get_json()["id"]
    work()
    batch = client.get(f"/api/v1/batches/{batch_id}").get_json()
    assert batch["rows"] == {"total": 2, "valid": 1, "invalid": 1, "done_reading": True}
    errors = errors_by_line(client, batch_id)
    assert list(errors) == [3] and errors[3].startswith("unclosed quote starting on line 3")


def test_an_unclosed_quote_inside_a_multiline_row_names_the_quotes_line():
    import io

    from worker.csv_reader import read_csv
    text = HEADER + f'1,"Two\nlines",{GOOD}\n2,"Mug\nbig","{GOOD}\n3,x,{GOOD}\n'
    rows = read_csv(io.BytesIO(text.encode())).rows
    assert [(line, problem) for line, _, problem in rows][0] == (2, None)
    rows = read_csv(io.BytesIO(text.encode())).rows
    line, _, problem = list(rows)[1]
    assert line == 4 and problem.startswith("unclosed quote starting on line 5")
    # A quote inside an unquoted cell is a character, not an opening quote.
    rows = read_csv(io.BytesIO((HEADER + f'1,5" mug,{GOOD}').encode())).rows
    assert [problem for _, _, problem in rows] == [None]


def test_a_row_too_big_for_one_document_is_rejected_alone(client, work):
    from schemas.rows import MAX_ROW_BYTES
    header = HEADER.strip() + ",Description\n"
    big = "é" * (MAX_ROW_BYTES // 2 + 10)  # 2 bytes each: just over the limit in UTF-8
    lines = [f"1,Mug,{GOOD},short", f"2,Huge,{GOOD},{big}", f"3,Pot,{GOOD},fine"]
    batch_id = post_raw(client, (header + "\n".join(lines) + "\n").encode()).get_json()["id"]
    work()
    batch = client.get(f"/api/v1/batches/{batch_id}").get_json()
    assert batch["rows"] == {"total": 3, "valid": 2, "invalid": 1, "done_reading": True}
    errors = errors_by_line(client, batch_id)
    assert list(errors) == [3] and f"more than the {MAX_ROW_BYTES} bytes" in errors[3]
    output = read_csv(client.get(f"/api/v1/batches/{batch_id}/output.csv"))
    assert output[2] == ["2", "Huge", GOOD, "", ""]  # the oversized cell is left empty
    assert output[3][-1] == "fine"


def test_row_size_rule_counts_utf8_bytes():
    from schemas.rows import MAX_ROW_BYTES, row_size_error, storable_cells
    assert row_size_error(["a" * MAX_ROW_BYTES]) is None
    assert row_size_error(["€" * (MAX_ROW_BYTES // 3 + 1)]) is not None  # 3 bytes each
    assert storable_cells(["1", "x" * MAX_ROW_BYTES, "keep"]) == ["1", "", "keep"]


def test_url_cells_split_as_people_write_them():
    from schemas.rows import split_url_cell
    a, b, c = "http://h/a.jpg", "https://h/b.jpg", "HTTPS://h/c.jpg"
    cloudinary = "https://res.cloudinary.com/demo/image/upload/w_400,h_300,c_fill/shoe.jpg"
    cases = {
        f"{a},{b}": [a, b],
        f"{a}\n{b}\r\n{c}": [a, b, c],
        f"{a} {b}  {c}": [a, b, c],
        f"{a}; {b} | {c}": [a, b, c],
        f"{cloudinary},{a}": [cloudinary, a],
        f"{cloudinary}": [cloudinary],
        f"{a},,{b}": [a, "", b],           # an empty part keeps its slot
        f",{a}, ,": ["", a, "", ""],
        f"{a}, not a url": [a, "not a url"],  # ", " never sits inside a URL
        f"{a}\nphoto.jpg": [a, "photo.jpg"],
        f"{a},ftp://h/x.jpg": [a, "ftp://h/x.jpg"],
        "http://h/my photo.jpg": ["http://h/my photo.jpg"],  # a space inside, as before
        "": [""], " ": [""], ",": ["", ""],
    }
    for cell, slots in cases.items():
        assert split_url_cell(cell) == slots, repr(cell)


def test_a_part_that_is_not_a_url_rejects_the_row_and_slots_stay_aligned(
        client, http_server, work):
    from tests.servers import Route
    from tests.test_flow import jpeg
    http_server.routes["/a.jpg"] = Route(jpeg(20, 10))
    http_server.routes["/w_40,h_30/b.jpg"] = Route(jpeg(30, 10))
    a, b = http_server.url("/a.jpg"), http_server.url("/w_40,h_30/b.jpg")
    lines = [
        f'1,Lines,"{a}\n{b}"',            # line 2 (and 3): two URLs on two lines
        f'2,Pipes,"{b} | | {a}"',         # 4: an empty slot between
        f'3,Stray,"{a}; see photo.jpg"',  # 5: rejected, the second part is no URL
    ]
    batch_id = post_raw(client, (HEADER + "\n".join(lines) + "\n").encode()).get_json()["id"]
    work()
    assert errors_by_line(client, batch_id) == {
        5: "Input Image Urls: not an absolute http(s) URL: 'see photo.jpg'"}
    products = client.get(f"/api/v1/batches/{batch_id}/products").get_json()["items"]
    assert [p["input_image_urls"] for p in products] == [[a, b], [b, a]]
    assert all(i["status"] == "processed" for p in products for i in p["images"])
    output = read_csv(client.get(f"/api/v1/batches/{batch_id}/output.csv"))
    slots = {row[0]: row[3].split(",") for row in output[1:]}
    out_a, out_b = products[0]["output_image_urls"]
    assert slots == {"1": [out_a, out_b], "2": [out_b, "", out_a], "3": ["", ""]}


@pytest.mark.parametrize("serial, name, urls, reason", [
    ("x1", "Mug", GOOD, "S. No. must be a positive whole number, got 'x1'"),
    ("0", "Mug", GOOD, "S. No. must be a positive whole number, got '0'"),
    ("000", "Mug", GOOD, "S. No. must be a positive whole number, got '000'"),
    ("99999999999999999999", "Mug", GOOD, "S. No. is too large (at most 9223372036854775807)"),
    ("1", "   ", GOOD, "Product Name: must not be empty"),
    ("1", "n" * 301, GOOD, "Product Name: is longer than 300 characters: '"
     + "n" * 60 + "'… (301 characters)"),
    ("1", "Mug", "", "Input Image Urls: must hold at least one URL"),
    ("1", "Mug", ",".join(f"http://h/{i}.jpg" for i in range(51)),
     "Input Image Urls: holds more than 50 URLs"),
    ("1", "Mug", "http://h/" + "a" * 2050,
     "Input Image Urls: the URL is longer than 2048 characters: 'http://h/" + "a" * 51
     + "'… (2,059 characters)"),
    ("1", "Mug", f"{GOOD}, photo.jpg", "Input Image Urls: not an absolute http(s) URL: 'photo.jpg'"),
])
def test_each_row_rule_names_its_field_and_reason_without_a_server(serial, name, urls, reason):
    with pytest.raises(ValidationError) as caught:
        ProductRow(serial_no=serial, product_name=name, input_image_urls=urls)
    assert row_error(caught.value) == reason


def test_a_valid_row_keeps_its_urls_in_order_and_trims_its_name():
    row = ProductRow(serial_no=" 007 ", product_name="  Mug ",
                     input_image_urls="http://h/b.jpg,http://h/a.jpg")
    assert (row.serial_no, row.product_name) == (7, "Mug")
    assert row.input_image_urls == ["http://h/b.jpg", "http://h/a.jpg"]
