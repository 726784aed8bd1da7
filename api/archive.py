"""GET /api/v1/batches/{id}/outputs.zip: every output image of a batch in one streamed ZIP.

Each image's outputs are its main one and one per size, each object once: a size the image is
not larger than is served by the main output, which is not repeated. Without a full-size output
(`full_size=false`) the outputs are named after their sizes only.

The archive is written while it is sent (zipstream-ng, stored without recompression: the images
are compressed already), each image read from S3 only when its turn comes, so neither the
archive nor the batch is ever held in memory.
"""
from __future__ import annotations

import itertools

from flask import Blueprint, Response, stream_with_context
from zipstream import ZIP_STORED, ZipStream

from api.batches import clean_filename, content_disposition, load_batch
from api.errors import ApiError
from infra import storage, stores
from schemas.archive_names import ArchiveNames
from schemas.records import ACCEPTED, PROCESSED, BatchRecord, ImageOutcome
from schemas.sizes import largest_size

bp = Blueprint("archive", __name__, url_prefix="/api/v1/batches")
READ_SIZE = 256 * 1024


class _StoredObject:
    """An S3 object's bytes, fetched only when the ZIP writer reaches it."""

    def __init__(self, key: str):
        self.key = key

    def __iter__(self):
        body = storage.open_stream(self.key)
        try:
            yield from body.iter_chunks(READ_SIZE)
        finally:
            body.close()


def _entries(batch: BatchRecord):
    names = ArchiveNames()
    for row, images in stores.products().iter_rows(batch.id, status=ACCEPTED):
        for position, (url, image) in enumerate(row.images_of(images), 1):
            if image is None or image.status != PROCESSED or not image.output_key:
                continue
            for size, key in output_objects(image, dict(batch.sizes), batch.full_size):
                extension = key.rsplit(".", 1)[-1]
                yield names.name(row.serial_no, row.product_name, url, position, extension,
                                 size), key


def output_objects(image: ImageOutcome, sizes: dict[str, int],
                   full_size: bool = True) -> list[tuple[str | None, str]]:
    """(size name or None for the main output, object key) of each distinct object of a
    processed image, named after the first output that is it; without a full-size output the
    main one is named after the largest size, which it always is (also for an image smaller
    than every size, kept at its own size). A size's key is read off its URL: the image's URLs
    all start with what its main URL has before the main key."""
    prefix = (image.output_url or "")[:-len(image.output_key)] \
        if (image.output_url or "").endswith(image.output_key) else None
    main_name = None if full_size or not sizes else largest_size(sizes)[0]
    slots = [(None, image.output_url)] if full_size else []
    slots += [(name, image.sizes[name]) for name in sizes if image.sizes.get(name)]
    found, seen = [], set()
    for size, url in slots:
        if url == image.output_url:
            key = image.output_key
        elif prefix is not None and url.startswith(prefix):
            key = url[len(prefix):]
        else:
            continue  # not an object of ours (never made so; skipped rather than guessed)
        if key not in seen:
            seen.add(key)
            found.append((main_name if key == image.output_key else size, key))
    return found


@bp.get("/<batch_id>/outputs.zip")
def outputs_zip(batch_id: str):
    batch = load_batch(batch_id)
    entries = _entries(batch)
    first = next(entries, None)
    if first is None:
        raise ApiError(409, "No output images",
                       f"the batch ({batch.status.value}) has no processed image yet",
                       kind="no-outputs", batch_status=batch.status.value)
    archive = ZipStream(compress_type=ZIP_STORED)

    def stream():
        for name, key in itertools.chain([first], entries):
            archive.add(_StoredObject(key), name)
            yield from archive.all_files()  # this image now, before the next row is read
        yield from archive.finalize()

    name = (clean_filename(batch.filename) or batch.id).rsplit(".", 1)[0] + "-images.zip"
    return Response(stream_with_context(stream()), mimetype="application/zip",
                    headers={"Content-Disposition": content_disposition(name)})
