"""Object storage: S3 through boto3 (the bucket, streamed uploads and downloads, public object
URLs), or a local folder (infra/object_folder.py) when one is installed, as the embedded default
does."""
from __future__ import annotations

import json
import logging
import os
import time
from typing import BinaryIO

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionError as BotoConnectionError, HTTPClientError
from botocore.utils import determine_content_length

from infra.object_folder import ObjectFolder, ObjectNotFound
from infra.per_process import per_process
from infra.settings import get_settings

# Uploads go up in parts of S3's smallest size (5 MiB; at most 10,000 parts: 50 GiB), two at a
# time, with one more read ahead: the API's memory stays bounded whatever the file's size.
# s3transfer reads up to 10 parts ahead by default, and boto3's TransferConfig takes no
# argument for that (s3transfer's attribute is read as is): with 8 MiB parts and that default
# a 63 MB upload added 72 MB to the API's peak; these settings add 24 MB.
PART_BYTES = 5 * 1024 * 1024
UPLOAD_TRANSFER = TransferConfig(multipart_threshold=PART_BYTES, multipart_chunksize=PART_BYTES,
                                 max_concurrency=2)
UPLOAD_TRANSFER.max_in_memory_upload_chunks = 1

log = logging.getLogger(__name__)

OUTPUT_PREFIX = "outputs/"
UPLOAD_PREFIX = "uploads/"

_override: dict = {"endpoint": None, "folder": None}


# A body up to this size goes without `Expect: 100-continue`, as AWS's Go SDK sends them
# (ContinueHeaderThresholdBytes, 2 MiB): waiting for the server's "100 Continue" is a round trip
# per image output, and botocore reads that interim answer a byte per recv (~0.45 ms of a
# worker's CPU a put over keep-alive). Larger bodies (the upload's 5 MiB parts) keep it: a
# refusal then comes before the body is sent.
CONTINUE_THRESHOLD_BYTES = 2 * 1024 * 1024


def _no_continue_for_small_bodies(params, **kwargs) -> None:
    """botocore asks every PUT with a body to wait for "100 Continue" (handlers.add_expect_header,
    on the same event): taken back here when the body is small."""
    if params.get("headers", {}).get("Expect") != "100-continue":
        return
    length = determine_content_length(params.get("body"))
    if length is not None and length <= CONTINUE_THRESHOLD_BYTES:
        del params["headers"]["Expect"]


@per_process
def _client():
    # boto3 clients must not cross a fork: each process makes its own.
    settings = get_settings()
    client = boto3.client(
        "s3",
        endpoint_url=_override["endpoint"] or settings.s3_endpoint_url,
        region_name=settings.s3_region,
        config=Config(
            connect_timeout=5,
            read_timeout=30,
            retries={"max_attempts": 3, "mode": "standard"},
            max_pool_connections=max(10, settings.image_concurrency * 2),
            s3={"addressing_style": "path"},
            # S3 needs no CRC of every body we send or receive (botocore computes
            # one by default since 1.36): MD5/CRC work per image for nothing.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )
    # Last among the handlers of the event add_expect_header is on: after it, whatever order.
    client.meta.events.register_last("before-call.s3", _no_continue_for_small_bodies)
    return client


def get_s3():
    """The process's boto3 S3 client, created on first use."""
    return _client()


def load_client_models() -> None:
    """Load botocore's S3 model and endpoint data into boto3's default session, so that the
    processes this one forks make their clients in ~10 ms instead of ~90 ms (a forking worker's
    every job). The client made for it is dropped unused: it opens no connection, and the
    children still make their own."""
    if _override["folder"] is None:
        _client.__wrapped__()


def use_endpoint(url: str | None) -> None:
    """Talk to this S3 endpoint instead of S3_ENDPOINT_URL (the embedded default, tests)."""
    _override["endpoint"] = url
    _client.reset()


def use_folder(root: str | os.PathLike | None) -> ObjectFolder | None:
    """Keep objects as files under `root` instead of in S3; None goes back to S3."""
    _override["folder"] = ObjectFolder(root) if root is not None else None
    return _override["folder"]


def folder() -> ObjectFolder | None:
    """The local object folder in use, if any."""
    return _override["folder"]


def ensure_bucket() -> None:
    """Create the bucket if missing and let anyone read the outputs (not the uploads)."""
    if folder():
        return folder().ensure()
    s3 = get_s3()
    bucket = get_settings().s3_bucket
    try:
        s3.head_bucket(Bucket=bucket)
    except ClientError:
        s3.create_bucket(Bucket=bucket)
    policy = {
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "PublicReadOutputs",
            "Effect": "Allow",
            "Principal": "*",
            "Action": ["s3:GetObject"],
            "Resource": [f"arn:aws:s3:::{bucket}/{OUTPUT_PREFIX}*"],
        }],
    }
    try:
        s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))
    except ClientError:
        # Some providers refuse bucket policies; PUBLIC_BASE_URL (a CDN) is then the way out.
        pass


def upload_stream(key: str, stream: BinaryIO, content_type: str) -> None:
    """Stream a file-like object to S3 in parts; never holds it whole in memory."""
    if folder():
        return folder().upload_stream(key, stream)
    get_s3().upload_fileobj(
        _FullReads(stream), get_settings().s3_bucket, key,
        ExtraArgs={"ContentType": content_type}, Config=UPLOAD_TRANSFER,
    )


class _FullReads:
    """`read(n)` returns n bytes unless the stream ends first.

    s3transfer takes a short read for the end of a non-seekable stream, and a request body (or
    a RawIOBase over one) may return fewer bytes than asked at any time: without this an upload
    was silently cut after its first short read.
    """

    def __init__(self, stream):
        self._stream = stream

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            parts = []
            while data := self._stream.read(1024 * 1024):
                parts.append(data)
            return b"".join(parts)
        parts, got = [], 0
        while got < size:
            data = self._stream.read(size - got)
            if not data:
                break
            parts.append(data)
            got += len(data)
        return b"".join(parts)


def put_bytes(key: str, data: bytes, content_type: str, cache_control: str | None = None) -> None:
    if folder():
        return folder().put_bytes(key, data)
    extra = {"CacheControl": cache_control} if cache_control else {}
    get_s3().put_object(
        Bucket=get_settings().s3_bucket, Key=key, Body=data, ContentType=content_type, **extra
    )


class StorageUnavailable(Exception):
    """S3 kept failing with transient errors for STORAGE_RETRY_S: the work is to be retried
    later, and is no fault of the image."""


# S3's answers that mean "try again": throttling and server-side errors.
_TRANSIENT_CODES = {"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable",
                    "Throttling", "ThrottlingException", "RequestLimitExceeded"}


def is_transient(error: Exception) -> bool:
    """A connection refused, reset or timed out, a 5xx or a throttling answer."""
    if isinstance(error, (BotoConnectionError, HTTPClientError)):
        return True
    if isinstance(error, ClientError):
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return status >= 500 or error.response.get("Error", {}).get("Code") in _TRANSIENT_CODES
    return False


def put_bytes_retrying(key: str, data: bytes, content_type: str,
                       cache_control: str | None = None) -> None:
    """put_bytes, retried with exponential backoff (0.5 s doubling, at most 8 s apart) while S3
    fails transiently, for up to STORAGE_RETRY_S; then StorageUnavailable. botocore's own
    retries (3 attempts within about a second) cover a blip, this covers an outage."""
    _retrying("put", put_bytes, key, data, content_type, cache_control)


class ObjectMissing(Exception):
    """The object to copy is not there (deleted, or expired by a lifecycle rule)."""


def copy(source: str, key: str) -> None:
    """A server-side copy of the object at `source` under `key`, with its content type and
    cache headers: no bytes pass through this process, and the copy is an object of its own.
    Retried like put_bytes_retrying; ObjectMissing when `source` is not there."""
    if source == key:  # S3 refuses to copy an object onto itself unchanged; nothing to do
        return
    if folder():
        try:
            return folder().copy(source, key)
        except ObjectNotFound:
            raise ObjectMissing(source) from None
    bucket = get_settings().s3_bucket
    try:
        _retrying("copy", get_s3().copy_object, Bucket=bucket, Key=key,
                  CopySource={"Bucket": bucket, "Key": source})
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            raise ObjectMissing(source) from None
        raise


def _retrying(what: str, call, *args, **kwargs):
    """`call`, retried while S3 fails transiently for up to STORAGE_RETRY_S (0.5 s doubling,
    at most 8 s apart); then StorageUnavailable."""
    deadline = time.monotonic() + get_settings().storage_retry_s
    delay = 0.5
    while True:
        try:
            return call(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - sorted by is_transient just below
            if not is_transient(error):
                raise
            if time.monotonic() + delay > deadline:
                raise StorageUnavailable(f"S3 unreachable: {type(error).__name__}") from error
            log.warning("S3 %s failed (%s); retrying in %.1f s", what, type(error).__name__,
                        delay)
            time.sleep(delay)
            delay = min(delay * 2, 8.0)


def open_stream(key: str):
    """The object's body as a streaming file-like object (botocore StreamingBody)."""
    if folder():
        return folder().open_stream(key)
    return get_s3().get_object(Bucket=get_settings().s3_bucket, Key=key)["Body"]


def get_object(key: str) -> dict:
    """The whole get_object answer (body stream, content type, length), for proxying."""
    if folder():
        return folder().get(key)
    return get_s3().get_object(Bucket=get_settings().s3_bucket, Key=key)


def delete(key: str) -> None:
    if folder():
        return folder().delete(key)
    get_s3().delete_object(Bucket=get_settings().s3_bucket, Key=key)


def public_url(key: str) -> str:
    """A stable URL for the object: PUBLIC_BASE_URL + key, else the S3 endpoint's own URL."""
    settings = get_settings()
    if settings.public_base_url:
        return settings.public_base_url.rstrip("/") + "/" + key
    if settings.s3_endpoint_url:
        return f"{settings.s3_endpoint_url.rstrip('/')}/{settings.s3_bucket}/{key}"
    return f"https://{settings.s3_bucket}.s3.{settings.s3_region}.amazonaws.com/{key}"


def ping() -> None:
    """Raise unless the bucket (or the folder) answers."""
    if folder():
        return folder().ping()
    get_s3().head_bucket(Bucket=get_settings().s3_bucket)
