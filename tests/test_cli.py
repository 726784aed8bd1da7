"""The `batchpress` command against the running service: output, files, and exit statuses."""
from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import tomllib
import zipfile

from tests import image_factory as images
from tests.live_service import KEYS, ROOT
from tests.servers import HeldRoute, Route


def batchpress(live_service, cwd, *args, key: str | None = KEYS["alice"], url: str | None = None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHPRESS_")}
    env.update(BATCHPRESS_URL=url or live_service.base, PYTHONPATH=str(ROOT))
    if key:
        env["BATCHPRESS_API_KEY"] = key
    return subprocess.run([sys.executable, "-m", "cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)


def write_csv(tmp_path, name: str, *rows: str):
    path = tmp_path / name
    path.write_text("S. No.,Product Name,Input Image Urls\n" + "".join(r + "\n" for r in rows))
    return path


def test_upload_wait_then_status_list_and_download(live_service, http_server, tmp_path):
    http_server.routes["/cup.jpg"] = Route(images.jpeg((64, 48)))
    source = write_csv(tmp_path, "cups.csv", f"1,Cup,{http_server.url('/cup.jpg')}")

    done = batchpress(live_service, tmp_path, "--json", "upload", str(source), "--wait")
    assert done.returncode == 0, done.stderr
    batch = json.loads(done.stdout)
    assert batch["status"] == "completed" and batch["images"]["processed"] == 1

    shown = batchpress(live_service, tmp_path, "status", batch["id"])
    assert shown.returncode == 0
    assert shown.stdout.startswith(f"{batch['id']}  completed  100 %")
    listed = batchpress(live_service, tmp_path, "--json", "list", "--status", "completed")
    assert batch["id"] in [b["id"] for b in json.loads(listed.stdout)["items"]]

    saved = batchpress(live_service, tmp_path, "download", batch["id"], "--errors", "e.csv",
                       "--images", "all.zip")
    assert saved.returncode == 0, saved.stderr
    assert "saved output.csv to cups-output.csv" in saved.stdout
    rows = list(csv.reader(io.StringIO((tmp_path / "cups-output.csv").read_text())))
    assert rows[0][3] == "Output Image Urls" and rows[1][3].startswith(live_service.base)
    assert (tmp_path / "e.csv").read_text().startswith("Line,S. No.,Input Image Url,Error")
    assert zipfile.ZipFile(tmp_path / "all.zip").namelist() == ["1 Cup/cup.jpg"]

    # The input was `,` without BOM; the CSVs can be asked for as a `;`-locale Excel opens them.
    excel = batchpress(live_service, tmp_path, "download", batch["id"], "-o", "semi.csv",
                       "-e", "semi-e.csv", "-i", "again.zip", "--delimiter", "semicolon", "--bom")
    assert excel.returncode == 0, excel.stderr
    semi = (tmp_path / "semi.csv").read_bytes()
    assert semi.startswith(b"\xef\xbb\xbf")
    assert list(csv.reader(io.StringIO(semi.decode("utf-8-sig"), newline=""),
                           delimiter=";")) == rows
    assert (tmp_path / "semi-e.csv").read_bytes().startswith(
        b"\xef\xbb\xbfLine;S. No.;Input Image Url;Error")
    assert zipfile.ZipFile(tmp_path / "again.zip").namelist() == ["1 Cup/cup.jpg"]


def test_exit_status_tells_how_the_batch_ended(live_service, http_server, tmp_path):
    http_server.routes["/ok.jpg"] = Route(images.jpeg((20, 20)))
    ok, gone = http_server.url("/ok.jpg"), http_server.url("/later.jpg")
    partly = write_csv(tmp_path, "partly.csv", f'1,Mug,"{ok},{gone}"')
    ended = batchpress(live_service, tmp_path, "upload", str(partly), "--wait")
    assert ended.returncode == 3, ended.stderr  # completed_with_errors
    assert "completed_with_errors" in ended.stdout and "1 failed" in ended.stdout
    batch_id = ended.stdout.split()[0]

    http_server.routes["/later.jpg"] = Route(images.jpeg((30, 20)))
    retried = batchpress(live_service, tmp_path, "retry", batch_id, "--wait")
    assert retried.returncode == 0, retried.stderr
    assert " completed " in retried.stdout

    failed = write_csv(tmp_path, "failed.csv", f"1,Mug,{http_server.url('/never.jpg')}")
    assert batchpress(live_service, tmp_path, "upload", str(failed), "--wait").returncode == 4

    slow = HeldRoute(Route(images.jpeg((20, 20))), timeout=20)
    http_server.routes["/slow.jpg"] = slow
    try:
        running = live_service.upload(f"S. No.,Product Name,Input Image Urls\n"
                                      f"1,Slow,{http_server.url('/slow.jpg')}\n")
        cancelled = batchpress(live_service, tmp_path, "cancel", running["id"])
        assert cancelled.returncode == 0 and " cancelled " in cancelled.stdout
    finally:
        slow.release()
    assert batchpress(live_service, tmp_path, "watch", running["id"]).returncode == 5
    assert batchpress(live_service, tmp_path, "status", running["id"]).returncode == 5


def test_upload_asks_for_sizes_and_no_full_size(live_service, http_server, tmp_path):
    http_server.routes["/wide.jpg"] = Route(images.jpeg((400, 200)))
    source = write_csv(tmp_path, "wide.csv", f"1,Wide,{http_server.url('/wide.jpg')}")

    done = batchpress(live_service, tmp_path, "--json", "upload", str(source), "--wait",
                      "--sizes", "thumb=50,large=100", "--no-full-size")
    assert done.returncode == 0, done.stderr
    batch = json.loads(done.stdout)
    saved = batchpress(live_service, tmp_path, "download", batch["id"], "--output", "out.csv")
    assert saved.returncode == 0, saved.stderr
    header, row = list(csv.reader(io.StringIO((tmp_path / "out.csv").read_text())))
    assert header[3:6] == ["Output Image Urls", "Output Image Urls (thumb)",
                           "Output Image Urls (large)"]
    assert row[3] == row[5] and row[3].endswith("/wide-large.jpg")  # no full-size output

    refused = batchpress(live_service, tmp_path, "upload", str(source), "--sizes", "thumb")
    assert refused.returncode == 1
    assert "422 invalid-sizes" in refused.stderr and "'thumb' is not name=pixels" in refused.stderr
    needs_size = batchpress(live_service, tmp_path, "upload", str(source), "--no-full-size")
    assert needs_size.returncode == 1 and "422 invalid-full-size" in needs_size.stderr


def test_status_says_how_many_images_were_reused(live_service, http_server, tmp_path):
    from tests.servers import ConditionalRoute
    http_server.routes["/same.jpg"] = ConditionalRoute(images.jpeg((60, 40)))
    source = write_csv(tmp_path, "same.csv", f"1,Same,{http_server.url('/same.jpg')}")
    first = batchpress(live_service, tmp_path, "upload", str(source), "--wait")
    assert first.returncode == 0, first.stderr
    assert "reused" not in first.stdout  # nothing to reuse the first time

    again = batchpress(live_service, tmp_path, "upload", str(source), "--wait")
    assert again.returncode == 0, again.stderr
    assert again.stdout.rstrip().endswith("images 1/1 done, 0 failed, 1 reused")


def test_problems_are_one_readable_line_and_exit_1(live_service, tmp_path):
    no_urls = tmp_path / "no-urls.csv"
    no_urls.write_text("S. No.,Product Name\n1,Mug\n")
    refused = batchpress(live_service, tmp_path, "upload", str(no_urls))
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        "error: Missing column (422 missing-column): the header lacks required column(s): "
        "Input Image Urls; found: 'S. No.', 'Product Name'; missing_columns: Input Image Urls"]

    bad_key = batchpress(live_service, tmp_path, "list", key="wrong")
    assert bad_key.returncode == 1
    assert bad_key.stderr.strip() == "error: Unauthorized (401 unauthorized): the API key is not valid"
    other = live_service.upload("S. No.,Product Name,Input Image Urls\n1,K,http://127.0.0.1:9/k.jpg\n",
                                owner="bob")
    hidden = batchpress(live_service, tmp_path, "status", other["id"])
    assert hidden.returncode == 1 and "no batch with id" in hidden.stderr
    missing_file = batchpress(live_service, tmp_path, "upload", "nowhere.csv")
    assert missing_file.returncode == 1 and "cannot read nowhere.csv" in missing_file.stderr
    assert batchpress(live_service, tmp_path, "status").returncode == 2  # usage


def test_the_console_script_is_declared_and_resolves():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    module, _, name = project["project"]["scripts"]["batchpress"].partition(":")
    entry = getattr(__import__(module, fromlist=[name]), name)
    from cli.main import main
    assert entry is main


def test_upload_wait_and_download_against_the_real_services(live_real_services, http_server,
                                                            tmp_path):
    http_server.routes["/pot.jpg"] = Route(images.jpeg((50, 40)))
    source = write_csv(tmp_path, "pots.csv", f"1,Pot,{http_server.url('/pot.jpg')}")
    done = batchpress(live_real_services, tmp_path, "--json", "upload", str(source), "--wait")
    assert done.returncode == 0, done.stderr + live_real_services.log.read_text()[-2000:]
    batch = json.loads(done.stdout)
    saved = batchpress(live_real_services, tmp_path, "download", batch["id"], "-i", "pots.zip")
    assert saved.returncode == 0, saved.stderr
    with zipfile.ZipFile(tmp_path / "pots.zip") as archive:
        assert archive.namelist() == ["1 Pot/pot.jpg"]


def test_a_file_still_being_read_is_said_so_not_shown_as_100_percent(live_service, http_server,
                                                                      tmp_path):
    # The totals grow while the file is read, and the share done reaches 1.0 whenever the
    # workers catch up: the batch as the API answers it then, from a real batch's answer,
    # served to the command by a server standing in for the service.
    http_server.routes["/tea.jpg"] = Route(images.jpeg((30, 20)))
    done = batchpress(live_service, tmp_path, "--json", "upload", "--wait",
                      str(write_csv(tmp_path, "tea.csv", f"1,Tea,{http_server.url('/tea.jpg')}")))
    batch = json.loads(done.stdout)
    batch.update(status="processing", progress=1.0, finished_at=None)
    batch["rows"]["done_reading"] = False
    answer = {"Content-Type": "application/json"}
    http_server.routes[f"/api/v1/batches/{batch['id']}"] = Route(json.dumps(batch).encode(),
                                                                 headers=answer)
    http_server.routes["/api/v1/batches"] = Route(
        json.dumps({"items": [batch], "next_cursor": None}).encode(), headers=answer)
    status = batchpress(live_service, tmp_path, "status", batch["id"], url=http_server.base)
    listed = batchpress(live_service, tmp_path, "list", url=http_server.base)
    assert status.returncode == 0, status.stderr
    assert f"{batch['id']}  processing  reading file  rows 1/1 valid" in status.stdout
    assert "100 %" not in status.stdout
    assert "reading file" in listed.stdout and "100 %" not in listed.stdout
