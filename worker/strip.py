"""Removing metadata from JPEG, PNG and WebP files without decoding or re-encoding their pixels.

Used when re-encoding an image would make it larger than it already is: the stored output is
then the input's own bytes minus what the contract strips (EXIF and GPS, XMP, comments, text
chunks, DPI), keeping what decoders need to show the same pixels in the same colours (the ICC
profile, JPEG tables and Adobe colour-transform marker, PNG transparency and colour chunks).

Each function returns the new bytes, or None when the file is not laid out as its format says
(the caller then keeps the re-encoded output instead).
"""
from __future__ import annotations

import re
import struct

_SOI, _EOI, _SOS = 0xD8, 0xD9, 0xDA
_APP0, _APP2, _APP14, _COM = 0xE0, 0xE2, 0xEE, 0xFE
_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM and RSTn carry no length

# PNG chunks a decoder needs for the pixels and their colours; every other chunk is dropped.
_PNG_KEEP = {b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"gAMA", b"cHRM", b"sRGB", b"iCCP",
             b"sBIT", b"cICP"}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# WebP chunks kept (VP8X is rewritten); EXIF, XMP and unknown chunks are dropped.
_WEBP_KEEP = {b"VP8 ", b"VP8L", b"ALPH", b"ICCP"}
_VP8X_EXIF, _VP8X_XMP = 0x08, 0x04


def strip_metadata(data: bytes, source_format: str) -> bytes | None:
    """`data` without its metadata, for a JPEG (or MPO), PNG or WebP file; else None."""
    if source_format in ("JPEG", "MPO"):
        return strip_jpeg(data)
    if source_format == "PNG":
        return strip_png(data)
    if source_format == "WEBP":
        return strip_webp(data)
    return None


def strip_jpeg(data: bytes) -> bytes | None:
    """Drop APPn segments other than ICC profiles (APP2 `ICC_PROFILE`) and the Adobe marker
    (APP14, which says how the colours are coded), and comments. Everything after the first
    picture's end (an MPO's further pictures, trailing bytes) goes too."""
    if data[:2] != b"\xff\xd8":
        return None
    out = [data[:2]]
    i, size = 2, len(data)
    while i < size:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1] if i + 1 < size else None
        if marker is None:
            return None
        if marker == 0xFF:  # fill byte before a marker
            i += 1
            continue
        if marker == _EOI:
            out.append(data[i:i + 2])
            return b"".join(out)
        if marker in _STANDALONE:
            out.append(data[i:i + 2])
            i += 2
            continue
        if i + 4 > size:
            return None
        length = struct.unpack(">H", data[i + 2:i + 4])[0]
        end = i + 2 + length
        if length < 2 or end > size:
            return None
        if _keep_jpeg_segment(marker, data[i + 4:end]):
            out.append(data[i:end])
        i = end
        if marker == _SOS:  # entropy-coded data runs to the next marker that is not RSTn
            scan_end = _scan_end(data, i)
            if scan_end is None:
                return None
            out.append(data[i:scan_end])
            i = scan_end
    return None  # no end-of-image marker


def _keep_jpeg_segment(marker: int, payload: bytes) -> bool:
    if marker == _COM or _APP0 <= marker <= 0xEF:
        return ((marker == _APP2 and payload.startswith(b"ICC_PROFILE\0"))
                or (marker == _APP14 and payload.startswith(b"Adobe")))
    return True


# In entropy-coded data 0xFF is followed by 0x00 (a stuffed byte), a restart marker or more
# 0xFF fill bytes; any other byte after it starts the next segment.
_NEXT_MARKER = re.compile(rb"\xff(?=[^\x00\xd0-\xd7\xff])")


def _scan_end(data: bytes, i: int) -> int | None:
    """The offset of the first marker after entropy-coded data starting at `i`."""
    found = _NEXT_MARKER.search(data, i)
    return found.start() if found else None


def strip_png(data: bytes) -> bytes | None:
    """Keep only the chunks that decide the pixels and their colours (text, time, EXIF, pHYs and
    private chunks go). Chunks are copied whole, their checksums unchanged."""
    if not data.startswith(_PNG_SIGNATURE):
        return None
    out = [_PNG_SIGNATURE]
    i = len(_PNG_SIGNATURE)
    while i + 8 <= len(data):
        length = struct.unpack(">I", data[i:i + 4])[0]
        kind = data[i + 4:i + 8]
        end = i + 12 + length
        if end > len(data):
            return None
        if kind in _PNG_KEEP:
            out.append(data[i:end])
        i = end
        if kind == b"IEND":
            return b"".join(out)
    return None


def strip_webp(data: bytes) -> bytes | None:
    """Drop EXIF, XMP and unknown chunks, clearing their flags in the VP8X header."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return None
    chunks = []
    i = 12
    riff_end = min(len(data), 8 + struct.unpack("<I", data[4:8])[0])
    while i + 8 <= riff_end:
        kind = data[i:i + 4]
        length = struct.unpack("<I", data[i + 4:i + 8])[0]
        end = i + 8 + length + (length & 1)
        if i + 8 + length > riff_end:
            return None
        chunk = data[i:min(end, riff_end)]
        if kind == b"VP8X" and length >= 10:
            flags = chunk[8] & ~(_VP8X_EXIF | _VP8X_XMP)
            chunks.append(chunk[:8] + bytes([flags]) + chunk[9:])
        elif kind in _WEBP_KEEP:
            chunks.append(chunk)
        i = end
    if not any(c[:4] in (b"VP8 ", b"VP8L") for c in chunks):
        return None
    body = b"WEBP" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body)) + body
