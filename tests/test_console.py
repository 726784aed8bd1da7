"""The web console in a real Chromium (Debian's package, driven by Playwright), against the
service as `make run` starts it: upload through the page, live progress, before/after images,
downloads, cancel, retry, redeliver, and signing in with an API key."""
from __future__ import annotations

import csv
import io
import os
import shutil
import time
import zipfile
from pathlib import Path

import pytest
import requests
from PIL import Image
from playwright.sync_api import expect, sync_playwright

from tests import image_factory as images
from tests.live_service import KEYS, ROOT
from tests.servers import HeldRoute, Route
from tests.test_flow import jpeg

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-dev-shm-usage"]
SCREENSHOT = ROOT / "docs" / "console.png"


@pytest.fixture(scope="module")
def browser():
    if not shutil.which(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is not installed (apt-get install chromium; .ci/run does it)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                              args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture()
def page(browser, live_service):
    context = browser.new_context(viewport={"width": 1100, "height": 760}, accept_downloads=True,
                                  base_url=live_service.base)
    tab = context.new_page()
    tab.set_default_timeout(20_000)
    expect.set_options(timeout=20_000)
    yield tab
    context.close()


def sign_in(page, owner: str = "alice") -> None:
    page.goto("/")
    key = page.get_by_label("API key")
    key.fill(KEYS[owner])
    key.press("Enter")  # the form works from the keyboard
    expect(page.locator("#app")).to_be_visible()


def after_images_loaded(page, count: int) -> None:
    """Wait until `count` after-images have really been decoded by the browser."""
    page.wait_for_function(
        """n => { const imgs = [...document.querySelectorAll('img.after')];
                  return imgs.length === n && imgs.every(i => i.complete && i.naturalWidth > 0); }""",
        arg=count)


def test_upload_watch_and_download_from_the_console(page, live_service, http_server, tmp_path):
    http_server.routes["/red-mug.jpg"] = Route(images.jpeg((120, 80)),
                                               headers={"Content-Type": "image/jpeg"})
    http_server.routes["/blue-pot.png"] = Route(images.png((90, 90), mode="RGBA"),
                                                headers={"Content-Type": "image/png"})
    red, blue = http_server.url("/red-mug.jpg"), http_server.url("/blue-pot.png")
    source = tmp_path / "spring.csv"
    source.write_text("S. No.,Product Name,Input Image Urls\n"
                      f'1,Red mug,"{red},{blue}"\n2,Blue teapot,{blue}\n3,,{red}\n')
    sign_in(page)

    page.get_by_label("CSV file").set_input_files(source)
    page.get_by_role("button", name="Upload").click()

    page.wait_for_url("**/batches/bat_*")
    expect(page.locator("#progress-label")).to_have_text("100 %")
    expect(page.locator("#status")).to_have_text("completed with errors")
    after_images_loaded(page, 3)
    expect(page.locator("#rejected")).to_contain_text("Product Name")
    batch_id = page.url.rsplit("/", 1)[-1]
    batch = requests.get(f"{live_service.base}/api/v1/batches/{batch_id}",
                         headers={"Authorization": f"Bearer {KEYS['alice']}"}, timeout=10).json()
    # The whole batch's bytes and saving, as the API counts them.
    expect(page.locator("#saved")).to_have_text(f"{round(batch['saving_percent'])} %")

    with page.expect_download() as download:
        page.get_by_role("button", name="Download output.csv").click()
    assert download.value.suggested_filename == "spring-output.csv"
    rows = list(csv.reader(io.StringIO(Path(download.value.path()).read_text())))
    assert rows[0][3] == "Output Image Urls"
    outputs = rows[1][3].split(",")
    assert len(outputs) == 2 and all(u.startswith(live_service.base + "/files/") for u in outputs)
    shown = page.locator("img.after").evaluate_all("imgs => imgs.map(i => i.src)")
    assert set(shown) == set(outputs)

    with page.expect_download() as download:
        page.get_by_role("button", name="Download all images (.zip)").click()
    with zipfile.ZipFile(download.value.path()) as archive:
        assert sorted(archive.namelist()) == ["1 Red mug/blue-pot.webp", "1 Red mug/red-mug.jpg",
                                              "2 Blue teapot/blue-pot.webp"]
        assert Image.open(io.BytesIO(archive.read("1 Red mug/red-mug.jpg"))).size == (120, 80)

    # The README's picture of the batch page; refreshed with UPDATE_SCREENSHOT=1.
    target = SCREENSHOT if os.environ.get("UPDATE_SCREENSHOT") else tmp_path / "console.png"
    page.set_viewport_size({"width": 1000, "height": 700})
    page.screenshot(path=str(target))
    with Image.open(target) as shot:  # few colours: a palette PNG stays small in the repository
        shot.convert("RGB").quantize(64).save(target, optimize=True)


def test_a_file_still_being_read_shows_a_moving_bar_not_100_percent(page, live_service,
                                                                   http_server):
    # A file still being read: its totals grow, and the share done reaches 1.0 whenever the
    # workers catch up. The batch as the API answers it then, from a real batch's answer.
    http_server.routes["/cup.jpg"] = Route(jpeg(40, 30))
    text = f"S. No.,Product Name,Input Image Urls\n1,Cup,{http_server.url('/cup.jpg')}\n"
    batch_id = live_service.upload(text)["id"]
    live_service.wait_finished(batch_id)
    url = f"{live_service.base}/api/v1/batches/{batch_id}"
    batch = requests.get(url, headers=live_service.headers(), timeout=10).json()
    batch.update(status="processing", progress=1.0, finished_at=None)
    batch["rows"]["done_reading"] = False
    page.route(url, lambda route: route.fulfill(json=batch))
    page.route(url + "/events*", lambda route: route.abort())
    sign_in(page)
    page.goto(f"/batches/{batch_id}")
    expect(page.locator("#progress-label")).to_have_text("reading file")
    assert page.locator("#progress").get_attribute("value") is None  # indeterminate
    expect(page.locator("#status")).to_have_text("processing")
    # and so does its row in the list of batches (the first page: limit=20; the sign-in's
    # check of the key, limit=1, is left to the service)
    page.route(f"{live_service.base}/api/v1/batches?limit=20*",
               lambda route: route.fulfill(json={"items": [batch], "next_cursor": None}))
    page.goto("/")
    row = page.locator(f'#batches tr[data-batch-id="{batch_id}"]')
    expect(row).to_contain_text("reading file")
    assert row.locator("progress").get_attribute("value") is None


def test_a_re_import_shows_how_many_images_were_reused(page, live_service, http_server):
    from tests.servers import ConditionalRoute
    http_server.routes["/again.jpg"] = ConditionalRoute(jpeg(60, 40))
    text = f"S. No.,Product Name,Input Image Urls\n1,Vase,{http_server.url('/again.jpg')}\n"
    live_service.wait_finished(live_service.upload(text)["id"])
    second = live_service.upload(text)
    sign_in(page)
    page.goto(f"/batches/{second['id']}")
    expect(page.locator("#status")).to_have_text("completed")
    expect(page.locator("#images")).to_have_text("1 / 1 done, 1 reused")


def test_each_image_links_its_sizes_and_says_when_it_was_reused(page, live_service,
                                                                 http_server):
    from tests.servers import ConditionalRoute
    http_server.routes["/lamp.jpg"] = ConditionalRoute(jpeg(300, 200))
    text = f"S. No.,Product Name,Input Image Urls\n1,Lamp,{http_server.url('/lamp.jpg')}\n"
    live_service.wait_finished(live_service.upload(text, sizes="thumb=50,medium=100")["id"])
    second = live_service.upload(text, sizes="thumb=50,medium=100")
    live_service.wait_finished(second["id"])
    image = requests.get(f"{live_service.base}/api/v1/batches/{second['id']}/products",
                         headers=live_service.headers(), timeout=10).json()["items"][0]["images"][0]
    sign_in(page)
    page.goto(f"/batches/{second['id']}")
    caption = page.locator("#products figcaption")
    expect(caption).to_contain_text("reused")
    for name in ("thumb", "medium"):
        link = caption.get_by_role("link", name=f"{name} size of Lamp, image 1")
        expect(link).to_have_text(name)
        expect(link).to_have_attribute("href", image["sizes"][name])


def test_upload_from_the_console_with_sizes_only(page, live_service, http_server, tmp_path):
    http_server.routes["/sofa.jpg"] = Route(jpeg(300, 200))
    source = tmp_path / "sofas.csv"
    source.write_text(f"S. No.,Product Name,Input Image Urls\n1,Sofa,{http_server.url('/sofa.jpg')}\n")
    sign_in(page)
    page.get_by_label("CSV file").set_input_files(source)
    page.get_by_label("Extra sizes (optional)").fill("thumb")
    page.get_by_role("button", name="Upload").click()
    expect(page.locator("#upload-error")).to_contain_text("'thumb' is not name=pixels")

    page.get_by_label("Extra sizes (optional)").fill("thumb=40,large=100")
    page.get_by_label("Sizes only (no full-size output)").check()
    page.get_by_role("button", name="Upload").click()
    page.wait_for_url("**/batches/bat_*")
    expect(page.locator("#status")).to_have_text("completed")
    batch_id = page.url.rsplit("/", 1)[-1]
    image = requests.get(f"{live_service.base}/api/v1/batches/{batch_id}/products",
                         headers=live_service.headers(), timeout=10).json()["items"][0]["images"][0]
    assert set(image["sizes"]) == {"thumb", "large"}
    assert image["output_url"] == image["sizes"]["large"]  # no full-size output
    assert (image["width"], image["height"]) == (100, 67)


def test_cancel_retry_and_redeliver_from_the_console(page, live_service, http_server):
    slow = HeldRoute(Route(jpeg(30, 30)), timeout=20)  # until the test has cancelled the batch
    http_server.routes["/slow.jpg"] = slow
    http_server.routes["/ok.jpg"] = Route(jpeg(40, 30))
    http_server.routes["/hook"] = Route(b"ok")
    running = live_service.upload(f"S. No.,Product Name,Input Image Urls\n"
                                  f"1,Slow,{http_server.url('/slow.jpg')}\n", name="slow.csv")
    sign_in(page)
    try:
        page.goto(f"/batches/{running['id']}")
        page.get_by_role("button", name="Cancel").click()
        expect(page.locator("#status")).to_have_text("cancelled")
        expect(page.get_by_role("button", name="Retry failed images")).to_be_disabled()
    finally:
        slow.release()

    flaky = http_server.url("/flaky.jpg")  # 404 until the route is added below
    batch = live_service.upload(f"S. No.,Product Name,Input Image Urls\n"
                                f"1,Mug,\"{http_server.url('/ok.jpg')},{flaky}\"\n",
                                name="flaky.csv", webhook_url=http_server.url("/hook"))
    page.goto(f"/batches/{batch['id']}")
    expect(page.locator("#status")).to_have_text("completed with errors")
    expect(page.locator("#products")).to_contain_text("404")
    http_server.routes["/flaky.jpg"] = Route(jpeg(50, 20))

    page.get_by_role("button", name="Retry failed images").click()
    expect(page.locator("#status")).to_have_text("completed")
    after_images_loaded(page, 2)

    # Two finishes, two webhook events; the log shows them once the worker has sent them.
    deliveries = page.locator("#deliveries tbody tr")
    deadline = time.monotonic() + 20
    while deliveries.count() < 2 or "HTTP 200" not in page.locator("#deliveries").inner_text():
        assert time.monotonic() < deadline, page.locator("#deliveries").inner_text()
        page.reload()
        page.locator("#deliveries tbody tr").first.wait_for()
    sent = sum(1 for r in http_server.requests if r["path"] == "/hook")
    deliveries.first.get_by_role("button", name="Redeliver").click()
    expect(page.locator("#action-message")).to_have_text("Delivery queued again.")
    deadline = time.monotonic() + 20
    while sum(1 for r in http_server.requests if r["path"] == "/hook") == sent:
        assert time.monotonic() < deadline, "the redelivery never arrived"
        time.sleep(0.1)


def test_sign_out_is_offered_only_when_signed_in(page):
    page.goto("/")
    expect(page.get_by_label("API key")).to_be_visible()
    expect(page.get_by_role("button", name="Sign out")).to_be_hidden()  # nobody to sign out
    sign_in(page)
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_label("API key")).to_be_visible()
    expect(page.get_by_role("button", name="Sign out")).to_be_hidden()


def test_sign_in_shows_only_that_keys_batches_and_upload_errors_inline(page, live_service,
                                                                      http_server, tmp_path):
    missing = http_server.url("/missing.jpg")  # 404: these batches end failed
    bob = live_service.upload(f"S. No.,Product Name,Input Image Urls\n1,Kettle,{missing}\n",
                              owner="bob", name="bob-secret.csv")
    mine = live_service.upload(f"S. No.,Product Name,Input Image Urls\n1,Cup,{missing}\n",
                               name="alice-own.csv")
    page.goto("/")
    page.get_by_label("API key").fill("not-a-key")
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#login-error")).to_contain_text("not valid")
    expect(page.locator("#app")).to_be_hidden()

    sign_in(page, "alice")
    expect(page.locator("#batches")).to_contain_text("alice-own.csv")
    expect(page.locator(f'tr[data-batch-id="{mine["id"]}"]')).to_be_visible()
    expect(page.locator(f'tr[data-batch-id="{bob["id"]}"]')).to_have_count(0)
    expect(page.locator("#batches")).not_to_contain_text("bob-secret.csv")
    page.goto(f"/batches/{bob['id']}")  # another key's batch does not exist for this one
    expect(page.locator("#action-message")).to_contain_text("no batch with id")

    page.goto("/")
    unlabelled = page.evaluate("""() => [...document.querySelectorAll('input, select')]
        .filter(c => !c.closest('[hidden]') && !c.labels.length && !c.getAttribute('aria-label'))
        .map(c => c.id || c.name)""")
    assert unlabelled == []
    with page.expect_download() as template:
        page.get_by_role("link", name="Download a CSV template").click()
    header = Path(template.value.path()).read_text().splitlines()[0]
    assert header == "S. No.,Product Name,Input Image Urls"

    bad = tmp_path / "no-urls.csv"
    bad.write_text("S. No.,Product Name\n1,Mug\n")
    page.get_by_label("CSV file").set_input_files(bad)
    page.get_by_label("Webhook URL (optional)").press("Enter")  # submits from the keyboard
    expect(page.locator("#upload-error")).to_contain_text("missing: Input Image Urls")

    live_service.wait_finished(mine["id"])
    page.get_by_label("Status").select_option("completed")
    expect(page.locator(f'tr[data-batch-id="{mine["id"]}"]')).to_have_count(0)
    page.get_by_label("Status").select_option("failed")
    expect(page.locator(f'tr[data-batch-id="{mine["id"]}"]')).to_be_visible()

    page.set_viewport_size({"width": 375, "height": 700})  # a phone: nothing sticks out sideways
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


def test_the_batch_page_against_the_real_services(browser, live_real_services, http_server,
                                                  s3_server):
    http_server.routes["/vase.jpg"] = Route(images.jpeg((80, 60)))
    batch = live_real_services.upload(f"S. No.,Product Name,Input Image Urls\n"
                                      f"1,Vase,{http_server.url('/vase.jpg')}\n")
    context = browser.new_context(base_url=live_real_services.base)
    try:
        page = context.new_page()
        page.set_default_timeout(20_000)
        sign_in(page)
        page.goto(f"/batches/{batch['id']}")
        expect(page.locator("#status")).to_have_text("completed")
        after_images_loaded(page, 1)  # straight from S3 (the outputs prefix is public)
        src = page.locator("img.after").get_attribute("src")
        assert src.startswith(f"{s3_server}/bp-live-real/outputs/"), src
    finally:
        context.close()
