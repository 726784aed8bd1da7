"""Why an image failed or a row was rejected: stable codes beside the human message.

The message says what happened in words and may change; the code is for programs (the products
API's `code`, errors.csv's `Code` column, the `reason` label of `batchpress_images_total`) and
never changes meaning. New codes may be added; clients should treat an unknown one as a failure.
"""
from __future__ import annotations

from enum import StrEnum


class FailureCode(StrEnum):
    # Fetching the image.
    REFUSED_URL = "refused_url"                # not http(s), userinfo, no host, malformed
    REFUSED_ADDRESS = "refused_address"        # the host is loopback, private, link-local, ...
    DOWNLOAD_TIMEOUT = "download_timeout"      # DOWNLOAD_TIMEOUT_S passed, or the server stalled
    CONNECTION_FAILED = "connection_failed"    # DNS, connect, TLS, or the body broke off
    HTTP_STATUS = "http_status"                # the server answered other than 200
    TOO_MANY_REDIRECTS = "too_many_redirects"  # more than MAX_REDIRECTS
    TOO_LARGE = "too_large"                    # over MAX_DOWNLOAD_BYTES
    # Decoding and re-encoding it.
    NOT_AN_IMAGE = "not_an_image"              # not a supported image format
    BROKEN_IMAGE = "broken_image"              # truncated, corrupt, or no pixels
    TOO_MANY_PIXELS = "too_many_pixels"        # over MAX_IMAGE_PIXELS
    ENCODE_FAILED = "encode_failed"            # the encoder failed, or memory ran out
    # The pipeline itself.
    WORKER_DIED = "worker_died"                # the worker died on it MAX_IMAGE_ATTEMPTS times
    STALLED = "stalled"                        # the sweeper gave up on a batch that stopped moving
    INTERNAL_ERROR = "internal_error"          # a bug: see the worker's log
    # errors.csv only: a row rejected before any image of it was fetched, the whole file, or an
    # image a cancel kept from being processed.
    INVALID_ROW = "invalid_row"
    FILE_UNREADABLE = "file_unreadable"        # the batch failed before its rows were read
    CANCELLED = "cancelled"                    # never processed: the batch was cancelled first
