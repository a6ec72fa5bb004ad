"""Reading a safetensors file's header alone (8-byte little-endian length, then a JSON object), for the three kinds
of safetensors file this project opens without loading them: LoRAs, single-file checkpoints and raw frames."""

from __future__ import annotations

import json
import os
import struct
from typing import BinaryIO

MAX_HEADER_BYTES = 100 * 1024 * 1024  # the largest header safetensors itself reads


def read_header(file: BinaryIO) -> tuple[dict, int, int]:
    """(the header's JSON object, the offset where the tensor data starts, the file's size) of an open binary file
    at offset 0, reading nothing past the header; ValueError saying what is wrong."""
    size = os.fstat(file.fileno()).st_size
    prefix = file.read(8)
    if len(prefix) < 8:
        raise ValueError(f"{size} bytes, shorter than a safetensors header")
    (length,) = struct.unpack("<Q", prefix)
    if length < 2 or length > MAX_HEADER_BYTES or 8 + length > size:
        raise ValueError(f"header length {length} does not fit the file ({size} bytes)")
    try:
        header = json.loads(file.read(length).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError("its header is not JSON") from None
    if not isinstance(header, dict):
        raise ValueError("its header is not a JSON object")
    return header, 8 + length, size
