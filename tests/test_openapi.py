"""The OpenAPI document as clients use it: Swagger UI's "Try it out" in a real Chromium, and
the answers the document promises."""
from __future__ import annotations

import json

from tests.live_service import KEYS
from tests.test_console import browser, page  # noqa: F401  (fixtures)

HEADER = "S. No.,Product Name,Input Image Urls\n"


def authorize(page) -> None:  # noqa: F811
    page.goto("/docs")
    page.get_by_role("button", name="Authorize").first.click()
    page.fill("#auth-bearer-value", KEYS["alice"])
    page.click(".modal-ux button.authorize")
    page.click(".modal-ux button.btn-done")


def try_it_out(page, operation: str):  # noqa: F811
    block = page.locator(f"#operations-{operation}")
    block.locator(".opblock-summary").click()
    block.get_by_role("button", name="Try it out").click()
    return block


def execute(block) -> tuple[int, dict]:
    block.get_by_role("button", name="Execute").click()
    answer = block.locator(".live-responses-table tbody .response").first
    answer.wait_for()
    status = answer.locator(".response-col_status").inner_text()
    return int(status), json.loads(answer.locator(".response-col_description pre").first
                                   .inner_text())


def test_try_it_out_uploads_a_csv_as_the_form_is_filled(page, live_service, tmp_path):  # noqa: F811
    source = tmp_path / "products.csv"
    source.write_text(HEADER + "1,Mug,http://127.0.0.1:9/mug.jpg\n")
    authorize(page)
    block = try_it_out(page, "Batches-uploadBatch")
    block.locator("input[type=file]").set_input_files(str(source))
    status, body = execute(block)
    assert status == 202, body
    assert body["filename"] == "products.csv" and body["webhook_url"] is None


def test_the_answers_of_a_bad_subscription_body_are_documented(client):
    document = client.get("/openapi.json").get_json()
    sub = client.post("/api/v1/webhooks", json={"url": "https://93.184.215.14/hook"}).get_json()
    path = document["paths"]["/api/v1/webhooks/{subscription_id}"]["patch"]
    patch = f"/api/v1/webhooks/{sub['id']}"
    for body in ("[]", json.dumps({"url": ""}), json.dumps({"colour": "red"})):
        answer = client.patch(patch, data=body, content_type="application/json")
        assert str(answer.status_code) in path["responses"], (body, answer.status_code)
    schema = document["components"]["schemas"]["WebhookSubscriptionIn"]
    refused = client.post("/api/v1/webhooks", json={"url": ""})
    assert refused.status_code == 422 and schema["properties"]["url"]["minLength"] == 1
