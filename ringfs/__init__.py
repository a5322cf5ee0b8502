"""ringfs: a Dynamo-style peer-to-peer key/value and file store.

The public API: `Client` (blocking) and `AsyncClient` (trio), the results they
return, the errors they raise, and the node configuration.
"""

__version__ = "0.1.0"

from ringfs.client import AsyncClient, Client, FileInfo, GetResult, PutFileResult
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
