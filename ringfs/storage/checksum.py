"""The CRC-32 every record, segment header and hint file carries.

The checksum is zlib's CRC-32 (the IEEE polynomial); only the implementation
varies. zlib-ng computes the same value with carry-less multiplication, about
40 GB/s on a core against zlib's 1.8 GB/s, which matters once values are file
chunks of a megabyte (each is checksummed when written, when its segment's hint
is built, and on every read). Without zlib-ng, zlib's is used: same results.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

crc32: Callable[[Any, int], int]
try:
    from zlib_ng.zlib_ng import crc32
except ImportError:  # pragma: no cover - the dependency is declared; this is a fallback
    from zlib import crc32

__all__ = ["crc32"]
