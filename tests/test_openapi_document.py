"""The OpenAPI document and its offline docs page (api/openapi.py)."""
from __future__ import annotations

import json
import re

from tests.helpers import make_app


def flask_path(rule: str) -> str:
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def shape(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "{}", path)


def test_every_route_is_in_the_openapi_document(env, monkeypatch):
    app = make_app(monkeypatch, DASHBOARD_USER="ops", DASHBOARD_PASSWORD="pw-123456")
    document = app.test_client().get("/openapi.json").get_json()
    assert document["openapi"].startswith("3.1")
    documented = {(shape(path), method.upper())
                  for path, item in document["paths"].items() for method in item
                  if method in {"get", "post", "put", "patch", "delete"}}
    missing = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.endpoint in ("docs.static", "docs.docs_init"):
            continue
        if rule.rule.startswith(("/rq", "/files")):
            continue
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            if (shape(flask_path(rule.rule)), method) not in documented:
                missing.append(f"{method} {rule.rule}")
    assert not missing, f"routes missing from /openapi.json: {missing}"


def test_openapi_document_is_valid_and_built_from_the_models(client):
    from openapi_pydantic import OpenAPI
    document = client.get("/openapi.json").get_json()
    OpenAPI.model_validate(document)
    schemas = document["components"]["schemas"]
    for name in ("BatchOut", "ProductOut", "Problem", "BatchStatus", "WebhookSubscriptionIn",
                 "Delivery", "WebhookEvent"):
        assert name in schemas, name
    from schemas.batch import BatchOut
    assert set(schemas["BatchOut"]["properties"]) == set(BatchOut.model_fields)
    assert {"sizes", "full_size"} <= set(schemas["BatchOut"]["properties"])
    assert "outputs_zip" in schemas["BatchLinks"]["required"]
    from schemas.product import ImageOut
    assert set(schemas["ImageOut"]["properties"]) == set(ImageOut.model_fields)
    # Every $ref points at a schema that exists.
    refs = set(re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', json.dumps(document)))
    assert refs and refs <= set(schemas)
    upload_op = document["paths"]["/api/v1/batches"]["post"]
    assert {"202", "400", "401", "413", "415", "422"} <= set(upload_op["responses"])
    assert document["paths"]["/healthz"]["get"]["security"] == []
    for download in ("output.csv", "errors.csv"):
        op = document["paths"][f"/api/v1/batches/{{batch_id}}/{download}"]["get"]
        enums = {p["name"]: p["schema"].get("enum") for p in op["parameters"]}
        assert enums["delimiter"] == ["comma", "semicolon", "tab", "input"], download
        assert enums["bom"] == ["true", "1", "yes", "on", "false", "0", "no", "off", "input"] and "400" in op["responses"], download
    assert set(document["webhooks"]) == {"batch.completed", "batch.completed_with_errors",
                                         "batch.failed", "batch.cancelled"}


def test_openapi_document_passes_the_openapi_31_schema(client):
    from openapi_spec_validator import validate
    validate(client.get("/openapi.json").get_json())


def test_docs_render_offline(client):
    page = client.get("/docs")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    sources = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert sources and all(s.startswith("/") and not s.startswith("//") for s in sources)
    for source in sources:
        asset = client.get(source)
        assert asset.status_code == 200, source
        assert len(asset.data) > 100
    bundle = client.get("/docs/static/swagger-ui-bundle.js")
    assert bundle.status_code == 200 and b"SwaggerUIBundle" in bundle.data
    assert "/openapi.json" in client.get("/docs/init.js").get_data(as_text=True)
