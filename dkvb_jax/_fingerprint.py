"""The library's one sha256 helper: fingerprints of arrays, pytrees' leaves, JSON and files.

Every digest the library stores or compares (checkpoint and cache checksums, audit hashes, the
data a fit or a resumable run was fitted on, exact statistics' key fingerprint, row-set
identities) is built here, so equal inputs hash equal whichever module asks. The byte layouts
are fixed: stored digests from earlier versions still match.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from typing import Any

import numpy as np

# A string (hashed as UTF-8), bytes-like, or an array (NumPy or JAX).
Part = Any


def _bytes(part: Part) -> bytes | bytearray | memoryview | np.ndarray:
    if isinstance(part, str):
        return part.encode()
    if isinstance(part, (bytes, bytearray, memoryview)):
        return part
    # An array's C-order bytes; a contiguous one is hashed in place, without a copy.
    return np.ascontiguousarray(np.asarray(part)).reshape(-1).view(np.uint8)


def sha256(*parts: Part, length: int | None = None) -> str:
    """Hex sha256 of `parts` fed in order.

    Args:
      *parts: strings (UTF-8), bytes, or arrays (NumPy or JAX; their C-order bytes, without
        dtype or shape: see `arrays_sha256` for a digest that tells `[2, 3]` from `[3, 2]`).
      length: keep this many leading hex digits (None: all 64).
    """
    h = hashlib.sha256()
    for part in parts:
        h.update(_bytes(part))
    return h.hexdigest()[:length]


def digest(array: Any) -> bytes:
    """The raw 32-byte sha256 of an array's bytes (for digests of digests, as audit records do)."""
    return hashlib.sha256(_bytes(array)).digest()


def typed(arrays: Iterable[Any]) -> list[Part]:
    """`arrays` as sha256 parts with each one's dtype and shape before its bytes."""
    parts: list[Part] = []
    for a in arrays:
        # ascontiguousarray makes a 0-d array 1-d: its shape reads (1,), as stored digests have it.
        a = np.ascontiguousarray(np.asarray(a))
        parts += [f"{a.dtype.str}{a.shape}", a]
    return parts


def arrays_sha256(*arrays: Any, length: int | None = None) -> str:
    """Hex sha256 of arrays with their dtypes and shapes: identifies the data a fit was run on."""
    return sha256(*typed(arrays), length=length)


def json_sha256(obj: Any, *extra: Part, length: int | None = None) -> str:
    """Hex sha256 of `obj` as sorted-key JSON, then of any `extra` parts."""
    return sha256(json.dumps(obj, sort_keys=True), *extra, length=length)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes, read in 4 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()
