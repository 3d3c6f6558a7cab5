"""``perf/run.py --quick``: the load-test harness end to end on a small fleet, every checker (ehc,
per-pod: ehc with ``--node-evidence 0``, and the baseline) where planned, every scenario but capacity.  Loose sanity bounds only (the figures themselves are for ``perf/RESULTS.md``);
what must hold whatever the machine's speed is asserted exactly: nothing written in steady state,
nobody wrongly marked, nothing lost or duplicated, no false transitions after a worker crash."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ehc.sim import netns as sim_netns

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(
    not sim_netns.available()[0], reason=f"needs a network namespace: {sim_netns.available()[1]}"
)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("perf")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "perf" / "run.py"), "--quick", "--json", str(out / "report.json"),
         "--plot", str(out / "detection.png")],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (out / "detection.png").stat().st_size > 10_000
    assert "goal: node power-off" in proc.stdout
    return json.loads((out / "report.json").read_text())


def test_every_scenario_ran_for_both_checkers_where_planned(report: dict) -> None:
    sc = report["scenarios"]
    assert report["errors"] == []
    expected = {"steady_state", "power_off_1_node", "power_off_10pct_nodes", "loss_2pct", "flapping",
                "api_trouble", "leader_failover", "partition", "worker_crash", "scale"}  # fmt: skip
    assert expected <= sc.keys()
    assert "baseline" in sc["steady_state"] and "baseline" in sc["power_off_1_node"]
    assert report["node_monitor_grace_period_seconds"] == 40
    assert {g["goal"].split(":")[0] for g in report["goals"]} >= {
        "node power-off",
        "exactly 1 API write per transition",
    }


def test_steady_state(report: dict) -> None:
    for checker in ("ehc", "baseline"):
        s = report["scenarios"]["steady_state"][checker]
        assert s["api_writes"] == 0 and s["api_pod_reads"] == 0
        assert s["done_ratio"] > 0.5 and s["cpu_seconds_per_1000_probes"]["total"] > 0
        assert s["rss_mb"]["coordinator"] > 10
    e = report["scenarios"]["steady_state"]["ehc"]
    assert e["done_ratio"] > 0.9 and len(e["rss_mb"]["workers"]) == 1
    assert e["pipe_frames_per_second"] > 0 and e["skipped_probes"] == 0
    assert e["schedule_lag_ms"]["p99_max"] is not None


def test_power_off_side_by_side(report: dict) -> None:
    sc = report["scenarios"]
    for name in ("power_off_1_node", "power_off_10pct_nodes"):
        e = sc[name]["ehc"]
        assert e["detected"] == e["victim_pods"] > 0 and e["wrongly_marked"] == 0
        assert e["writes_per_transition"] == 1.0 and e["pod_reads_per_transition"] == 0
        assert 0 < e["detection_seconds"]["max"] < 20 and len(e["samples"]) == e["detected"]
        # Selectorless backends on the dead nodes go out too, and nothing else.
        assert e["backends_detected"] == e["victim_backends"] > 0 and e["backends_wrongly_marked"] == 0
        assert e["writes_per_backend_object"] >= 1
        # A pod leaves its Service's EndpointSlice once the slice controller sees its condition write.
        assert e["service_slice_seconds"]["max"] >= e["detection_seconds"]["max"]
    b = sc["power_off_1_node"]["baseline"]
    assert b["detected"] > 0 and b["wrongly_marked"] == 0
    assert b["service_slice_seconds"]["p50"] is not None and "backend_detection_seconds" not in b
    assert b["pod_reads_per_transition"] >= 1  # the reference GETs before every PATCH
    # The reference's sequential retries cost it (retries + 1) x timeout = 11 s per dead pod at least.
    assert b["detection_seconds"]["p50"] > sc["power_off_1_node"]["ehc"]["detection_seconds"]["p50"]
    assert report["ehc_over_baseline"]["power_off_1_node.detection_seconds.p50"] < 1


def test_per_pod_beside_ehc_where_planned(report: dict) -> None:
    sc = report["scenarios"]
    p = sc["power_off_1_node"]["per-pod"]
    assert p["detection_seconds"]["max"] is not None and p["detection_seconds"]["max"] > 0
    assert p["wrongly_marked"] == 0
    assert p["detected"] == p["victim_pods"] > 0
    assert sc["power_off_1_node"]["per-pod_runs"] == 1
    assert "power_off_1_node.detection_seconds.max" in report["ehc_over_per_pod"]
    # --quick runs it in one-node power-off only.
    assert all("per-pod" not in sc[name] for name in sc if name != "power_off_1_node")


def test_loss_flapping_trouble_failover_crash_and_scale(report: dict) -> None:
    sc = report["scenarios"]
    loss = sc["loss_2pct"]["ehc"]
    assert loss["false_ejections"] <= 1 and loss["detected"] == loss["victim_pods"]
    flap = sc["flapping"]["ehc"]
    assert flap["brief_outages"]["writes"] == 0
    assert flap["long_outages"]["writes_per_change"] == 1.0 and flap["long_outages"]["ejections_written"] > 0
    trouble = sc["api_trouble"]["ehc"]
    assert trouble["requests_refused"] > 0
    assert (
        trouble["lost"]
        == trouble["duplicated_writes"]
        == trouble["order_violations"]
        == trouble["wrongly_marked"]
        == 0
    )
    fo = sc["leader_failover"]["ehc"]
    assert fo["not_detected_within_cap"] == 0 and fo["wrongly_marked"] == 0
    assert fo["standby_took_lease_seconds"] is not None
    crash = sc["worker_crash"]["ehc"]
    assert crash["restarts"] == 1 and crash["respawn_seconds"] is not None
    assert crash["false_transitions"] == 0 and crash["api_writes"] == 0
    points = sc["scale"]["ehc"]
    assert sorted(p["pods"] for p in points) == [500, 2000]
    assert all(p["done_ratio"] > 0.9 for p in points)
    assert sc["scale"]["rss_bytes_per_target"]["worker"] is not None


def test_a_peer_vetoes_the_ejections_a_partition_would_cause(report: dict) -> None:
    """The leader's path to one node cut, the standby's intact: nothing ejected, said once; without a
    second opinion every pod of that node goes.  Real power-offs are still found, cut or not."""
    cut, alone = (
        report["scenarios"]["partition"]["ehc"],
        report["scenarios"]["partition"]["no-second-opinion"],
    )
    assert cut["ejected_while_cut"] == 0 and cut["other_pods_ejected_while_cut"] == 0
    assert cut["vetoed"] == cut["cut_pods"] > 0 and cut["vetoed_events"] == 1
    assert alone["ejected_while_cut"] == alone["cut_pods"] and alone["vetoed"] == 0
    for figures in (cut, alone):
        assert figures["power_off_not_detected"] == 0 and figures["power_off_wrongly_marked"] == 0
    assert cut["cut_node_not_detected"] == 0
