"""Key hashing shared by the ring and the storage engines.

Every key is placed by its token: the unsigned 128-bit MurmurHash3 (x64 variant)
of its bytes with seed 0. The ring assigns token ranges to nodes; the engines
iterate keys in token order so that replicas can compare ranges.
"""

from __future__ import annotations

import mmh3

TOKEN_BITS = 128
TOKEN_SPACE = 1 << TOKEN_BITS


def key_token(key: bytes) -> int:
    """The ring position of `key`: an int in [0, 2**128)."""
    token: int = mmh3.hash128(key, 0, True, signed=False)
    return token


def in_range(token: int, start: int, end: int) -> bool:
    """Whether `token` lies in the ring range (start, end], which wraps when start >= end.

    start == end denotes the whole ring.
    """
    if start < end:
        return start < token <= end
    return token > start or token <= end
