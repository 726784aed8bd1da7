"""The OpenAPI 3.1 document (`/openapi.json`) and its offline Swagger UI (`/docs`).

The document is built with `openapi-pydantic`: the paths are described here, and every schema in
`components.schemas` is generated from the pydantic models (`schemas/` for what the service
stores and returns, the few request/response shapes below for the rest), so a model change shows
in the document at once. Swagger UI's files come from the `swagger-ui-py` package and are served
by this app under /docs/static: no CDN, works offline.
"""
from __future__ import annotations

import functools
import html
import os
from datetime import datetime
from typing import Any, Literal

from flask import Blueprint, Response, jsonify
from openapi_pydantic import OpenAPI
from openapi_pydantic.util import construct_open_api_with_schema_class
from pydantic import BaseModel, ConfigDict, Field

from schemas.batch import BatchOut, BatchStatus
from schemas.csv_format import BOM_VALUES, DELIMITER_NAMES
from schemas.problem import Problem
from schemas.api_bodies import (BatchPage, EventsToken, Health, ProductItem, ProductPage, Ready,
                                UploadForm)
from schemas.product import ImageOut, ProductOut
from schemas.webhook import (Delivery, DeliveryAttempt, DeliveryPage, EventName, WebhookEvent,
                             WebhookSubscription, WebhookSubscriptionIn, WebhookSubscriptionPage,
                             WebhookSubscriptionPatch, WebhookSubscriptionWithSecret)

MODELS: list[type[BaseModel]] = [
    BatchOut, BatchPage, ProductOut, ProductItem, ProductPage, ImageOut, Problem, UploadForm,
    WebhookSubscriptionIn, WebhookSubscriptionPatch, WebhookSubscription,
    WebhookSubscriptionWithSecret, WebhookSubscriptionPage, DeliveryAttempt, Delivery,
    DeliveryPage, WebhookEvent, Health, Ready, EventsToken,
]


# --- the paths ----------------------------------------------------------------------------------

def ref(model: type[BaseModel] | str) -> dict:
    name = model if isinstance(model, str) else model.__name__
    return {"$ref": f"#/components/schemas/{name}"}


def json_body(model, description: str = "") -> dict:
    return {"description": description or "OK", "content": {"application/json": {
        "schema": ref(model)}}}


def problem(description: str, headers: dict | None = None) -> dict:
    out: dict[str, Any] = {"description": description, "content": {
        "application/problem+json": {"schema": ref(Problem)}}}
    if headers:
        out["headers"] = headers
    return out


RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before trying again.",
                               "schema": {"type": "integer"}}}
LOCATION = {"Location": {"description": "Where the resource can be read.",
                         "schema": {"type": "string"}}}

UNAUTHORIZED = problem("No or an unknown API key (only when API keys are configured).",
                       {"WWW-Authenticate": {"schema": {"type": "string"}}})
NOT_FOUND = problem("No such resource for this API key (another owner's ids answer 404 too).")
UNAVAILABLE = problem("A dependency (Redis, MongoDB, S3) is not reachable; nothing was changed.",
                      RETRY_AFTER)
BAD_PARAMETER = problem("A query parameter is malformed, or given more than once (`parameter` "
                        "names it).")
REPEATED_PARAMETER = problem("A query parameter is given more than once (`parameter` names it).")
CONFLICT = problem("The batch is not in a state that allows this.")


def path_param(name: str, description: str) -> dict:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": {"type": "string"}}


def query_param(name: str, description: str, schema: dict) -> dict:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": schema}


BATCH_ID = path_param("batch_id", "The batch's id.")
SUBSCRIPTION_ID = path_param("subscription_id", "The webhook subscription's id.")
DELIVERY_ID = path_param("delivery_id", "The delivery's id.")
LIMIT = query_param("limit", "Items per page.", {"type": "integer", "minimum": 1, "maximum": 500,
                                                 "default": 50})
CURSOR = query_param("cursor", "`next_cursor` of the previous page.", {"type": "string"})
DIALECT = [
    query_param("delimiter", "The CSV's delimiter (any case); default comma; `input`: the "
                "uploaded file's (`,` `;` or tab).",
                {"type": "string", "enum": list(DELIMITER_NAMES)}),
    query_param("bom", "Whether the CSV starts with a UTF-8 BOM (any case); default false; "
                "`input`: whether the uploaded file did.", {"type": "string", "enum": list(BOM_VALUES)}),
]


def operation(operation_id: str, summary: str, tag: str, responses: dict, *,
              params: list | None = None, body: dict | None = None, description: str = "",
              secured: bool = True) -> dict:
    op: dict[str, Any] = {"operationId": operation_id, "summary": summary, "tags": [tag],
                          "responses": dict(responses)}
    if description:
        op["description"] = description
    if params:
        op["parameters"] = params
    if body:
        op["requestBody"] = body
    if secured:
        op["responses"].setdefault("401", UNAUTHORIZED)
    else:
        op["security"] = []
    return op


def _paths() -> dict:
    csv_answer = {"description": "The CSV, streamed (`text/csv; charset=utf-8; header=present`), "
                                 "with `,` and no BOM unless `delimiter` or `bom` say "
                                 "otherwise; CRLF line endings.",
                  "content": {"text/csv": {"schema": {"type": "string"}}}}
    batches = "Batches"
    hooks = "Webhooks"
    ops = "Operations"
    statuses = [s.value for s in BatchStatus]
    paths = {
        "/api/v1/batches": {
            "post": operation(
                "uploadBatch", "Upload a CSV of products", batches,
                {"202": {**json_body(BatchOut, "Accepted: the batch is queued."),
                         "headers": LOCATION},
                 "400": problem("Empty file, no `file` part, or more than one."),
                 "413": problem("Larger than MAX_UPLOAD_BYTES."),
                 "415": problem("Not CSV, binary, or not UTF-8."),
                 "422": problem("No header, a missing required column, no data rows, an "
                                "invalid webhook_url, invalid sizes, or an invalid full_size "
                                "(not true/false, or false without sizes); webhook_url, sizes "
                                "or full_size given more than once or as a file part."),
                 "503": UNAVAILABLE},
                params=[query_param("webhook_url", "With a raw text/csv body: called when the "
                                    "batch finishes.", {"type": "string", "format": "uri"}),
                        query_param("filename", "With a raw text/csv body: the file's name.",
                                    {"type": "string"}),
                        query_param("sizes", "Extra outputs, e.g. thumb=200,medium=800 (see "
                                    "the form field).", {"type": "string"}),
                        query_param("full_size", "false: no full-size output, the main output "
                                    "is the largest size (see the form field).",
                                    {"type": "boolean"}),
                        {"name": "Idempotency-Key", "in": "header", "required": False,
                         "description": "The same key again returns the same batch.",
                         "schema": {"type": "string", "maxLength": 255}}],
                body={"required": True, "content": {
                    "multipart/form-data": {"schema": ref(UploadForm)},
                    "text/csv": {"schema": {"type": "string"}}}},
                description="Rows are checked one by one later: a bad row is rejected on its "
                            "own (see errors.csv); the whole file is refused only when it "
                            "cannot be a product CSV at all. An image URL that an earlier batch "
                            "of the same API key processed with the same output settings is "
                            "fetched with a conditional GET (If-None-Match, If-Modified-Since); "
                            "on 304, or the same bytes, its outputs are copied to this batch's "
                            "own keys instead of encoded, and the image says `reused: true` "
                            "(counted in the batch's `images.reused`)."),
            "get": operation(
                "listBatches", "List batches, newest first", batches,
                {"200": json_body(BatchPage), "400": BAD_PARAMETER},
                params=[query_param("status", "Only batches in this status.",
                                    {"type": "string", "enum": statuses}),
                        query_param("created_after", "ISO 8601 time with a zone.",
                                    {"type": "string", "format": "date-time"}),
                        query_param("created_before", "ISO 8601 time with a zone.",
                                    {"type": "string", "format": "date-time"}),
                        LIMIT, CURSOR]),
        },
        "/api/v1/batches/{batch_id}": {
            "get": operation("getBatch", "Read a batch", batches,
                             {"200": json_body(BatchOut), "404": NOT_FOUND}, params=[BATCH_ID]),
        },
        "/api/v1/batches/{batch_id}/products": {
            "get": operation("listProducts", "A batch's products and their images", batches,
                             {"200": json_body(ProductPage), "400": BAD_PARAMETER,
                              "404": NOT_FOUND}, params=[BATCH_ID, LIMIT, CURSOR]),
        },
        "/api/v1/batches/{batch_id}/output.csv": {
            "get": operation("getOutputCsv", "The output CSV", batches,
                             {"200": csv_answer, "400": BAD_PARAMETER, "404": NOT_FOUND,
                              "409": problem("The file is still being read (`rows.done_reading`).")},
                             params=[BATCH_ID, *DIALECT],
                             description="Every input row in order, with `Output Image Urls` "
                                         "(then one column per size) inserted after `Input "
                                         "Image Urls`; a row shorter than the header is padded "
                                         "with empty cells, so every column lines up."),
        },
        "/api/v1/batches/{batch_id}/errors.csv": {
            "get": operation("getErrorsCsv", "Rejected rows and failed images as CSV", batches,
                             {"200": csv_answer, "400": BAD_PARAMETER, "404": NOT_FOUND},
                             params=[BATCH_ID, *DIALECT],
                             description="Columns: `Line,S. No.,Input Image Url,Error,Code`; a "
                                         "cell that starts like a formula gets a leading `'`."),
        },
        "/api/v1/batches/{batch_id}/cancel": {
            "post": operation("cancelBatch", "Cancel a queued or processing batch", batches,
                              {"200": json_body(BatchOut, "Cancelled."), "404": NOT_FOUND,
                               "409": problem("The batch has already finished.")},
                              params=[BATCH_ID]),
        },
        "/api/v1/batches/{batch_id}/retry": {
            "post": operation("retryBatch", "Re-process the failed images of a finished batch",
                              batches,
                              {"202": {**json_body(BatchOut, "Accepted: processing again."),
                                       "headers": LOCATION},
                               "404": NOT_FOUND,
                               "409": problem("Still running, cancelled, or nothing failed.")},
                              params=[BATCH_ID]),
        },
        "/api/v1/batches/{batch_id}/events": {
            "get": operation(
                "batchEvents", "Live progress as server-sent events", batches,
                {"200": {"description": "`progress` events (data: the batch object) on each "
                                        "change, then one `status` event; `Last-Event-ID` "
                                        "resumes.",
                         "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                 "204": {"description": "The client has already seen the final event."},
                 "404": NOT_FOUND},
                params=[BATCH_ID, {"name": "Last-Event-ID", "in": "header", "required": False,
                                   "schema": {"type": "string"}},
                        query_param("token", "Instead of the Authorization header (a browser's "
                                    "EventSource cannot send one): a token from "
                                    "`POST /api/v1/batches/{batch_id}/events-token`.",
                                    {"type": "string"})]),
        },
        "/api/v1/batches/{batch_id}/events-token": {
            "post": operation(
                "createEventsToken", "A short-lived token for the events stream", batches,
                {"200": json_body(EventsToken), "404": NOT_FOUND}, params=[BATCH_ID],
                description="Bound to this batch and the calling API key, accepted as "
                            "`?token=` by the events stream for EVENTS_TOKEN_TTL_S seconds "
                            "(default 300). Never put an API key in a URL."),
        },
        "/api/v1/batches/{batch_id}/outputs.zip": {
            "get": operation(
                "getOutputsZip", "Every output image of the batch as one ZIP", batches,
                {"200": {"description": "The ZIP, streamed; entries `<S. No.> <product name>/"
                                        "<input file name>.<jpg|webp>`, and each size's output "
                                        "as `<input file name>-<size>.<jpg|webp>` (each object "
                                        "once; with full_size=false every entry is named after "
                                        "its size, the main output after the largest size; a "
                                        "clash of names gets ` (2)`).",
                         "content": {"application/zip": {"schema": {
                             "type": "string", "format": "binary"}}}},
                 "404": NOT_FOUND, "409": problem("No image has been processed yet.")},
                params=[BATCH_ID]),
        },
        "/api/v1/batches/{batch_id}/deliveries": {
            "get": operation("listDeliveries", "The batch's webhook delivery log", hooks,
                             {"200": json_body(DeliveryPage), "404": NOT_FOUND},
                             params=[BATCH_ID]),
        },
        "/api/v1/webhooks": {
            "post": operation(
                "createWebhook", "Subscribe to batch events", hooks,
                {"201": {**json_body(WebhookSubscriptionWithSecret,
                                     "Created; the secret is shown only here."),
                         "headers": LOCATION},
                 "400": problem("The body is not a JSON object."),
                 "409": problem("Too many subscriptions."),
                 "415": problem("Not application/json."),
                 "422": problem("Invalid url or events, or an unknown field.")},
                body={"required": True, "content": {"application/json": {
                    "schema": ref(WebhookSubscriptionIn)}}}),
            "get": operation("listWebhooks", "List subscriptions", hooks,
                             {"200": json_body(WebhookSubscriptionPage)}),
        },
        "/api/v1/webhooks/{subscription_id}": {
            "get": operation("getWebhook", "Read a subscription", hooks,
                             {"200": json_body(WebhookSubscription), "404": NOT_FOUND},
                             params=[SUBSCRIPTION_ID]),
            "patch": operation("updateWebhook", "Change a subscription", hooks,
                               {"200": json_body(WebhookSubscription), "404": NOT_FOUND,
                                "400": problem("The body is not a JSON object."),
                                "415": problem("Not application/json."),
                                "422": problem("An invalid or unknown field.")},
                               params=[SUBSCRIPTION_ID],
                               body={"required": True, "content": {"application/json": {
                                   "schema": ref(WebhookSubscriptionPatch)}}}),
            "delete": operation("deleteWebhook", "Unsubscribe", hooks,
                                {"204": {"description": "Deleted."}, "404": NOT_FOUND},
                                params=[SUBSCRIPTION_ID]),
        },
        "/api/v1/webhooks/{subscription_id}/rotate-secret": {
            "post": operation("rotateWebhookSecret", "Replace the signing secret", hooks,
                              {"200": json_body(WebhookSubscriptionWithSecret,
                                                "The new secret; the old one also signs for "
                                                "24 h."),
                               "404": NOT_FOUND, "409": problem("Rotated concurrently.")},
                              params=[SUBSCRIPTION_ID]),
        },
        "/api/v1/deliveries/{delivery_id}": {
            "get": operation("getDelivery", "Read one delivery and its attempts", hooks,
                             {"200": json_body(Delivery), "404": NOT_FOUND},
                             params=[DELIVERY_ID]),
        },
        "/api/v1/deliveries/{delivery_id}/redeliver": {
            "post": operation("redeliver", "Send a delivery again", hooks,
                              {"202": json_body(Delivery, "Queued."), "404": NOT_FOUND,
                               "409": problem("Its subscription was deleted."),
                               "429": problem("Over REDELIVER_RATE for this caller; "
                                              "`Retry-After` says when to try again."),
                               "503": UNAVAILABLE},
                              params=[DELIVERY_ID]),
        },
        "/": {"get": operation("consoleHome", "The web console: upload and batches", "Console",
                               {"200": {"description": "HTML.", "content": {"text/html": {}}}},
                               secured=False)},
        "/batches/{batch_id}": {"get": operation(
            "consoleBatch", "The web console: one batch, live", "Console",
            {"200": {"description": "HTML.", "content": {"text/html": {}}}},
            params=[BATCH_ID], secured=False)},
        "/healthz": {"get": operation("healthz", "The process is up (no I/O)", ops,
                                      {"200": json_body(Health)}, secured=False)},
        "/readyz": {"get": operation("readyz", "Redis, MongoDB and S3 answer", ops,
                                     {"200": json_body(Ready),
                                      "503": problem("The named dependencies did not answer "
                                                     "(`failed`, `checks`).", RETRY_AFTER)},
                                     secured=False)},
        "/metrics": {"get": operation("metrics", "Prometheus metrics", ops,
                                      {"200": {"description": "Prometheus text format.",
                                               "content": {"text/plain": {"schema": {
                                                   "type": "string"}}}}}, secured=False,
                                      description="Pipeline, queue and HTTP metrics (docs/"
                                                  "operations.md), among them polite fetching's "
                                                  "`batchpress_host_throttled_total{status}`, "
                                                  "`batchpress_host_slowdowns_total` and "
                                                  "`batchpress_image_deferrals_total{reason}`.")},
        "/openapi.json": {"get": operation("openapi", "This document", ops,
                                           {"200": {"description": "OpenAPI 3.1 JSON.",
                                                    "content": {"application/json": {}}}},
                                           secured=False)},
        "/docs": {"get": operation("docs", "This document, rendered (Swagger UI)", ops,
                                   {"200": {"description": "HTML.",
                                            "content": {"text/html": {}}}}, secured=False)},
    }
    for path, methods in paths.items():  # api/query_params.py: every read of the API
        if path.startswith("/api/") and "get" in methods:
            methods["get"]["responses"].setdefault("400", REPEATED_PARAMETER)
    return paths


def _webhooks() -> dict:
    post = {"post": {
        "summary": "A batch finished (sent to the batch's webhook_url and to subscriptions)",
        "description": "Signed per Standard Webhooks: `webhook-id` (the same on every retry), "
                       "`webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256 of "
                       "\"id.timestamp.body\">`. Answer 2xx within WEBHOOK_TIMEOUT_S; anything "
                       "else is retried with exponential backoff.",
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": ref(WebhookEvent)}}},
        "responses": {"2XX": {"description": "Received."}},
    }}
    return {name: post for name in ("batch.completed", "batch.completed_with_errors",
                                    "batch.failed", "batch.cancelled")}


@functools.lru_cache(maxsize=1)
def document() -> dict:
    """The whole OpenAPI document as a JSON-ready dict (built once per process)."""
    base = OpenAPI.model_validate({
        "openapi": "3.1.0",
        "info": {"title": "Batchpress", "version": "1.0.0",
                 "description": "Compress the product images listed in a CSV file. Errors are "
                                "`application/problem+json` (RFC 9457)."},
        "servers": [{"url": "/"}],
        "tags": [{"name": "Batches"}, {"name": "Webhooks"}, {"name": "Operations"},
                 {"name": "Console"}],
        "paths": _paths(),
        "webhooks": _webhooks(),
        "components": {"securitySchemes": {"bearerAuth": {
            "type": "http", "scheme": "bearer",
            "description": "An API key from API_KEYS (only when the server has keys)."}}},
        "security": [{"bearerAuth": []}],
    })
    full = construct_open_api_with_schema_class(base, schema_classes=list(MODELS))
    return full.model_dump(mode="json", by_alias=True, exclude_none=True, exclude_unset=True)


# --- serving ------------------------------------------------------------------------------------

def _assets_dir() -> str:
    import swagger_ui
    return os.path.join(os.path.dirname(swagger_ui.__file__), "static")


bp = Blueprint("docs", __name__, static_folder=_assets_dir(), static_url_path="/docs/static")

DOCS_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>{title}</title>
  <link rel="stylesheet" href="/docs/static/swagger-ui.css">
  <link rel="icon" type="image/png" href="/docs/static/favicon-32x32.png" sizes="32x32">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/docs/static/swagger-ui-bundle.js"></script>
  <script src="/docs/static/swagger-ui-standalone-preset.js"></script>
  <script src="/docs/init.js"></script>
</body>
</html>
"""

INIT_JS = """window.onload = function () {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
    layout: "StandaloneLayout",
    validatorUrl: null
  });
};
"""

# Everything the page needs comes from this server (no inline script, no CDN).
CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
       "script-src 'self'; connect-src 'self'")


@bp.get("/openapi.json")
def openapi_json():
    response = jsonify(document())
    response.headers["Cache-Control"] = "no-cache"
    return response


@bp.get("/docs")
def docs():
    return Response(DOCS_PAGE.format(title=html.escape(document()["info"]["title"] + " API")),
                    mimetype="text/html", headers={"Content-Security-Policy": CSP})


@bp.get("/docs/init.js")
def docs_init():
    return Response(INIT_JS, mimetype="text/javascript")
