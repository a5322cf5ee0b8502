"""Storage engines: the synchronous interface every node's replicas live behind."""

from ringfs.storage.engine import EngineStats, Record, StorageEngine

__all__ = ["EngineStats", "Record", "StorageEngine"]
