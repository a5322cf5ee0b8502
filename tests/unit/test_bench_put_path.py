"""bench.put_path: the in-process three-node put path completes every put it counts."""

from __future__ import annotations

from pathlib import Path

from bench.put_path import PutPath


def test_every_put_is_acknowledged_and_replicated(tmp_path: Path) -> None:
    world = PutPath(str(tmp_path), connections=6, keyspace=50, value_bytes=10, seed=1)
    try:
        world.run(300)
        assert world.done >= 300
        # N=3 on three nodes: every node holds every key that was written.
        counts = {len(node.engine) for node in world.nodes.values()}
        assert len(counts) == 1
        assert counts.pop() >= 45
        for node in world.nodes.values():
            assert node.counters["replica_puts"] > 0
            assert node.counters["peer_malformed"] == 0
    finally:
        world.close()
