"""Which pods ehc checks, and how: opt-in, eligibility, checks.

A pod opts in with the annotation ``endpoint-health-checker.io/enabled: "true"`` (*annotation mode*:
ehc sets Ready=False on failure and leaves recovery to the kubelet) or with the readiness gate
``endpointHealthCheckSuccess`` (*gate mode*: ehc owns that condition).  An annotation with any other
value opts the pod out, even with the gate.  Only Running pods with an IP and no deletion timestamp
are probed.

What is checked follows the annotation ``endpoint-health-checker.io/probe`` (else ehc's default):

- ``tcp``: a TCP connect to every port of the containers' readiness and liveness probes (tcpSocket,
  httpGet, grpc), named ports resolved against the container's own ports as the kubelet does; ICMP
  for a pod without one.
- ``readiness``: what each container's readiness probe declares, from outside: httpGet → HTTP GET,
  grpc → gRPC health Check, tcpSocket → TCP connect.  A pod with no such probe (exec, or none) falls
  back to ``tcp`` on its liveness ports, then ICMP, and says so.
- ``icmp``: ICMP echo only.

The probe's own period, timeout and thresholds are not used: they are tuned for the kubelet's job
(restart or unready a container at leisure), ehc keeps its own to find a dead endpoint in seconds.
This is the one place these choices are made: everything downstream reads the checks.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from enum import Enum

from ehc.kube.model import ANNOTATION, GATE, PROBE_ANNOTATION, Container, HttpGetAction, Pod, Probe
from ehc.sources.address import probe_address
from ehc.wire.checks import Check, Grpc, Http, Icmp, Tcp, port_of, request_path, target_kind
from ehc.wire.messages import Health, Target


class Mode(Enum):
    ANNOTATION = "annotation"
    GATE = "gate"


PROBES = ("tcp", "readiness", "icmp")
"""The values of the probe annotation and of ehc's default probe."""


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
        return Target(key=self.key, ip=self.ip, checks=self.checks, health=health, node=self.node)


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


def probe_ports(
    pod: Pod, which: tuple[str, ...] = ("readiness", "liveness")
) -> tuple[tuple[int, ...], list[str]]:
    """Ports of the containers' probes, deduplicated and sorted, and what is wrong with the others."""
    ports: set[int] = set()
    problems: list[str] = []
    for container in pod.spec.containers:
        for kind in which:
            probe: Probe | None = getattr(container, f"{kind}Probe")
            for port in _probe_ports(probe):
                resolved, why = _resolve(container, port)
                if resolved is None:
                    problems.append(
                        f"container {container.name!r} {kind} probe port {port!r} {why}; that port is not checked"
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


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
"""An HTTP header name (RFC 9110 token)."""
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
"""What may not appear in an HTTP header value (CR and LF would end the header)."""


def readiness_checks(pod: Pod) -> tuple[list[Check], list[str]]:
    """The checks the containers' readiness probes declare, and what is wrong with the others."""
    checks: list[Check] = []
    problems: list[str] = []
    for container in pod.spec.containers:
        probe = container.readinessProbe
        if probe is None:
            continue
        where = f"container {container.name!r} readiness probe"
        if probe.httpGet is not None:
            action = probe.httpGet
            port, why = _resolve(container, action.port)
            scheme = (action.scheme or "HTTP").lower()
            if port is None:
                problems.append(f"{where} port {action.port!r} {why}; it is not checked")
            elif scheme not in ("http", "https"):
                problems.append(f"{where} scheme {action.scheme!r} is not HTTP or HTTPS; it is not checked")
            else:
                checks.append(_http(action, port, where, problems))
        elif probe.grpc is not None:
            given = probe.grpc.port
            port, why = _resolve(container, given) if isinstance(given, int) else (None, "is not a number")
            if port is None:
                problems.append(
                    f"{where} port {given!r} {why} (a grpc probe's port must be one); it is not checked"
                )
            else:
                checks.append(Grpc(port, probe.grpc.service or ""))
        elif probe.tcpSocket is not None:
            port, why = _resolve(container, probe.tcpSocket.port)
            if port is None:
                problems.append(f"{where} port {probe.tcpSocket.port!r} {why}; it is not checked")
            else:
                checks.append(Tcp(port))
    return checks, problems


def _http(action: HttpGetAction, port: int, where: str, problems: list[str]) -> Http:
    """An HTTP check as the kubelet would make it: a ``Host`` header sets the host; a header that
    could not be sent as given is left out and reported."""
    host = action.host or ""
    kept: list[tuple[str, str]] = []
    for header in action.httpHeaders or ():
        if not _TOKEN.fullmatch(header.name) or _BAD_VALUE.search(header.value):
            problems.append(f"{where} header {header.name!r} is not a valid HTTP header; it is not sent")
        elif header.name.lower() == "host":
            host = header.value
        else:
            kept.append((header.name, header.value))
    if _BAD_VALUE.search(host) or " " in host:
        problems.append(f"{where} host {host!r} is not a valid Host header; the address is sent instead")
        host = ""
    https = (action.scheme or "HTTP").lower() == "https"
    return Http(port, request_path(action.path or "/"), https, host, tuple(kept))


def pod_ip(pod: Pod) -> str | None:
    if pod.status.podIP:
        return pod.status.podIP
    return pod.status.podIPs[0].ip if pod.status.podIPs else None


def select(pod: Pod, default_probe: str = "tcp") -> Selection:
    """Decide whether and how ``pod`` is probed; ``default_probe`` is for pods without the probe annotation."""
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
    address, why = probe_address(ip)
    if address is None:
        problem = f"pod IP {ip!r} {why}; the pod is not probed"
        return Selection(None, problem, (problem,))
    checks, problems = checks_for(pod, default_probe)
    m = pod.metadata
    # Namespaces and node names repeat across thousands of pods: one string each, not one per pod.
    namespace, node = sys.intern(m.namespace), sys.intern(pod.spec.nodeName or "")
    target = PodTarget(f"{namespace}/{m.name}", namespace, m.uid, node, address, checks, mode)
    return Selection(target, "", tuple(problems))


def checks_for(pod: Pod, default_probe: str = "tcp") -> tuple[tuple[Check, ...], list[str]]:
    """What to check on ``pod`` under its probe annotation (else ``default_probe``), and what is wrong."""
    problems: list[str] = []
    probe = pod.metadata.annotations.get(PROBE_ANNOTATION, default_probe)
    if probe not in PROBES:
        problems.append(
            f"annotation {PROBE_ANNOTATION}={probe!r} is not one of {', '.join(PROBES)}; "
            f"the pod is probed with the default, {default_probe!r}"
        )
        probe = default_probe
    if probe == "icmp":
        return _shared((Icmp(),)), problems
    if probe == "readiness":
        checks, more = readiness_checks(pod)
        problems += more
        if checks:
            return _shared(tuple(sorted(set(checks), key=_order))), problems
        ports, more = probe_ports(pod, ("liveness",))
        problems += more
        fallback = f"TCP on its liveness probe ports {', '.join(map(str, ports))}" if ports else "ICMP echo"
        problems.append(
            f"annotation {PROBE_ANNOTATION}={probe!r} but no container has a readiness probe ehc can run "
            f"from outside (httpGet, grpc or tcpSocket; exec runs inside the container): probed with {fallback}"
        )
        return _shared(tuple(Tcp(p) for p in ports) or (Icmp(),)), problems
    ports, more = probe_ports(pod)
    return _shared(tuple(Tcp(p) for p in ports) or (Icmp(),)), problems + more


def _order(check: Check) -> tuple[str, int, str]:
    return (type(check).__name__, port_of(check), repr(check))


_SHARED: dict[tuple[Check, ...], tuple[Check, ...]] = {}
_SHARED_MAX = 4096
"""Bound on the shared tuples: pods with a header or path of their own would otherwise grow it forever."""


def _shared(checks: tuple[Check, ...]) -> tuple[Check, ...]:
    """One tuple per distinct set of checks: tens of thousands of pods share a few."""
    found = _SHARED.get(checks)
    if found is None:
        if len(_SHARED) >= _SHARED_MAX:
            _SHARED.clear()
        found = _SHARED[checks] = checks
    return found
