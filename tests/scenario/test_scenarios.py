"""Scenario files: strict validation, the shipped scenarios pass, runs replay exactly,
faults compose, and the known ringfs issues still reproduce (strict xfail)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from ringfs.wire import Op
from simulations.__main__ import main
from simulations.harness import NetworkFaults, Simulation
from simulations.scenario import (
    FaultEvent,
    Scenario,
    ScenarioError,
    available,
    load_scenario,
    parse_scenario,
)
from simulations.vopr import KNOWN_ISSUES, known_issue, run_seed
from simulations.workload import WorkloadConfig
from simulations.world import SimWorld

SHIPPED = available()


def test_the_classic_scenarios_are_shipped() -> None:
    assert set(SHIPPED) >= {
        "split_brain_3_2", "isolated_coordinator", "one_way_partition", "flapping_link",
        "rolling_restarts", "crash_during_handoff", "clock_skew", "slow_node", "lossy_network",
        "power_failure", "tombstone_reaping"}


@pytest.mark.parametrize("name", SHIPPED)
def test_a_shipped_scenario_reads_back_from_its_own_toml(name: str) -> None:
    sc = load_scenario(name)
    assert sc.description
    assert sc.events or name in ("steady", "tombstone_reaping")  # no faults on purpose
    again = parse_scenario(tomllib.loads(sc.to_toml()), name)
    assert again == sc


def _issue(name: str) -> str:
    issue = next(k for k in KNOWN_ISSUES if k.name == name)
    return f"known ringfs issue {issue.name}: {issue.summary}"


FAILING_TODAY: dict[str, str] = {}
"""Shipped scenarios that a known ringfs issue makes fail (seed 1)."""


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=_issue(FAILING_TODAY[n])))
    if n in FAILING_TODAY else n
    for n in SHIPPED if n != "steady"])
def test_a_shipped_scenario_passes(name: str) -> None:
    report = Simulation(load_scenario(name), 1).run()
    assert report.ok, report.render()
    assert len(report.history) > 200


def test_the_same_seed_prints_the_same_report(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["run", "--seed", "4", "--scenario", "flapping_link", "--duration", "8"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert main(args) == 0
    assert capsys.readouterr().out == first
    assert main(["run", "--seed", "5", "--scenario", "flapping_link", "--duration", "8"]) == 0
    assert capsys.readouterr().out != first
    for part in ("timeline", "flap {n1,n2} | {n3,n4,n5}", "latency ms", "p99",
                 "verdict: PASS"):
        assert part in first
    assert "wall" not in first


def test_command_line_overrides_and_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--seed", "1", "--scenario", "isolated_coordinator", "--nodes", "4",
                 "--duration", "10", "--n", "2", "--r", "1", "--w", "2"]) == 0
    out = capsys.readouterr().out
    assert "4 nodes, N=2 R=1 W=2" in out
    assert main(["run", "--seed", "1", "--scenario", "isolated_coordinator", "--duration", "14",
                 "--bug", "ignore_context"]) == 1
    assert "verdict: FAIL" in capsys.readouterr().out
    # split_brain_3_2 names n4 and n5: a 3-node cluster cannot run it.
    assert main(["run", "--seed", "1", "--scenario", "split_brain_3_2", "--nodes", "3"]) == 2
    assert "unknown node 'n4'" in capsys.readouterr().err
    assert main(["run", "--seed", "1", "--scenario", "no_such_thing"]) == 2
    assert "shipped scenarios:" in capsys.readouterr().err


BASE = """
description = "x"
nodes = 3
duration_s = 10.0
"""


@pytest.mark.parametrize(("text", "message"), [
    ("colour = 1", "unknown key(s) 'colour'"),
    ("[workload]\nclinets = 3", "[workload]: unknown key(s) 'clinets'"),
    ("[replication]\nn = 4", "replication n=4 must be in 1..nodes (3)"),
    ("[replication]\nn = 3\nr = 0", "r=0 and w=2 must be in 1..n (3)"),
    ("[network]\nloss = 1.5", "network.loss is a probability"),
    ("[node]\ngossip = 'off'", "[node]: unknown key(s) 'gossip'"),
    ("[node]\nlww_prefixes = 'a/'", "'node.lww_prefixes' must be a list"),
    ("[node]\nlww_prefixes = [1]", "node.lww_prefixes must be a list of strings"),
    ('[node]\nlww_prefixes = ["\\u0000x"]', "node.lww_prefixes: keys starting with byte"),
    ("[[event]]\nat = 1.0\naction = 'explode'", "unknown action 'explode'"),
    ("[[event]]\naction = 'heal'", "'at' (simulated seconds) is required"),
    ("[[event]]\nat = 12.0\naction = 'heal'", "'at' must be in [0, duration_s=10)"),
    ("[[event]]\nat = -1\naction = 'heal'", "'at' must be in [0, duration_s=10)"),
    ("[[event]]\nat = 'soon'\naction = 'heal'", "'at' must be a number"),
    ("[[event]]\nat = 1.0\naction = 'crash'\nnodes = ['n9']", "unknown node 'n9'"),
    ("[[event]]\nat = 1.0\naction = 'crash'", "missing 'nodes'"),
    ("[[event]]\nat = 1.0\naction = 'crash'\nnodes = ['n1']\ngroups = [['n1']]",
     "unknown key(s) 'groups'"),
    ("[[event]]\nat = 1.0\naction = 'partition'\ngroups = [['n1'], ['n1', 'n2']]",
     "node 'n1' is in two groups"),
    ("[[event]]\nat = 1.0\naction = 'partition'\ngroups = [['n1']]",
     "at least two groups"),
    ("[[event]]\nat = 1.0\naction = 'partition'\none_way = true\n"
     "groups = [['n1'], ['n2'], ['n3']]", "exactly two groups"),
    ("[[event]]\nat = 1.0\naction = 'pause'\nnodes = ['n1']\nduration_s = 0",
     "duration_s must be positive"),
    ("[[event]]\nat = 1.0\naction = 'flap'\ngroups = [['n1'], ['n2']]\nperiod_s = 5.0\n"
     "duration_s = 2.0", "period_s must be positive and at most duration_s"),
    ("[[event]]\nat = 1.0\naction = 'loss'\nprobability = 2", "probability must be in [0, 1]"),
    ("[[event]]\nat = 1.0\naction = 'skew'\nnodes = 'n1'\nskew_s = 1",
     "'nodes' must be a list of node names"),
    ("event = 3", "'event' must be an array of tables"),
])
def test_bad_scenarios_are_refused_with_the_reason(text: str, message: str) -> None:
    with pytest.raises(ScenarioError) as err:
        parse_scenario(tomllib.loads(BASE + text), "bad", "bad.toml")
    assert message in str(err.value)
    assert str(err.value).startswith("bad.toml")


def test_a_scenario_file_path_works(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "mine.toml"
    f.write_text(BASE + "[[event]]\nat = 2.0\naction = 'crash'\nnodes = 'all'\n"
                 "duration_s = 0.5\n")
    sc = load_scenario(str(f))
    assert sc.events[0].nodes == ("*",)
    assert main(["run", "--seed", "2", "--scenario", str(f)]) == 0
    assert "crash n1,n2,n3 for 0.5s" in capsys.readouterr().out
    f.write_text("nodes = [")
    with pytest.raises(ScenarioError, match="not valid TOML"):
        load_scenario(str(f))


def test_network_faults_compose_and_heal() -> None:
    w = SimWorld(1)
    names = ["n1", "n2", "n3"]
    for n in names:
        w.add_node(n)
    a = {n: w.nodes[n].address for n in names}
    f = NetworkFaults(w, names)
    f.partitions[1] = ((("n1",), ("n2",)), True)
    f.clogs[2] = (frozenset({"n3"}), 0.5)
    f.clogs[3] = (frozenset({"n2"}), 0.25)
    f.apply()
    assert w.net.blocked(a["n1"], a["n2"]) and not w.net.blocked(a["n2"], a["n1"])
    assert w.net.link(a["n2"], a["n3"]).clog_s == 0.75  # both clogs apply to this link
    assert w.net.link(a["n1"], a["n3"]).clog_s == 0.5
    assert w.net.link(a["n1"], a["n2"]).clog_s == 0.25
    del f.clogs[2]
    f.apply()  # ending one fault keeps the others
    assert w.net.blocked(a["n1"], a["n2"]) and w.net.link(a["n1"], a["n3"]).clog_s == 0.0
    f.clear()
    assert not w.net.blocked(a["n1"], a["n2"]) and w.net.link(a["n1"], a["n2"]).clog_s == 0.0


def test_a_flapping_link_toggles_and_ends_healed() -> None:
    sc = Scenario("flap", nodes=3, duration_s=10.0, liveness_s=60.0,
                  workload=WorkloadConfig(clients=1, keys=2, rate_ops_s=5),
                  events=(FaultEvent(1.0, "flap", groups=(("n1",), ("n2", "n3")),
                                     period_s=0.5, duration_s=4.0),))
    sim = Simulation(sc, 3)
    report = sim.run()
    lines = [text for _, text in report.timeline]
    ends = [t for t in lines if t.startswith("flap ends after")]
    assert len(ends) == 1 and int(ends[0].split()[3]) >= 4
    assert sim.faults is not None and not sim.faults.active
    assert report.ok, report.render()


# -- known ringfs issues (simulations.vopr.KNOWN_ISSUES) ----------------------------------
# Each test asserts the behaviour ringfs should have; it fails today. When a fix lands
# the test passes, strict xfail turns that into a failure, and the fixer removes the
# xfail mark and the KNOWN_ISSUES entry so the VOPR campaign stops tolerating it.

def test_a_member_isolated_long_enough_to_be_declared_dead_rejoins() -> None:
    sc = Scenario("isolate", nodes=3, duration_s=25.0, liveness_s=120.0,
                  workload=WorkloadConfig(clients=2, keys=4, rate_ops_s=20),
                  events=(FaultEvent(5.0, "isolate", nodes=("n3",), duration_s=12.0),))
    report = Simulation(sc, 1).run()
    assert report.ok, report.render()


def test_a_node_restarted_while_cut_off_joins_once_it_can() -> None:
    sc = Scenario("restart-isolated", nodes=4, duration_s=20.0, liveness_s=120.0,
                  workload=WorkloadConfig(clients=2, keys=4, rate_ops_s=20),
                  events=(FaultEvent(3.0, "isolate", nodes=("n4",), duration_s=6.0),
                          FaultEvent(4.0, "crash", nodes=("n4",), duration_s=1.0)))
    report = Simulation(sc, 1).run()
    assert report.ok, report.render()


def test_a_cluster_restarted_while_a_member_is_down_still_places_it() -> None:
    sc = Scenario("restart-while-down", nodes=4, duration_s=15.0, liveness_s=60.0,
                  workload=WorkloadConfig(clients=2, keys=6, rate_ops_s=20),
                  events=(FaultEvent(3.0, "crash", nodes=("n4",), duration_s=8.0),
                          FaultEvent(5.0, "crash", nodes=("n1", "n2", "n3"), duration_s=0.5)))
    report = Simulation(sc, 1).run()
    assert report.ok, report.render()


def test_every_hint_is_delivered_in_the_end() -> None:
    report = run_seed(52)  # a VOPR seed where two deliveries lose their acknowledgement
    assert report.ok or known_issue(report) is not None, report.render()
    assert not {"hints", "acked-writes"} & set(report.failed_checks()), report.render()


def test_a_write_survives_a_stale_context_from_before_a_reaped_delete() -> None:
    w = SimWorld(1, node_defaults={"tombstone_grace_s": 0.5, "vnodes_per_capacity": 64})
    for n in ("n1", "n2", "n3"):
        w.add_node(n)
    w.run_for(2.0)
    key = b"k"
    coordinator = w.nodes["n1"].node.membership.ring.preference_list(key, 3)[0]
    a, b, c = (w.add_client(name) for name in "abc")
    for cl in (a, b, c):
        cl.open(w.nodes[coordinator].address)
    assert a.call(Op.PUT, {"key": key, "value": b"v1"})[0] == "ok"
    stale = a.call(Op.GET, {"key": key})[1]["context"]  # a keeps this context
    ctx = b.call(Op.GET, {"key": key})[1]["context"]
    assert b.call(Op.DELETE, {"key": key, "context": ctx})[0] == "ok"
    b.call(Op.GET, {"key": key})  # every primary answers with the tombstone: reap scheduled
    w.run_for(10.0)
    assert all(sn.engine.get(key) is None for sn in w.nodes.values())  # reaped
    assert c.call(Op.PUT, {"key": key, "value": b"from-c"})[0] == "ok"
    assert a.call(Op.PUT, {"key": key, "value": b"from-a", "context": stale})[0] == "ok"
    got = a.call(Op.GET, {"key": key, "r": 3})[1]
    # a never saw from-c, so its write cannot supersede it: both must be siblings.
    assert sorted(got["values"]) == [b"from-a", b"from-c"]
