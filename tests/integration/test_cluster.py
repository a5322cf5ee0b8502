"""Three real node processes on loopback: quorums through a kill -9, siblings from
concurrent writers, and their resolution on every replica."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ringfs import Client
from tests.integration.procs import ringfs, running_cluster, wait_members

pytestmark = pytest.mark.integration


def test_quorums_keep_working_when_a_node_is_killed(tmp_path: Path) -> None:
    with running_cluster(tmp_path, 3) as nodes:
        wait_members(nodes)
        with Client([nodes[0].address, nodes[1].address]) as c:
            for i in range(30):
                c.put(f"k{i}", b"v%d" % i)
            nodes[2].kill()
            for i in range(30):
                assert c.get(f"k{i}", r=2).values == [b"v%d" % i]
                c.put(f"k{i}", b"w%d" % i, w=2)
            for i in range(30):
                assert c.get(f"k{i}", r=2).values == [b"w%d" % i]
            wh = c.whereis("k0")
            states = {r["node"]: r for r in wh["replicas"]}
            assert "n3" not in states or not states["n3"]["answered"]


def test_concurrent_writers_make_siblings_and_a_merged_put_resolves_them(tmp_path: Path
                                                                         ) -> None:
    with running_cluster(tmp_path, 3) as nodes:
        wait_members(nodes)
        with Client(nodes[0].address) as a, Client(nodes[1].address) as b:
            a.put("doc", b"v0")
            stale = a.get("doc").context
            a.put("doc", b"from-a", stale)
            b.put("doc", b"from-b", stale)
            both = b.get("doc", r=3)
            assert sorted(both.values) == [b"from-a", b"from-b"]
            a.put("doc", b"merged", both.context, w=3)
            wh = a.whereis("doc")
            assert len(wh["replicas"]) == 3
            for rep in wh["replicas"]:
                assert rep["answered"] and rep["present"] and rep["siblings"] == 1, rep
            assert len({rep["context"] for rep in wh["replicas"]}) == 1
            assert a.get("doc", r=3).values == [b"merged"]
        # The CLI shows the same.
        out = json.loads(ringfs("whereis", "doc", "--json", "--node", nodes[2].address).stdout)
        assert [r["siblings"] for r in out["replicas"]] == [1, 1, 1]
        assert {r["role"] for r in out["replicas"]} == {"primary"}
