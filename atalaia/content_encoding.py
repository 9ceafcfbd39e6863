"""Undoing an HTTP request body's ``Content-Encoding`` within a size bound (the OTLP receiver's
bodies, the gateway's chat requests)."""

from __future__ import annotations

import zlib

#: Largest decompressed body accepted (a gzip bomb must not exhaust memory).
MAX_BODY_BYTES = 64 * 1024 * 1024


class ContentEncodingError(ValueError):
    """The body is not valid in its declared encoding, the encoding is unknown, or it inflates past the bound."""


def decompress(body: bytes, encoding: str | None, limit: int = MAX_BODY_BYTES) -> bytes:
    """Undo ``Content-Encoding`` (gzip, deflate or none), refusing bodies that inflate past ``limit``.

    >>> import gzip
    >>> decompress(gzip.compress(b'{"a": 1}'), "gzip")
    b'{"a": 1}'
    >>> decompress(b"plain", None)
    b'plain'
    >>> raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    >>> decompress(raw.compress(b"headerless") + raw.flush(), "deflate")
    b'headerless'
    >>> decompress(b"x", "br")
    Traceback (most recent call last):
    ...
    atalaia.content_encoding.ContentEncodingError: unsupported Content-Encoding 'br'; use gzip, deflate or none
    """
    enc = (encoding or "").strip().lower()
    if enc in ("", "identity"):
        return body
    if enc in ("gzip", "x-gzip"):
        obj = zlib.decompressobj(16 + zlib.MAX_WBITS)
    elif enc == "deflate":
        obj = zlib.decompressobj()
    else:
        raise ContentEncodingError(f"unsupported Content-Encoding {encoding!r}; use gzip, deflate or none")
    try:
        out = obj.decompress(body, limit + 1)
    except zlib.error as exc:
        if enc != "deflate":
            raise ContentEncodingError(f"body is not valid {enc}: {exc}") from None
        # "deflate" is meant to be zlib-wrapped (RFC 9110), but many clients send raw deflate.
        try:
            out = zlib.decompressobj(-zlib.MAX_WBITS).decompress(body, limit + 1)
        except zlib.error:
            raise ContentEncodingError(f"body is not valid {enc}: {exc}") from None
    if len(out) > limit:
        raise ContentEncodingError(f"decompressed body exceeds {limit} bytes")
    return out
