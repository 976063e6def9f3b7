"""A ModelInferRequest's ``raw_input_contents`` as views into the received bytes, without protobuf copying them.

The protobuf runtime copies every bytes field twice on the way to numpy (into the parsed message, then
into a new ``bytes`` on access): for a 600 KB tensor that is two 600 KB copies per request. Here the
request's top-level fields are walked once: field 7 (``raw_input_contents``, length-delimited) becomes
a `memoryview` of the received bytes, every other field is kept for the protobuf parser, which then
parses a message of a few hundred bytes. Only top-level tags are read; anything unusual (a malformed
key, a length past the end, a deprecated group, very many fields) gives None, and the caller parses the
whole message the ordinary way, which reports the error as before.
"""

from __future__ import annotations

RAW_INPUT_CONTENTS = 7  # field number in ModelInferRequest (inference.proto)
LENGTH_DELIMITED = 2
# Smaller requests gain nothing from the walk; more fields than this fall back to the C parser,
# so a hostile request of millions of tiny fields costs no Python loop.
MIN_BYTES = 16 * 1024
MAX_FIELDS = 256


def split_raw_contents(data: bytes) -> tuple[bytes, list[memoryview]] | None:
    """(``data`` without its raw_input_contents fields, each such field's bytes in order), or None.

    None when ``data`` is small (`MIN_BYTES`) or is not a plain sequence of at most `MAX_FIELDS`
    well-formed top-level fields.
    """
    if len(data) < MIN_BYTES:
        return None
    view, end = memoryview(data), len(data)
    rest: list[memoryview] = []
    raw: list[memoryview] = []
    pos = kept_from = 0
    for _ in range(MAX_FIELDS):
        if pos == end:
            rest.append(view[kept_from:end])
            return b"".join(rest), raw
        field_start = pos
        key, pos = _varint(data, pos, end)
        if key is None:
            return None
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos, end)
            if value is None:
                return None
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == LENGTH_DELIMITED:
            length, pos = _varint(data, pos, end)
            if length is None or pos + length > end:
                return None
            if number == RAW_INPUT_CONTENTS:
                raw.append(view[pos:pos + length])
                rest.append(view[kept_from:field_start])
                kept_from = pos + length
            pos += length
        else:
            return None
        if number == 0 or pos > end:
            return None
    return None


def _varint(data: bytes, pos: int, end: int) -> tuple[int | None, int]:
    """The base-128 varint at ``pos`` (at most 10 bytes) and the position after it; (None, pos) if malformed."""
    value = shift = 0
    for i in range(pos, min(pos + 10, end)):
        byte = data[i]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i + 1
        shift += 7
    return None, pos
