"""The /api/v1/batches endpoints: upload, read, page, and download results."""
from __future__ import annotations

import csv
import io
import logging
import re
import unicodedata
from dataclasses import replace
from datetime import datetime
from urllib.parse import quote

from botocore.exceptions import BotoCoreError, ClientError
from flask import Blueprint, Response, jsonify, request, stream_with_context, url_for
from pymongo.errors import PyMongoError
from redis.exceptions import RedisError
from werkzeug.utils import secure_filename

from api.auth import owner
from api import app_settings
from api.errors import ApiError, not_found
from api.query_params import one_value
from api.upload import (FIRST_BLOCK, CSV_TYPES, CappedHashingReader, UploadTooLarge,
                        check_first_block, read_first_block)
from infra import jobs, metrics, storage, stores
from infra.url_safety import check_url
from schemas.api_bodies import ProductItem
from schemas.batch import BatchStatus, batch_json
from schemas.csv_format import BOM_VALUES, DELIMITER_NAMES, Dialect, inert_cell, map_columns
from schemas.cursor import decode_cursor, encode_cursor
from schemas.failures import FailureCode
from schemas.quoting import excerpt, quoted
from schemas.sizes import parse_full_size, parse_sizes, size_column
from schemas.records import (FAILED, PENDING, BatchRecord, IdempotencyRecord, ImageRecord,
                             ProductRecord, new_batch_id)
from schemas.product import ImageOut
from schemas.timestamps import parse_aware

log = logging.getLogger(__name__)
bp = Blueprint("batches", __name__, url_prefix="/api/v1/batches")

MAX_LIMIT = 500
DEFAULT_LIMIT = 50


def base_url() -> str:
    return request.url_root.rstrip("/")


def load_batch(batch_id: str) -> BatchRecord:
    batch = stores.batches().get(batch_id, owner())
    if batch is None:
        raise not_found("batch", batch_id)
    return batch


# --- upload -----------------------------------------------------------------------------------

@bp.post("")
def upload():
    settings = app_settings()
    stream, filename = _incoming_file()
    webhook_url = _webhook_url()
    sizes = _sizes(settings)
    full_size = _full_size(settings, sizes)
    idempotency_key = _idempotency_key()
    first = read_first_block(stream)
    check_first_block(first, complete=len(first) < FIRST_BLOCK,
                      added_columns=tuple(size_column(name) for name in sizes))
    reader = CappedHashingReader(first, stream, settings.max_upload_bytes)
    if idempotency_key:
        try:
            existing = stores.idempotency().find(owner(), idempotency_key)
        except PyMongoError as error:
            log.error("MongoDB read failed: %s", error)
            raise _unavailable("MongoDB") from None
        if existing is not None:  # a replay: hash the body without storing it again
            _drain(reader, settings)
            return _replay(existing, _fingerprint(reader.sha256.hexdigest(), webhook_url, sizes,
                                                  full_size))
    batch_id = new_batch_id()
    key = f"{storage.UPLOAD_PREFIX}{batch_id}.csv"
    try:
        storage.upload_stream(key, reader, "text/csv; charset=utf-8")
    except UploadTooLarge:
        raise _too_large(settings) from None
    except (BotoCoreError, ClientError) as error:
        log.error("S3 upload failed: %s", error)
        raise _unavailable("S3") from None
    fingerprint = _fingerprint(reader.sha256.hexdigest(), webhook_url, sizes, full_size)
    try:
        batch = stores.batches().create(BatchRecord.new(
            batch_id=batch_id, owner=owner(), filename=filename, csv_key=key,
            csv_sha256=reader.sha256.hexdigest(), csv_bytes=reader.size,
            webhook_url=webhook_url, sizes=sizes, sizes_only=not full_size))
        # The batch exists before the key is claimed, so whoever finds the key finds its batch.
        claimed = (stores.idempotency().claim(IdempotencyRecord.new(
            owner(), idempotency_key, batch_id=batch_id, fingerprint=fingerprint))
                   if idempotency_key else True)
    except PyMongoError as error:
        log.error("MongoDB insert failed: %s", error)
        _forget_batch(batch_id, key)
        raise _unavailable("MongoDB") from None
    if not claimed:  # a concurrent request with the same key won the race
        _forget_batch(batch_id, key)
        return _replay(stores.idempotency().find(owner(), idempotency_key), fingerprint)
    try:
        jobs.enqueue_parse(batch_id)
    except RedisError as error:
        log.error("enqueue failed: %s", error)
        if idempotency_key:
            try:
                stores.idempotency().release(owner(), idempotency_key, batch_id)
            except PyMongoError:
                pass
        _forget_batch(batch_id, key)
        raise _unavailable("Redis") from None
    metrics.batch_created()
    response = jsonify(batch_json(batch, base_url()))
    response.status_code = 202
    response.headers["Location"] = url_for("batches.get_batch", batch_id=batch_id)
    return response


IDEMPOTENCY_KEY_MAX = 255


def _idempotency_key() -> str | None:
    """The Idempotency-Key header: 1 to 255 visible ASCII characters, or absent."""
    value = request.headers.get("Idempotency-Key")
    if value is None:
        return None
    if not 1 <= len(value) <= IDEMPOTENCY_KEY_MAX or not all(33 <= ord(c) <= 126 for c in value):
        raise ApiError(400, "Invalid Idempotency-Key",
                       f"Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_MAX} visible ASCII characters",
                       kind="invalid-idempotency-key")
    return value


def _fingerprint(sha256: str, webhook_url: str | None, sizes: dict[str, int],
                 full_size: bool = True) -> str:
    """What must match for a request to count as the same one again: the file, webhook_url,
    sizes and full_size."""
    fingerprint = f"sha256:{sha256}|webhook_url:{webhook_url or ''}"
    if sizes:  # (without sizes, the same fingerprint as before sizes existed)
        fingerprint += "|sizes:" + ",".join(f"{n}={e}" for n, e in sizes.items())
    if not full_size:  # (likewise with a full-size output)
        fingerprint += "|full_size:false"
    return fingerprint


def _option(name: str) -> str | None:
    """An upload option: the query parameter or the multipart form field. Given more than once
    (twice in either, or in both), or as a file part, is a ValueError: reading one of them, or
    none, would silently drop what the caller also asked for."""
    values = request.args.getlist(name)
    if request.mimetype == "multipart/form-data":
        if name in request.files:
            raise ValueError("sent as a file part; send it as a plain form field "
                             f"(curl -F '{name}=…', not -F '{name}=@file')")
        values += request.form.getlist(name)
    return one_value(values)


def _sizes(settings) -> dict[str, int]:
    """The extra output sizes asked for (`sizes` query parameter or form field), else
    DEFAULT_SIZES; an empty `sizes=` asks for none."""
    try:
        value = _option("sizes")
        return parse_sizes(settings.default_sizes if value is None else value)
    except ValueError as error:
        raise ApiError(422, "Invalid sizes", f"sizes: {error}", kind="invalid-sizes",
                       field="sizes") from None


def _full_size(settings, sizes: dict[str, int]) -> bool:
    """Whether a full-size output is made (`full_size` query parameter or form field), else
    DEFAULT_FULL_SIZE."""
    try:
        return parse_full_size(_option("full_size"), settings.default_full_size, sizes)
    except ValueError as error:
        raise ApiError(422, "Invalid full_size", f"full_size: {error}",
                       kind="invalid-full-size", field="full_size") from None


def _drain(reader: CappedHashingReader, settings) -> None:
    try:
        while reader.read(1024 * 1024):
            pass
    except UploadTooLarge:
        raise _too_large(settings) from None


def _replay(record: IdempotencyRecord | None, fingerprint: str):
    """The answer to a request whose Idempotency-Key was used before: the original batch."""
    if record is None:  # the first request failed and released its key just now
        raise ApiError(409, "Conflict", "a request with this Idempotency-Key was being processed "
                       "and did not complete; send it again", kind="idempotency-key-in-use")
    if record.fingerprint != fingerprint:
        raise ApiError(422, "Idempotency-Key reused",
                       "this Idempotency-Key was already used with a different file, "
                       "webhook_url, sizes or full_size; use a new key for a new upload",
                       kind="idempotency-key-reused",
                       batch_id=record.batch_id)
    batch = stores.batches().get(record.batch_id, owner())
    if batch is None:
        raise ApiError(409, "Conflict", "the upload that used this Idempotency-Key is not "
                       "available any more; use a new key", kind="idempotency-key-in-use")
    response = jsonify(batch_json(batch, base_url()))
    response.status_code = 202  # the contract's status for an upload, replayed or not
    response.headers["Location"] = url_for("batches.get_batch", batch_id=batch.id)
    response.headers["Idempotent-Replayed"] = "true"
    return response


def _too_large(settings) -> ApiError:
    return ApiError(413, "Upload too large",
                    f"the file is larger than MAX_UPLOAD_BYTES ({settings.max_upload_bytes} bytes)",
                    kind="too-large")


def _forget_batch(batch_id: str, key: str) -> None:
    """Undo a half-made upload: its batch record (if any) and its stored file."""
    try:
        stores.batches().delete(batch_id)
    except PyMongoError:
        log.warning("could not delete the record of failed upload %s", batch_id)
    _forget_upload(key)


def _incoming_file():
    mimetype = request.mimetype
    if mimetype == "multipart/form-data":
        try:
            upload = one_value(request.files.getlist("file"))
        except ValueError as error:  # one batch per upload: which file was meant is a guess
            raise ApiError(400, "Invalid file", f"file: {error}", kind="invalid-file",
                           field="file") from None
        if upload is None:
            detail = ("'file' is a plain form field, not a file part: send the CSV as a file "
                      "(curl -F 'file=@products.csv')" if "file" in request.form
                      else "the multipart form has no 'file' field")
            raise ApiError(400, "Missing file", detail, kind="missing-file", field="file")
        return upload.stream, clean_filename(upload.filename)
    if mimetype in CSV_TYPES:
        return request.stream, clean_filename(request.args.get("filename"))
    raise ApiError(415, "Unsupported Media Type",
                   f"send multipart/form-data with a 'file' field, or a text/csv body; "
                   f"got {excerpt(mimetype) if mimetype else 'no Content-Type'}",
                   kind="unsupported-media-type")


MAX_FILENAME = 255
# Control and format characters, surrogates, line and paragraph separators.
_UNSAFE_CATEGORIES = {"Cc", "Cf", "Cs", "Zl", "Zp"}


def clean_filename(value: str | None) -> str | None:
    """The name to keep for an upload: its basename (either slash), without control characters,
    at most MAX_FILENAME characters; None when nothing is left."""
    if not value:
        return None
    name = "".join(c for c in value if unicodedata.category(c) not in _UNSAFE_CATEGORIES)
    name = re.split(r"[/\\]", name)[-1].strip()
    return name[:MAX_FILENAME] or None


def content_disposition(name: str) -> str:
    """`attachment` with an ASCII fallback `filename` and the exact name in `filename*` (RFC 6266,
    RFC 8187)."""
    name = clean_filename(name) or "download.csv"
    fallback = secure_filename(name) or "download.csv"
    return (f'attachment; filename="{fallback}"; '
            f"filename*=UTF-8''{quote(name, safe='')}")


def _webhook_url() -> str | None:
    """The `webhook_url` query parameter or form field, checked; None when absent or empty."""
    try:
        value = _option("webhook_url")
        if not value:
            return None
        # https, a public host (unless ALLOW_PRIVATE_URLS): see infra/url_safety.py
        return check_url(value, allow_private=app_settings().allow_private_urls)
    except ValueError as error:  # given more than once, or an UnsafeUrl (a ValueError)
        raise ApiError(422, "Invalid webhook_url", f"webhook_url: {error}",
                       kind="invalid-webhook-url", field="webhook_url") from None


def _unavailable(service: str) -> ApiError:
    return ApiError(503, "Service Unavailable",
                    f"{service} is not reachable right now; nothing was stored, try again",
                    kind="dependency-unavailable", headers={"Retry-After": "30"}, service=service)


def _forget_upload(key: str) -> None:
    try:
        storage.delete(key)
    except (BotoCoreError, ClientError):
        log.warning("could not delete orphaned upload %s", key)


# --- reads ------------------------------------------------------------------------------------

@bp.get("/<batch_id>")
def get_batch(batch_id: str):
    return jsonify(batch_json(load_batch(batch_id), base_url()))


def _limit() -> int:
    raw = request.args.get("limit", str(DEFAULT_LIMIT))
    # ASCII digits only: str.isdigit() is true for '²', which int() then refuses
    if not re.fullmatch(r"[0-9]{1,4}", raw) or not 1 <= int(raw) <= MAX_LIMIT:
        raise ApiError(400, "Invalid parameter", f"limit must be a whole number from 1 to "
                       f"{MAX_LIMIT}, got {quoted(raw)}", kind="invalid-parameter",
                       parameter="limit")
    return int(raw)


def _time_param(name: str) -> datetime | None:
    raw = request.args.get(name)
    if not raw:
        return None
    if " " in raw.strip() and "T" in raw:  # an unencoded "+01:00" arrives as " 01:00"
        raw = raw.strip().replace(" ", "+")
    try:
        datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(400, "Invalid parameter",
                       f"{name} must be an ISO 8601 time, got {quoted(raw)}",
                       kind="invalid-parameter", parameter=name) from None
    try:
        return parse_aware(raw)
    except ValueError as error:
        raise ApiError(400, "Invalid parameter", f"{name} {error}, got {quoted(raw)}",
                       kind="invalid-parameter", parameter=name) from None


@bp.get("")
def list_batches():
    status = request.args.get("status")
    if status and status not in {s.value for s in BatchStatus}:
        raise ApiError(400, "Invalid parameter",
                       f"status must be one of {', '.join(s.value for s in BatchStatus)}, "
                       f"got {quoted(status)}",
                       kind="invalid-parameter", parameter="status")
    cursor = request.args.get("cursor") or None
    after = _check_list_cursor(cursor) if cursor else None
    limit = _limit()
    found = stores.batches().list_page(
        owner(), limit=limit + 1, after=after, status=status,
        created_after=_time_param("created_after"), created_before=_time_param("created_before"))
    next_cursor = None
    if len(found) > limit:
        found = found[:limit]
        last = found[-1]
        next_cursor = encode_cursor({"t": last.created_at.isoformat(), "i": last.id})
    return jsonify({"items": [batch_json(b, base_url()) for b in found],
                    "next_cursor": next_cursor})


def _bad_cursor() -> ApiError:
    return ApiError(400, "Invalid parameter", "cursor is not one this API returned",
                    kind="invalid-parameter", parameter="cursor")


def _decode_cursor(raw: str) -> dict:
    try:
        return decode_cursor(raw)
    except ValueError:
        raise _bad_cursor() from None


MAX_CURSOR_LINE = 2**31
MAX_CURSOR_ID = 64


def _check_list_cursor(raw: str) -> tuple[datetime, str]:
    """The batches list's cursor holds the last item's `t` (an ISO time with a zone) and `i` (its
    id); anything else (numbers, objects, naive times) is refused before it reaches a query."""
    position = _decode_cursor(raw)
    at, last_id = position.get("t"), position.get("i")
    if not (isinstance(at, str) and isinstance(last_id, str)
            and 0 < len(last_id) <= MAX_CURSOR_ID and len(at) <= 64):
        raise _bad_cursor()
    try:
        when = parse_aware(at)
    except ValueError:
        raise _bad_cursor() from None
    return when, last_id


def _products_cursor(raw: str) -> int:
    """The products cursor holds `l`, the last line returned: an int with 0 <= l < 2**31."""
    line = _decode_cursor(raw).get("l")
    if type(line) is not int or not 0 <= line < MAX_CURSOR_LINE:  # bool, float, str: refused
        raise _bad_cursor()
    return line


@bp.get("/<batch_id>/products")
def list_products(batch_id: str):
    load_batch(batch_id)
    after = _products_cursor(request.args["cursor"]) if request.args.get("cursor") else 0
    page, last = stores.products().page_products(batch_id, after_line=after, limit=_limit())
    return jsonify({"items": [_product_json(row, images) for row, images in page],
                    "next_cursor": encode_cursor({"l": last}) if last else None})


def _product_json(row: ProductRecord, images: dict[str, ImageRecord]) -> dict:
    """A product as the API shows it, built through its schema (so the two cannot drift)."""
    items = [ImageOut(input_url=url, status=PENDING) if image is None else
             ImageOut(input_url=url, output_url=image.output_url, status=image.status,
                      error=image.error, code=image.error_code, bytes_in=image.bytes_in,
                      bytes_out=image.bytes_out, width=image.width, height=image.height,
                      format=image.format, output_format=image.output_format,
                      sizes=image.sizes, kept_original=image.kept_original,
                      reused=bool(image.reused))
             for url, image in row.images_of(images)]
    return ProductItem(serial_no=row.serial_no, product_name=row.product_name,
                       line=row.line, input_image_urls=row.input_image_urls,
                       output_image_urls=[i.output_url for i in items],
                       status=ProductRecord.display_status({i.status for i in items}),
                       images=items).model_dump(mode="json")


CSV_WRITE_CHARS = 64 * 1024


def _download_dialect(batch: BatchRecord) -> Dialect:
    """The dialect output.csv and errors.csv are written in: `,` and no BOM, or what the
    query's `delimiter` (comma, semicolon, tab) and `bom` (true, false) ask for; `input` for
    either takes the uploaded file's (batch.dialect)."""
    dialect = Dialect()
    for name, choices in (("delimiter", DELIMITER_NAMES), ("bom", BOM_VALUES)):
        raw = request.args.get(name)
        if raw is None:
            continue
        if raw.lower() not in choices:
            raise ApiError(400, "Invalid parameter",
                           f"{name} must be one of {', '.join(choices)}, got {quoted(raw)}",
                           kind="invalid-parameter", parameter=name)
        value = choices[raw.lower()]
        if value is None:  # `input`: as the uploaded file was
            value = getattr(batch.dialect, name)
        dialect = replace(dialect, **{name: value})
    return dialect


def _csv_response(batch: BatchRecord, suffix: str, records, dialect: Dialect, *,
                  inert: bool = False) -> Response:
    name = (clean_filename(batch.filename) or batch.id).rsplit(".", 1)[0] + suffix
    return Response(stream_with_context(_csv_blocks(records, dialect, inert)),
                    content_type="text/csv; charset=utf-8; header=present",
                    headers={"Content-Disposition": content_disposition(name)})


def _csv_blocks(records, dialect: Dialect, inert: bool):
    """The CSV text of `records` (lists of cells) in `dialect`: the first (the header) at once,
    so the first byte leaves whatever the file's size, then writes of about CSV_WRITE_CHARS
    from one writer (a write, or a writer, per line made a large file stream at a few hundred
    KB/s). `inert`: cells no spreadsheet runs as formulas (errors.csv: user text beside ours).
    """
    out = io.StringIO()
    if dialect.bom:  # Excel reads a file without one in the locale's code page ("CafÃ©")
        out.write("\ufeff")
    writer = csv.writer(out, delimiter=dialect.delimiter, lineterminator="\r\n")
    first = True
    for cells in records:
        writer.writerow([inert_cell(cell) for cell in cells] if inert else cells)
        if first or out.tell() >= CSV_WRITE_CHARS:
            yield out.getvalue()
            out.seek(0)
            out.truncate()
            first = False
    if out.tell():
        yield out.getvalue()


@bp.get("/<batch_id>/output.csv")
def output_csv(batch_id: str):
    batch = load_batch(batch_id)
    dialect = _download_dialect(batch)
    if not batch.header:
        if batch.finished:
            raise ApiError(409, "No output", f"the batch ended {batch.status.value} before its "
                           f"file was read: {batch.error or 'no rows'}", kind="no-output")
        raise ApiError(409, "Not ready", "the batch's file is still being read; try again "
                       "when the batch's rows.done_reading is true", kind="not-ready")
    columns = map_columns(batch.header)

    sizes = list(batch.sizes)

    def lines():
        yield columns.output_header([size_column(name) for name in sizes])
        for row, images in stores.products().iter_rows(batch_id):
            yield columns.output_row(row.cells, [",".join(row.output_slots(images, size))
                                                 for size in [None, *sizes]])

    return _csv_response(batch, "-output.csv", lines(), dialect)


@bp.get("/<batch_id>/errors.csv")
def errors_csv(batch_id: str):
    batch = load_batch(batch_id)
    dialect = _download_dialect(batch)
    cancelled = batch.status == BatchStatus.CANCELLED

    def lines():
        yield ["Line", "S. No.", "Input Image Url", "Error", "Code"]
        if batch.status == BatchStatus.FAILED and not batch.header:
            yield ["", "", "", batch.error or "the file could not be read",
                   FailureCode.FILE_UNREADABLE]
        for row, images in stores.products().iter_rows(batch_id):
            if not row.accepted:
                yield [row.line, row.serial_raw, "", row.error, FailureCode.INVALID_ROW]
                continue
            for url, image in row.images_of(images):
                if image and image.status == FAILED:
                    yield [row.line, row.serial_no, url, image.error, image.error_code or ""]
                elif cancelled and (image is None or image.status == PENDING):
                    yield [row.line, row.serial_no, url,
                           "not processed: the batch was cancelled first", FailureCode.CANCELLED]

    return _csv_response(batch, "-errors.csv", lines(), dialect, inert=True)
