"""Re-imports: recognising an image a batch of the same owner processed before with the same
output settings, and copying its outputs under the new batch's keys instead of encoding again.

One read per chunk finds what is remembered of its URLs (`Known.load`); each image is then
fetched with a conditional GET (`Known.validators`). A `304`, or a `200` whose bytes hash the
same as last time, makes `copy_outputs` copy the stored objects server-side; after every
successful processing, reused or not, `Known.remember` records the validators, the content hash
and where the outputs now are: written together with the chunk's others, a write a second at
most and at the chunk's end (`Known.flush`). What a killed worker had not written yet is only
a reuse missed: the next import of those URLs reuses older outputs or processes them anew.

Why copies and not one shared, content-addressed object: each batch keeps its outputs under its
own prefix (`outputs/<batch>/…`, the documented names), so a batch's URLs stay valid whatever
happens to another batch's objects (deleted, expired by a bucket lifecycle rule, overwritten by
a re-run), with no reference counting. A copy moves no bytes through the worker.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import PurePosixPath
from typing import Callable

from infra import storage, stores
from infra.batching import Batch
from infra.settings import Settings
from schemas.records import BatchRecord, ImageRecord, SourceRecord
from schemas.reuse import output_fingerprint
from schemas.timestamps import now
from worker.download import Fetched, Validators

NOT_MODIFIED, SAME_BYTES = "not_modified", "same_bytes"


@dataclass(frozen=True)
class Outputs:
    """Where an image's outputs are: the main object and, per size, its own object or None
    where the main output serves that size."""
    key: str
    size_keys: dict[str, str | None]

    def size_urls(self) -> dict[str, str]:
        main = storage.public_url(self.key)
        return {name: storage.public_url(key) if key else main
                for name, key in self.size_keys.items()}


class Known:
    """What is remembered of one chunk's URLs for its batch's owner and output settings."""

    def __init__(self, owner: str | None, fingerprint: str, records: dict[str, SourceRecord],
                 settings: Settings, sizes: dict[str, int] | None = None,
                 full_size: bool = True):
        self.owner, self.fingerprint, self.settings = owner, fingerprint, settings
        self.sizes, self.full_size = sizes or {}, full_size  # the outputs the batch asks for
        self._records = records
        self._written: Batch[SourceRecord] = Batch(stores.sources().remember)

    @classmethod
    def load(cls, batch: BatchRecord | None, images: list[ImageRecord],
             settings: Settings) -> "Known":
        sizes = dict(batch.sizes) if batch is not None else {}
        full_size = batch.full_size if batch is not None else True
        fingerprint = output_fingerprint(
            quality=settings.output_quality, optimize=settings.output_optimize,
            webp_method=settings.webp_method, keep_original=settings.keep_original_when_smaller,
            sizes=sizes, full_size=full_size)
        if batch is None:
            return cls(None, fingerprint, {}, settings, sizes, full_size)
        records = stores.sources().find(batch.owner, fingerprint, [im.url for im in images])
        return cls(batch.owner, fingerprint, records, settings, sizes, full_size)

    def previous(self, url: str) -> SourceRecord | None:
        """The record of `url` worth asking about: none for a URL never processed (or whose
        facts break limits lowered since: it is processed anew, and refused if it must be)."""
        record = self._records.get(url)
        if record is None or not record.within(self.settings.max_download_bytes,
                                               self.settings.max_image_pixels):
            return None
        return record

    def validators(self, url: str) -> Validators | None:
        record = self.previous(url)
        if record is None or not record.validators():
            return None
        return Validators(record.final_url or url, record.validators())

    def remember(self, image: ImageRecord, batch_id: str, fetched: Fetched, sha256: str,
                 outputs: Outputs, facts: dict) -> None:
        """After a processing: the validators and hash of what was fetched, the new outputs."""
        self.remember_record(SourceRecord.new(
            owner=self.owner, url=image.url, fingerprint=self.fingerprint, sha256=sha256,
            batch_id=batch_id, output_key=outputs.key, size_keys=dict(outputs.size_keys),
            final_url=fetched.url, etag=fetched.etag, last_modified=fetched.last_modified,
            **facts))

    def remember_reuse(self, previous: SourceRecord, batch_id: str, fetched: Fetched,
                       outputs: Outputs) -> None:
        """After a reuse: the same image, its outputs now (also) this batch's; a 304 may leave
        out validators that still hold."""
        self.remember_record(replace(
            previous, batch_id=batch_id, output_key=outputs.key,
            size_keys=dict(outputs.size_keys), final_url=fetched.url,
            etag=fetched.etag or (previous.etag if fetched.not_modified else None),
            last_modified=fetched.last_modified or (
                previous.last_modified if fetched.not_modified else None),
            updated_at=now()))

    def remember_record(self, record: SourceRecord) -> None:
        self._records[record.url] = record
        self._written.add([record])

    def flush(self) -> None:
        """Write what is remembered and not written yet (the chunk's end; any thread)."""
        self._written.flush()


def unchanged(previous: SourceRecord | None, fetched: Fetched, sha256: str | None) -> str | None:
    """How the image is known to be the one processed before (NOT_MODIFIED, SAME_BYTES), or
    None when it is not."""
    if previous is None:
        return None
    if fetched.not_modified:
        return NOT_MODIFIED
    return SAME_BYTES if sha256 == previous.sha256 else None


def copy_outputs(previous: SourceRecord,
                 key_for: Callable[[str, str | None], str]) -> Outputs:
    """Server-side copies of `previous`'s outputs under this batch's keys (`key_for(extension,
    size)`). Each object is copied once, named after the first output that is it: a main
    output that is a size's own (no full-size output: `full_size=false`) after that size, sizes
    of one edge (one object) after the first of them. storage.ObjectMissing when one of them is
    gone: the image is then processed anew."""
    copies: dict[str, str] = {}  # source key -> its copy's key

    def copy(source: str, size: str | None) -> str:
        if source not in copies:
            copies[source] = key_for(PurePosixPath(source).suffix.lstrip("."), size)
            storage.copy(source, copies[source])
        return copies[source]

    own = next((name for name, source in previous.size_keys.items()
                if source == previous.output_key), None)
    main = copy(previous.output_key, own)
    size_keys = {name: copy(source, name) if source else None
                 for name, source in previous.size_keys.items()}
    return Outputs(main, size_keys)
