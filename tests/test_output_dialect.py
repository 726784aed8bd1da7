"""output.csv and errors.csv are written with `,` and no BOM, as the contract shows them; the
query's `delimiter` / `bom` choose another, `input` the uploaded file's (delimiter, UTF-8 BOM):
what a `;`-locale Excel saved, it opens again."""
from __future__ import annotations

import csv
import io

import pytest

from tests.test_flow import jpeg, upload
from tests.helpers import assert_problem
from tests.servers import Route

BOM = b"\xef\xbb\xbf"
SEPARATORS = {",": "comma", ";": "semicolon", "\t": "tab"}


def cells_of(response, delimiter: str) -> list[list[str]]:
    """The rows Python's csv module reads from a download written with `delimiter`."""
    text = response.get_data().decode("utf-8-sig")
    return list(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter))


def excel_export(http_server, delimiter: str, *, bom: bool) -> str:
    """What Excel's "CSV UTF-8" saves: CRLF lines, the locale's delimiter, a BOM; a name with
    the delimiter itself (quoted), one with an accent, a URL that fails, a formula-like serial."""
    http_server.routes["/a.jpg"] = Route(jpeg(), headers={"Content-Type": "image/jpeg"})
    good, missing = http_server.url("/a.jpg"), http_server.url("/gone.jpg")
    rows = [["S. No.", "Product Name", "Input Image Urls", "Notes"],
            ["1", "Café", good, "a, b"],
            ["2", f"Shirt{delimiter} red", f"{missing},{good}", ""],
            ["=3+4", "Formula", good, "x"]]
    out = io.StringIO()
    csv.writer(out, delimiter=delimiter, lineterminator="\r\n").writerows(rows)
    return ("\ufeff" if bom else "") + out.getvalue()


@pytest.fixture()
def semicolon_batch(client, http_server, work) -> dict:
    response = upload(client, excel_export(http_server, ";", bom=True))
    assert response.status_code == 202, response.get_json()
    work()
    return client.get(f"/api/v1/batches/{response.get_json()['id']}").get_json()


AS_UPLOADED = "?delimiter=input&bom=input"


def test_a_semicolon_file_with_a_bom_comes_back_with_both_when_asked(client, semicolon_batch):
    for link in ("output_csv", "errors_csv"):
        response = client.get(semicolon_batch["links"][link] + AS_UPLOADED)
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "text/csv; charset=utf-8; header=present"
        body = response.get_data()
        assert body.startswith(BOM) and body.count(BOM) == 1
        assert body.count(b";") > body.count(b"\r\n")  # every line split by `;`, CRLF ended
        assert body.endswith(b"\r\n") and body.count(b"\n") == body.count(b"\r\n")
        # The same cells as the same file read in the default dialect would give:
        plain = client.get(semicolon_batch["links"][link])
        assert not plain.get_data().startswith(BOM)
        assert plain.get_data().split(b"\r\n")[0].count(b",") == 4
        assert cells_of(response, ";") == cells_of(plain, ",")

    output = cells_of(client.get(semicolon_batch["links"]["output_csv"] + AS_UPLOADED), ";")
    assert output[0] == ["S. No.", "Product Name", "Input Image Urls", "Output Image Urls",
                         "Notes"]
    assert [row[1] for row in output[1:]] == ["Café", "Shirt; red", "Formula"]
    assert output[1][4] == "a, b"
    assert output[2][3].split(",")[0] == "" and output[2][3].split(",")[1].startswith("http")

    errors = cells_of(client.get(semicolon_batch["links"]["errors_csv"] + AS_UPLOADED), ";")
    assert errors[0] == ["Line", "S. No.", "Input Image Url", "Error", "Code"]
    assert [(row[0], row[1], row[4]) for row in errors[1:]] == [
        ("3", "2", "http_status"), ("4", "'=3+4", "invalid_row")]  # the formula made inert


@pytest.mark.parametrize("delimiter", ["\t", ";"])
def test_errors_csv_cells_never_run_as_formulas_whatever_the_delimiter(client, work, delimiter):
    serials = ["=7", "@11", "+3", "-2", f"=1{delimiter}2"]
    rows = [["S. No.", "Product Name", "Input Image Urls"]] + [
        [serial, "P", "http://h.example/a.jpg"] for serial in serials]
    out = io.StringIO()
    csv.writer(out, delimiter=delimiter).writerows(rows)
    batch = upload(client, out.getvalue()).get_json()
    work()
    errors = cells_of(client.get(batch["links"]["errors_csv"] + AS_UPLOADED), delimiter)
    assert [row[1] for row in errors[1:]] == ["'" + serial for serial in serials]
    assert not any(cell.startswith(("=", "+", "-", "@", "\t", "\r"))
                   for row in errors for cell in row)


def test_a_comma_file_without_a_bom_comes_back_as_before(client, http_server, work):
    batch = upload(client, excel_export(http_server, ",", bom=False)).get_json()
    work()
    for link in ("output_csv", "errors_csv"):
        body = client.get(batch["links"][link]).get_data()
        assert not body.startswith(BOM) and b";" not in body.split(b"\r\n")[0]
        assert body.split(b"\r\n")[0].count(b",") == 4


@pytest.mark.parametrize("delimiter,bom", [(",", False), ("\t", True), (";", False)])
def test_the_query_chooses_the_dialect(client, semicolon_batch, delimiter, bom):
    query = f"?delimiter={SEPARATORS[delimiter]}&bom={str(bom).lower()}"
    expected = cells_of(client.get(semicolon_batch["links"]["output_csv"]), ",")
    for link in ("output_csv", "errors_csv"):
        response = client.get(semicolon_batch["links"][link] + query)
        assert response.status_code == 200
        body = response.get_data()
        assert body.startswith(BOM) == bom
        header = body.removeprefix(BOM).split(b"\r\n")[0].decode()
        assert header.count(delimiter) == 4
        if link == "output_csv":
            assert cells_of(response, delimiter) == expected
    # one parameter alone keeps the default other half (`,`, no BOM)
    only_bom = client.get(semicolon_batch["links"]["output_csv"] + "?bom=TRUE").get_data()
    assert only_bom.startswith(BOM) and only_bom.split(b"\r\n")[0].count(b",") == 4
    # the words full_size= takes too
    for word, wanted in (("yes", True), ("1", True), ("on", True), ("no", False), ("0", False),
                         ("off", False)):
        body = client.get(semicolon_batch["links"]["output_csv"] + f"?bom={word}").get_data()
        assert body.startswith(BOM) == wanted, word
    only_tab = client.get(semicolon_batch["links"]["output_csv"] + "?delimiter=tab").get_data()
    assert not only_tab.startswith(BOM) and only_tab.split(b"\r\n")[0].count(b"\t") == 4
    # `input` for one takes that half of the uploaded file's (`;`, a BOM)
    input_delimiter = client.get(semicolon_batch["links"]["output_csv"] + "?delimiter=input")
    assert not input_delimiter.get_data().startswith(BOM)
    assert input_delimiter.get_data().split(b"\r\n")[0].count(b";") == 4
    input_bom = client.get(semicolon_batch["links"]["output_csv"] + "?bom=Input").get_data()
    assert input_bom.startswith(BOM) and input_bom.split(b"\r\n")[0].count(b",") == 4


@pytest.mark.parametrize("query,parameter", [("delimiter=pipe", "delimiter"),
                                             ("delimiter=", "delimiter"),
                                             ("delimiter=%3B", "delimiter"),
                                             ("bom=maybe", "bom"),
                                             ("delimiter=tab&bom=2", "bom"),
                                             # not the first of two answers: neither
                                             ("bom=yes&bom=no", "bom"),
                                             ("delimiter=tab&delimiter=tab", "delimiter")])
def test_a_bad_dialect_parameter_is_a_problem_naming_it(client, semicolon_batch, query,
                                                        parameter):
    for link in ("output_csv", "errors_csv"):
        response = client.get(f"{semicolon_batch['links'][link]}?{query}")
        body = assert_problem(response, 400, "invalid-parameter")
        assert body["parameter"] == parameter and parameter in body["detail"]
