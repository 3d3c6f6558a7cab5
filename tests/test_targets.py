"""Pod → target selection: opt-in styles, eligibility, ports, bad input."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from ehc.kube.model import Pod
from ehc.sources.pods import Mode, current_health, select
from ehc.wire.checks import Grpc, Http, Icmp, Tcp
from ehc.wire.messages import Health


def pod(
    *,
    annotation: str | None = "true",
    gate: bool = False,
    phase: str = "Running",
    ip: str | None = "10.1.2.3",
    containers: list[dict[str, Any]] | None = None,
    deleting: bool = False,
    conditions: list[dict[str, str]] | None = None,
    ips: list[str] | None = None,
    probe_annotation: str | None = None,
) -> Pod:
    meta: dict[str, Any] = {"name": "web-0", "namespace": "shop", "uid": "u-1", "annotations": {}}
    if annotation is not None:
        meta["annotations"]["endpoint-health-checker.io/enabled"] = annotation
    if probe_annotation is not None:
        meta["annotations"]["endpoint-health-checker.io/probe"] = probe_annotation
    if deleting:
        meta["deletionTimestamp"] = "2026-11-21T00:00:00Z"
    spec: dict[str, Any] = {"nodeName": "node-a", "containers": containers or [{"name": "app"}]}
    if gate:
        spec["readinessGates"] = [{"conditionType": "endpointHealthCheckSuccess"}]
    status: dict[str, Any] = {"phase": phase, "conditions": conditions or []}
    if ip:
        status["podIP"] = ip
    if ips:
        status["podIPs"] = [{"ip": i} for i in ips]
    return msgspec.convert({"metadata": meta, "spec": spec, "status": status}, Pod)


def probe(kind: str, port: int | str) -> dict[str, Any]:
    return {kind: {"port": port}}


@pytest.mark.parametrize(
    ("annotation", "gate", "mode"),
    [("true", False, Mode.ANNOTATION), (None, True, Mode.GATE), ("true", True, Mode.GATE), (None, False, None),
     ("false", False, None), ("yes", True, None), ("True", False, None)],
)  # fmt: skip
def test_opt_in(annotation: str | None, gate: bool, mode: Mode | None) -> None:
    sel = select(pod(annotation=annotation, gate=gate))
    assert (sel.target.mode if sel.target else None) == mode


def test_annotation_other_value_with_gate_opts_out_and_says_so() -> None:
    sel = select(pod(annotation="no", gate=True))
    assert sel.target is None
    assert "cannot become Ready" in sel.problems[0]


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"phase": "Pending"}, "phase Pending"),
        ({"ip": None}, "no pod IP yet"),
        ({"deleting": True}, "terminating"),
    ],
)
def test_ineligible_pods_are_skipped(kwargs: dict[str, Any], reason: str) -> None:
    sel = select(pod(**kwargs))
    assert sel.target is None and sel.skipped == reason


def test_ports_from_every_probe_kind_and_named_ports() -> None:
    containers = [
        {"name": "app", "ports": [{"containerPort": 8080, "name": "http"}, {"containerPort": 9000, "name": "grpc"}],
         "readinessProbe": probe("httpGet", "http"), "livenessProbe": probe("tcpSocket", 8081)},
        {"name": "side", "ports": [{"containerPort": 7000, "name": "http"}], "readinessProbe": probe("grpc", 9090),
         "livenessProbe": probe("httpGet", "http")},
    ]  # fmt: skip
    sel = select(pod(containers=containers))
    assert sel.target is not None
    assert sel.target.ports == (7000, 8080, 8081, 9090)  # "http" resolves per container
    assert sel.target.kind == "tcp"
    assert sel.problems == ()


def test_unknown_port_name_is_reported_and_skipped() -> None:
    containers = [{"name": "app", "ports": [{"containerPort": 8080, "name": "http"}],
                   "readinessProbe": probe("httpGet", "metrics"), "livenessProbe": probe("tcpSocket", "http")}]  # fmt: skip
    sel = select(pod(containers=containers))
    assert sel.target is not None and sel.target.ports == (8080,)
    assert len(sel.problems) == 1 and "'metrics'" in sel.problems[0] and "'app'" in sel.problems[0]


def test_no_ports_means_icmp_even_when_every_name_is_unknown() -> None:
    sel = select(pod(containers=[{"name": "app", "readinessProbe": probe("tcpSocket", "nope")}]))
    assert sel.target is not None and sel.target.ports == () and sel.target.kind == "icmp"
    assert sel.problems


def test_ipv6_pod_ip_is_normalised() -> None:
    sel = select(pod(ip=None, ips=["fd00:0:0::0a"]))
    assert sel.target is not None and sel.target.ip == "fd00::a"


def test_garbage_pod_ip_is_a_problem_not_a_target() -> None:
    sel = select(pod(ip="10.1.2"))
    assert sel.target is None and "not an IPv4 or IPv6 address" in sel.problems[0]


@pytest.mark.parametrize(
    ("ip", "why"),
    [
        ("fe80::1%eth0", "zone index"),
        ("0.0.0.0", "not a unicast address"),
        ("ff02::1", "not a unicast address"),
    ],
)
def test_addresses_a_pod_never_has_are_problems_not_targets(ip: str, why: str) -> None:
    sel = select(pod(ip=ip))
    assert sel.target is None and why in sel.problems[0] and repr(ip) in sel.problems[0]


@pytest.mark.parametrize(
    ("port", "ports", "why"),
    [(99999, [], "out of range"), ("99999", [], "out of range"), (0, [], "out of range"),
     ("big", [{"containerPort": 99999, "name": "big"}], "names containerPort 99999, out of range"),
     ("８０", [], "does not name a TCP port")],  # non-ASCII digits are not a port number
)  # fmt: skip
def test_ports_out_of_range_are_problems_and_not_checked(port: int | str, ports: list[Any], why: str) -> None:
    containers = [{"name": "app", "ports": ports, "readinessProbe": probe("tcpSocket", port),
                   "livenessProbe": probe("tcpSocket", 8080)}]  # fmt: skip
    sel = select(pod(containers=containers))
    assert sel.target is not None and sel.target.ports == (8080,)
    assert len(sel.problems) == 1 and why in sel.problems[0], sel.problems


@pytest.mark.parametrize("value", ["TRUE", "True", "yes", "1", "on"])
def test_an_annotation_that_means_true_to_a_person_is_a_problem_worth_an_event(value: str) -> None:
    sel = select(pod(annotation=value))
    assert sel.target is None
    assert (
        sel.problems and f'={value!r} is not "true"' in sel.problems[0] and "not checked" in sel.problems[0]
    )
    assert select(pod(annotation="false")).problems == ()  # a plain opt-out is not a problem


@pytest.mark.parametrize(
    ("mode", "conditions", "health"),
    [
        (Mode.GATE, [], Health.UNKNOWN),
        (Mode.GATE, [{"type": "endpointHealthCheckSuccess", "status": "False"}], Health.UNHEALTHY),
        (Mode.GATE, [{"type": "endpointHealthCheckSuccess", "status": "True"}], Health.HEALTHY),
        (Mode.ANNOTATION, [{"type": "Ready", "status": "True"}], Health.HEALTHY),
        (Mode.ANNOTATION, [{"type": "Ready", "status": "False"}], Health.UNKNOWN),
    ],
)
def test_current_health_from_conditions(mode: Mode, conditions: list[dict[str, str]], health: Health) -> None:
    assert current_health({c["type"]: c["status"] for c in conditions}, mode) == health


# ---- what is checked: the probe annotation and the default ----------------------------------------

WEB = {
    "name": "web",
    "ports": [{"name": "http", "containerPort": 8080}, {"name": "admin", "containerPort": 9901}],
    "readinessProbe": {
        "httpGet": {
            "path": "healthz?deep=1",
            "port": "http",
            "scheme": "HTTPS",
            "httpHeaders": [{"name": "Host", "value": "shop.example"}, {"name": "X-Probe", "value": "ehc"}],
        }
    },
    "livenessProbe": {"tcpSocket": {"port": "admin"}},
}
API = {"name": "api", "readinessProbe": {"grpc": {"port": 9090, "service": "shop.Cart"}}}
DB = {"name": "db", "readinessProbe": {"tcpSocket": {"port": 5432}}}
EXEC = {
    "name": "job",
    "readinessProbe": {"exec": {"command": ["true"]}},
    "livenessProbe": probe("tcpSocket", 7000),
}


def test_readiness_checks_what_each_readiness_probe_declares() -> None:
    sel = select(pod(containers=[WEB, API, DB], probe_annotation="readiness"))
    assert sel.target is not None and sel.problems == ()
    assert set(sel.target.checks) == {
        Http(8080, "/healthz?deep=1", https=True, host="shop.example", headers=(("X-Probe", "ehc"),)),
        Grpc(9090, "shop.Cart"),
        Tcp(5432),
    }  # the liveness port 9901 is not checked: readiness is what the pod's own Ready follows


def test_tcp_is_the_default_and_connects_to_every_probe_port() -> None:
    for probe_annotation in (None, "tcp"):
        sel = select(pod(containers=[WEB, API, DB], probe_annotation=probe_annotation))
        assert sel.target is not None and sel.target.checks == (Tcp(5432), Tcp(8080), Tcp(9090), Tcp(9901))


def test_the_default_probe_applies_only_without_the_annotation() -> None:
    assert select(pod(containers=[API]), "readiness").target.checks == (Grpc(9090, "shop.Cart"),)  # type: ignore[union-attr]
    assert select(pod(containers=[API], probe_annotation="tcp"), "readiness").target.checks == (Tcp(9090),)  # type: ignore[union-attr]
    assert select(pod(containers=[API]), "icmp").target.checks == (Icmp(),)  # type: ignore[union-attr]


def test_icmp_pings_even_a_pod_with_ports() -> None:
    assert select(pod(containers=[WEB], probe_annotation="icmp")).target.checks == (Icmp(),)  # type: ignore[union-attr]


@pytest.mark.parametrize(("containers", "checks", "said"), [
    ([EXEC], (Tcp(7000),), "probed with TCP on its liveness probe ports 7000"),
    ([{"name": "app"}], (Icmp(),), "probed with ICMP echo"),
])  # fmt: skip
def test_readiness_without_a_probe_ehc_can_run_falls_back_and_says_so(
    containers: list[dict[str, Any]], checks: tuple[Any, ...], said: str
) -> None:
    sel = select(pod(containers=containers, probe_annotation="readiness"))
    assert sel.target is not None and sel.target.checks == checks
    assert (
        len(sel.problems) == 1
        and said in sel.problems[0]
        and "exec runs inside the container" in sel.problems[0]
    )


def test_an_unknown_probe_value_is_a_problem_and_the_default_is_used() -> None:
    sel = select(pod(containers=[DB], probe_annotation="HTTP"), "readiness")
    assert sel.target is not None and sel.target.checks == (Tcp(5432),)
    assert sel.problems == (
        "annotation endpoint-health-checker.io/probe='HTTP' is not one of tcp, readiness, icmp; "
        "the pod is probed with the default, 'readiness'",
    )


def test_readiness_probe_problems_name_the_container_and_leave_the_rest_checked() -> None:
    bad = [
        {"name": "a", "readinessProbe": {"httpGet": {"port": "nope", "path": "/"}}},
        {"name": "b", "readinessProbe": {"grpc": {"port": "grpc"}}},
        {
            "name": "c",
            "readinessProbe": {
                "httpGet": {"port": 80, "httpHeaders": [{"name": "X-A", "value": "1\r\nX-B: 2"}]}
            },
        },
        {"name": "d", "readinessProbe": {"httpGet": {"port": 81, "scheme": "FTP"}}},
    ]
    sel = select(pod(containers=bad, probe_annotation="readiness"))
    assert sel.target is not None and sel.target.checks == (Http(80, "/"),)  # the header is dropped, not sent
    assert [p.split(" readiness probe")[0] for p in sel.problems] == [
        "container 'a'",
        "container 'b'",
        "container 'c'",
        "container 'd'",
    ]
    assert "does not name a TCP port" in sel.problems[0] and "not a number" in sel.problems[1]
    assert "not a valid HTTP header" in sel.problems[2] and "not HTTP or HTTPS" in sel.problems[3]


def test_an_http_path_is_made_absolute_and_escaped_as_the_kubelet_would_send_it() -> None:
    c = {"name": "a", "readinessProbe": {"httpGet": {"port": 80, "path": "ready now/ü"}}}
    sel = select(pod(containers=[c], probe_annotation="readiness"))
    assert sel.target is not None and sel.target.checks == (Http(80, "/ready%20now/%C3%BC"),)
