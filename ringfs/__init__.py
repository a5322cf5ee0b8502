"""ringfs: a Dynamo-style peer-to-peer key/value and file store.

The public API: `Client` (blocking) and `AsyncClient` (trio), the results they
return, the errors they raise, and the node configuration.
"""

__version__ = "0.1.0"

from typing import TYPE_CHECKING, Any

from ringfs.config import ConfigError, Durability, NodeConfig
from ringfs.errors import (
    ChecksumMismatch,
    ErrorCode,
    FileNotFound,
    LocalProtocolError,
    MissingChunks,
    QuorumNotMet,
    RemoteProtocolError,
    RequestTimeout,
    RingfsError,
    ServerError,
    Unavailable,
)

if TYPE_CHECKING:
    from ringfs.client import AsyncClient, Client, FileInfo, GetResult, PutFileResult

_FROM_CLIENT = frozenset({"AsyncClient", "Client", "FileInfo", "GetResult", "PutFileResult"})


def __getattr__(name: str) -> Any:
    # The clients (and trio with them) load on first use: a node process or the
    # simulator that never touches them starts faster.
    if name in _FROM_CLIENT:
        from ringfs import client

        value = getattr(client, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ringfs' has no attribute {name!r}")


__all__ = [
    "AsyncClient",
    "ChecksumMismatch",
    "Client",
    "ConfigError",
    "Durability",
    "ErrorCode",
    "FileInfo",
    "FileNotFound",
    "GetResult",
    "LocalProtocolError",
    "MissingChunks",
    "NodeConfig",
    "PutFileResult",
    "QuorumNotMet",
    "RemoteProtocolError",
    "RequestTimeout",
    "RingfsError",
    "ServerError",
    "Unavailable",
    "__version__",
]
