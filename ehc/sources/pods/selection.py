"""Which pods ehc checks, and how: opt-in, eligibility, probe ports.

A pod opts in with the annotation ``endpoint-health-checker.io/enabled: "true"`` (*annotation mode*:
ehc sets Ready=False on failure and leaves recovery to the kubelet) or with the readiness gate
``endpointHealthCheckSuccess`` (*gate mode*: ehc owns that condition).  An annotation with any other
value opts the pod out, even with the gate.  Only Running pods with an IP and no deletion timestamp
are probed.  Ports come from the containers' readiness and liveness probes (tcpSocket, httpGet,
grpc); a named port is resolved against the container's own ports, as the kubelet does.  Each port
becomes a TCP check; a pod without one gets an ICMP check.  This is the one place that choice is
made: everything downstream reads the checks.
"""

from __future__ import annotations

import ipaddress
import sys
from dataclasses import dataclass
from enum import Enum

from ehc.kube.model import ANNOTATION, GATE, Container, Pod, Probe
from ehc.wire.checks import Check, Icmp, Tcp, port_of, target_kind
from ehc.wire.messages import Health, Target


class Mode(Enum):
    ANNOTATION = "annotation"
    GATE = "gate"


@dataclass(frozen=True, slots=True)
class PodTarget:
    """A pod to probe, with what the rest of the pipeline needs to know about it."""

    key: str  # namespace/name
    namespace: str
    uid: str
    node: str
    ip: str
    checks: tuple[Check, ...]
    mode: Mode

    @property
    def name(self) -> str:
        return self.key[len(self.namespace) + 1 :]  # not stored: tens of thousands of targets

    @property
    def kind(self) -> str:
        return target_kind(self.checks)

    @property
    def ports(self) -> tuple[int, ...]:
        return tuple(p for c in self.checks if (p := port_of(c)))

    def probe_target(self, health: Health) -> Target:
        return Target(key=self.key, ip=self.ip, checks=self.checks, health=health)


@dataclass(frozen=True, slots=True)
class Selection:
    """The verdict on one pod: its target (None when not probed), why not, and what is wrong with it."""

    target: PodTarget | None
    skipped: str = ""  # why the pod is not probed ("" when it is, or when it never opted in)
    problems: tuple[str, ...] = ()  # bad input worth a log line and an Event


_TRUTHY = frozenset({"true", "yes", "y", "on", "1", "enabled"})
"""Values that mean "true" to a person, if not to ehc: worth a warning, since the pod goes unprotected."""


def opt_in_mode(pod: Pod) -> tuple[Mode | None, str]:
    """The pod's mode, or None; the second value explains an explicit opt-out."""
    has_gate = any(g.conditionType == GATE for g in pod.spec.readinessGates)
    value = pod.metadata.annotations.get(ANNOTATION)
    if value is not None and value != "true":
        if value.strip().lower() in _TRUTHY:
            return None, (
                f'annotation {ANNOTATION}={value!r} is not "true" (the value is case-sensitive), so the pod '
                f'is not checked: write "true" to protect it'
                + (f"; with the readiness gate {GATE} the pod cannot become Ready" if has_gate else "")
            )
        if has_gate:
            return None, (
                f"annotation {ANNOTATION}={value!r} opts the pod out although it has the readiness gate "
                f"{GATE}: ehc will not set that condition, so the pod cannot become Ready"
            )
        return None, f'annotation {ANNOTATION}={value!r} (only "true" opts in)'
    if has_gate:
        return Mode.GATE, ""
    if value == "true":
        return Mode.ANNOTATION, ""
    return None, ""


def probe_ports(pod: Pod) -> tuple[tuple[int, ...], list[str]]:
    """Ports of the readiness/liveness probes, deduplicated and sorted, and what is wrong with the others."""
    ports: set[int] = set()
    problems: list[str] = []
    for container in pod.spec.containers:
        for which, probe in (("readiness", container.readinessProbe), ("liveness", container.livenessProbe)):
            for port in _probe_ports(probe):
                resolved, why = _resolve(container, port)
                if resolved is None:
                    problems.append(
                        f"container {container.name!r} {which} probe port {port!r} {why}; that port is not checked"
                    )
                else:
                    ports.add(resolved)
    return tuple(sorted(ports)), problems


def _probe_ports(probe: Probe | None) -> list[int | str]:
    if probe is None:
        return []
    return [action.port for action in (probe.tcpSocket, probe.httpGet, probe.grpc) if action is not None]


def _resolve(container: Container, port: int | str) -> tuple[int | None, str]:
    """The port number, or None and why not."""
    if isinstance(port, str) and port.isascii() and port.isdigit():  # "8080" is a valid IntOrString
        port = int(port)
    if isinstance(port, int):
        return (port, "") if 0 < port < 65536 else (None, "is out of range (1-65535)")
    for p in container.ports:
        if p.name == port and p.protocol == "TCP":
            if 0 < p.containerPort < 65536:
                return p.containerPort, ""
            return None, f"names containerPort {p.containerPort}, out of range (1-65535)"
    return None, "does not name a TCP port of the container"


def pod_ip(pod: Pod) -> str | None:
    if pod.status.podIP:
        return pod.status.podIP
    return pod.status.podIPs[0].ip if pod.status.podIPs else None


def _address(text: str) -> tuple[str | None, str]:
    """The canonical address a pod can be probed at, or None and why not."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None, "is not an IPv4 or IPv6 address"
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
        return None, "carries a zone index: a pod address never does"
    if ip.is_unspecified or ip.is_multicast:
        return None, "is not a unicast address"
    return str(ip), ""


def select(pod: Pod) -> Selection:
    """Decide whether and how ``pod`` is probed."""
    mode, why = opt_in_mode(pod)
    if mode is None:
        worth_an_event = "cannot become Ready" in why or "is not checked" in why
        return Selection(None, why, (why,) if worth_an_event else ())
    if pod.metadata.deletionTimestamp:
        return Selection(None, "terminating")
    if pod.status.phase != "Running":
        return Selection(None, f"phase {pod.status.phase or 'unknown'}")
    ip = pod_ip(pod)
    if not ip:
        return Selection(None, "no pod IP yet")
    address, why = _address(ip)
    if address is None:
        problem = f"pod IP {ip!r} {why}; the pod is not probed"
        return Selection(None, problem, (problem,))
    ports, problems = probe_ports(pod)
    m = pod.metadata
    # Namespaces and node names repeat across thousands of pods: one string each, not one per pod.
    namespace, node = sys.intern(m.namespace), sys.intern(pod.spec.nodeName or "")
    target = PodTarget(f"{namespace}/{m.name}", namespace, m.uid, node, address, _checks(ports), mode)
    return Selection(target, "", tuple(problems))


_CHECKS: dict[tuple[int, ...], tuple[Check, ...]] = {}


def _checks(ports: tuple[int, ...]) -> tuple[Check, ...]:
    """A TCP check per port, or ICMP without ports; one shared tuple per port combination."""
    checks = _CHECKS.get(ports)
    if checks is None:
        checks = _CHECKS[ports] = tuple(Tcp(p) for p in ports) or (Icmp(),)
    return checks
