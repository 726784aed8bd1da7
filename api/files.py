"""Serving output images from the API itself, for the embedded default (no public S3 there)."""
from __future__ import annotations

from botocore.exceptions import ClientError
from flask import Blueprint, Response

from api.errors import not_found
from infra import storage
from infra.object_folder import BadKey, ObjectNotFound

bp = Blueprint("files", __name__, url_prefix="/files")


@bp.get("/<path:key>")
def get_file(key: str):
    if not key.startswith(storage.OUTPUT_PREFIX):
        raise not_found("file")
    try:
        obj = storage.get_object(key)
    except (ClientError, ObjectNotFound, BadKey):
        raise not_found("file") from None
    body = obj["Body"]
    return Response(body.iter_chunks(64 * 1024), mimetype=obj.get("ContentType"),
                    headers={"Content-Length": str(obj["ContentLength"]),
                             "Cache-Control": "public, max-age=31536000, immutable"})
