"""``ehc run`` settings: environment variables (the reference checker's names, plus ehc's own), each
also a command-line flag; the flag wins.  Any invalid value is a start-up error that names the
variable, the value and what is allowed (``ehc run`` exits 2).
"""

from __future__ import annotations

import argparse
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from ehc.sources.pods.selection import PROBES
from ehc.wire.checks import Icmp, Tcp
from ehc.wire.logs import FORMATS, LEVELS
from ehc.wire.settings import ProbeSettings, format_duration, parse_duration


class SettingsError(ValueError):
    """A bad setting; the message says which, what it was and what is allowed."""


MAX_RETRY_COUNT = 100
"""More confirmations than this only delays detection; a million crash-looped the worker."""
MAX_WORKERS = 64
"""Each worker is a process that wants up to a core; hundreds starve the coordinator (and its Lease)."""
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


@dataclass(frozen=True)
class Setting:
    env: str
    flag: str
    kind: str  # "duration" | "int" | "float" | "share" | "str" | "choice" | "bool" | "namespaces" | ...
    default: Any
    help: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()


SETTINGS: tuple[Setting, ...] = (
    Setting("HEALTH_CHECK_INTERVAL", "--interval", "duration", 1.0, "probe period per target (at most 5m: a checker that looks less often protects nothing)", minimum=0.01, maximum=300),
    Setting("HEALTH_CHECK_TIMEOUT", "--timeout", "duration", 0.5, "timeout of one probe attempt (best shorter than the interval)", minimum=0.001, maximum=60),
    Setting(
        "HEALTH_CHECK_RETRY_COUNT", "--retry-count", "int", 5,
        "unhealthy after 1+N failed attempts in a row (the confirmations run in parallel)", minimum=0, maximum=MAX_RETRY_COUNT,
    ),
    Setting(
        "HEALTH_CHECK_CONCURRENCY", "--concurrency", "int", 10,
        "accepted for compatibility with the reference checker; ehc has no fixed pool of checks "
        "(every probe runs concurrently), so it changes nothing",
        minimum=1,
    ),
    Setting(
        "EHC_DEFAULT_PROBE", "--default-probe", "choice", "tcp",
        "what to check on a pod without the endpoint-health-checker.io/probe annotation: tcp (connect "
        "to its probe ports), readiness (what its readiness probe declares: HTTP GET, gRPC health, TCP) "
        "or icmp", choices=PROBES,
    ),
    Setting(
        "EHC_SELECTORLESS", "--selectorless", "bool", False,
        "also check the addresses of EndpointSlices and Endpoints labelled endpoint-health-checker.io/enabled=true "
        "(Services without selectors) and flip their readiness; needs the RBAC the chart grants with "
        "selectorless.enabled",
    ),
    Setting(
        "EHC_SELECTORLESS_NAMESPACES", "--selectorless-namespaces", "namespaces", (),
        "comma-separated namespaces whose EndpointSlices and Endpoints are watched (empty: every namespace)",
    ),
    Setting(
        "EHC_HOT_STANDBY", "--hot-standby", "bool", True,
        "standbys probe like the leader (one more connection per target per interval per standby) so "
        "the replica that takes the lease writes at once what its own probes know, and can give a second "
        "opinion; false: only the leader probes, starting from scratch when it takes over",
    ),
    Setting(
        "EHC_SECOND_OPINION", "--second-opinion", "bool", True,
        "before ejecting, ask the live peers (hot standbys) what their own probes say; a peer that sees the "
        "target alive vetoes the ejection (a suspected partition between the leader and it), one that "
        "cannot answer in time does not block it",
    ),
    Setting(
        "EHC_PEER_ADDRESS", "--peer-address", "address", ":9091",
        "HOST:PORT or :PORT where peers ask this replica for its opinion (empty: off, and no member "
        "Lease); peers reach it at POD_IP and this port",
    ),
    Setting("POD_IP", "--pod-ip", "str", "", "the address peers reach this replica at (the downward API's status.podIP)"),
    Setting("EHC_RECOVERY_THRESHOLD", "--recovery-threshold", "int", 2, "healthy again after N successes in a row", minimum=1),
    Setting("EHC_CONFIRM_SPACING", "--confirm-spacing", "duration", 0.05, "gap between the parallel confirmation attempts", minimum=0),
    Setting(
        "EHC_NODE_EVIDENCE", "--node-evidence", "int", 10,
        "judge a whole node down once this many attempts on its targets went unanswered and none of them "
        "answered since (a false verdict needs that many losses in a row); 0 judges every target alone",
        minimum=0, maximum=1000,
    ),
    Setting(
        "EHC_NODE_WITNESS", "--node-witness", "choice", "off",
        "also check each node's own address (its InternalIP) every heartbeat: tcp (connect to "
        "EHC_NODE_WITNESS_PORT; a refusal is an answer too) or icmp; a node that answers is alive, one "
        "that misses 3 heartbeats has its targets probed at once (never ejected for that alone); needs "
        "nodes list/watch", choices=("off", "tcp", "icmp"),
    ),
    Setting("EHC_NODE_WITNESS_PORT", "--node-witness-port", "int", 10250, "the witness's TCP port (the kubelet's)", minimum=1, maximum=65535),
    Setting("EHC_NODE_HEARTBEAT", "--node-heartbeat", "duration", 0.1, "how often each node's witness is checked (each check times out after two)", minimum=0.01, maximum=10),
    Setting("EHC_WORKERS", "--workers", "int", 1, "probe worker processes (each needs up to a core at full load)", minimum=1, maximum=MAX_WORKERS),
    Setting(
        "EHC_FAILSAFE_SHARE", "--failsafe-share", "share", 0.5,
        "stop ejecting while more than this share of all targets is unhealthy or suspect",
    ),
    Setting("EHC_FAILSAFE_MIN_TARGETS", "--failsafe-min-targets", "int", 10, "fleets smaller than this are exempt from the fail-safe", minimum=0),
    Setting("EHC_PATCH_QPS", "--patch-qps", "float", 100.0, "status patches per second, at most, after the burst (client-side budget)", minimum=0.1),
    Setting("EHC_PATCH_BURST", "--patch-burst", "int", 500, "patches that may go at once after a quiet spell: enough for a few whole nodes' ejections", minimum=1),
    Setting("EHC_PATCH_CONCURRENCY", "--patch-concurrency", "int", 16, "patch requests in flight, at most", minimum=1),
    Setting("EHC_METRICS_ADDRESS", "--metrics-address", "address", ":9090", "HOST:PORT, [IPv6]:PORT or :PORT for /metrics, /healthz and /readyz (empty: off)"),
    Setting("EHC_LOG_LEVEL", "--log-level", "choice", "info", "log level", choices=LEVELS),
    Setting("EHC_LOG_FORMAT", "--log-format", "choice", "text", "log format", choices=FORMATS),
    Setting("LEASE_NAME", "--lease-name", "name", "endpoint-health-checker-leader", "leader-election Lease name"),
    Setting("LEASE_DURATION", "--lease-duration", "duration", 4.0, "leader-election lease duration", minimum=0.1),
    Setting("RENEW_DEADLINE", "--renew-deadline", "duration", 2.0, "a leader that cannot renew within this stops writing", minimum=0.05),
    Setting("RETRY_PERIOD", "--retry-period", "duration", 0.5, "leader-election retry and renew period", minimum=0.01),
    Setting("POD_NAME", "--identity", "str", "", "leader-election identity (default: the host name)"),
    Setting("POD_NAMESPACE", "--namespace", "str", "", "namespace of the Lease (default: the service account's, else 'default')"),
)  # fmt: skip


def _attr(s: Setting) -> str:
    return s.flag.removeprefix("--").replace("-", "_")


def _allowed(s: Setting) -> str:
    if s.kind == "duration":
        floor = "" if s.minimum is None else f" of at least {format_duration(s.minimum)}"
        ceiling = "" if s.maximum is None else f" and at most {format_duration(s.maximum)}"
        return f"a duration{floor}{ceiling} such as 500ms, 2s or 1m30s"
    if s.kind == "int":
        ceiling = "" if s.maximum is None else f" and <= {int(s.maximum)}"
        return f"a whole number >= {int(s.minimum or 0)}{ceiling}"
    if s.kind == "float":
        return f"a finite number >= {s.minimum}"
    if s.kind == "name":
        return "a DNS subdomain name: lowercase letters, digits, '-' and '.', starting and ending alphanumeric, at most 253 characters"
    if s.kind == "address":
        return "HOST:PORT, [IPv6]:PORT or :PORT with a port from 1 to 65535, or empty for off"
    if s.kind == "share":
        return "a number greater than 0 and at most 1 (e.g. 0.5)"
    if s.kind == "choice":
        return "one of " + ", ".join(s.choices)
    if s.kind == "bool":
        return "true or false"
    if s.kind == "namespaces":
        return "namespace names (lowercase letters, digits and '-', at most 63 characters) separated by commas, or empty for all"
    return "text"


def _parse(s: Setting, text: str) -> Any:
    t = text.strip()
    try:
        if s.kind == "duration":
            value: Any = parse_duration(t)
        elif s.kind == "int":
            if not (t.isascii() and t.lstrip("-+").isdigit()):
                raise ValueError
            value = int(t)
        elif s.kind in ("float", "share"):
            value = float(t)
            if not math.isfinite(value):
                raise ValueError
        elif s.kind == "choice":
            value = t.lower()
            if value not in s.choices:
                raise ValueError
        elif s.kind == "name":
            if len(t) > 253 or not _DNS_SUBDOMAIN.fullmatch(t):
                raise ValueError
            return t
        elif s.kind == "address":
            if t:
                parse_address(t)
            return t
        elif s.kind == "bool":
            if t.lower() not in ("true", "false"):
                raise ValueError
            return t.lower() == "true"
        elif s.kind == "namespaces":
            names = tuple(dict.fromkeys(n.strip() for n in t.split(",") if n.strip()))
            if any(len(n) > 63 or not _DNS_LABEL.fullmatch(n) for n in names):
                raise ValueError
            return names
        else:
            return text
    except ValueError:
        raise SettingsError(f"{{where}}={text!r} is invalid: expected {_allowed(s)}") from None
    if (s.minimum is not None and value < s.minimum) or (s.maximum is not None and value > s.maximum):
        raise SettingsError(f"{{where}}={text!r} is invalid: expected {_allowed(s)}")
    if s.kind == "share" and not 0 < value <= 1:
        raise SettingsError(f"{{where}}={text!r} is invalid: expected {_allowed(s)}")
    return value


@dataclass(frozen=True)
class RunSettings:
    interval: float
    timeout: float
    retry_count: int
    concurrency: int
    recovery_threshold: int
    confirm_spacing: float
    node_evidence: int
    node_witness: str
    node_witness_port: int
    node_heartbeat: float
    default_probe: str
    selectorless: bool
    selectorless_namespaces: tuple[str, ...]
    hot_standby: bool
    second_opinion: bool
    peer_address: str
    pod_ip: str
    workers: int
    failsafe_share: float
    failsafe_min_targets: int
    patch_qps: float
    patch_burst: int
    patch_concurrency: int
    metrics_address: str
    log_level: str
    log_format: str
    lease_name: str
    lease_duration: float
    renew_deadline: float
    retry_period: float
    identity: str
    namespace: str

    @property
    def probe(self) -> ProbeSettings:
        return ProbeSettings(
            interval=self.interval,
            timeout=self.timeout,
            retry_count=self.retry_count,
            recovery_threshold=self.recovery_threshold,
            confirm_spacing=self.confirm_spacing,
            node_evidence=self.node_evidence,
            witness={"tcp": Tcp(self.node_witness_port), "icmp": Icmp()}.get(self.node_witness),
            heartbeat=self.node_heartbeat,
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per setting, documented with its environment variable and default."""
    for s in SETTINGS:
        if s.kind == "duration":
            default = format_duration(s.default)
        elif s.kind == "bool":
            default = str(s.default).lower()
        elif s.kind == "namespaces":
            default = ",".join(s.default)
        else:
            default = str(s.default)
        shown = f"; default {default}" if default else ""
        extra: dict[str, Any] = {"nargs": "?", "const": "true"} if s.kind == "bool" else {}
        parser.add_argument(
            s.flag,
            dest=_attr(s),
            default=None,
            metavar="VALUE",
            help=f"{s.help} [env {s.env}{shown}]",
            **extra,
        )


def load(args: argparse.Namespace | None, env: Mapping[str, str] = os.environ) -> RunSettings:
    """Settings from flags, then the environment, then the defaults; SettingsError on a bad one."""
    values: dict[str, Any] = {}
    for s in SETTINGS:
        flag_value = getattr(args, _attr(s), None) if args is not None else None
        if flag_value is not None:
            where, text = s.flag, flag_value
        elif s.env in env:
            where, text = s.env, env[s.env]
        else:
            values[_attr(s)] = s.default
            continue
        try:
            values[_attr(s)] = _parse(s, text)
        except SettingsError as exc:
            raise SettingsError(str(exc).format(where=where)) from None
    settings = RunSettings(**{f.name: values[f.name] for f in fields(RunSettings)})
    _check_relations(settings)
    if not settings.identity:
        settings = replace(settings, identity=os.uname().nodename)
    if not settings.namespace:
        settings = replace(settings, namespace=_service_account_namespace() or "default")
    return settings


def _check_relations(s: RunSettings) -> None:
    if not s.retry_period < s.renew_deadline < s.lease_duration:
        raise SettingsError(
            f"RETRY_PERIOD ({format_duration(s.retry_period)}) < RENEW_DEADLINE ({format_duration(s.renew_deadline)}) "
            f"< LEASE_DURATION ({format_duration(s.lease_duration)}) must hold"
        )


def concerns(s: RunSettings) -> list[str]:
    """Settings that are allowed but probably not meant: ``ehc run`` logs each at start."""
    out = []
    if s.timeout >= s.interval:
        out.append(
            f"HEALTH_CHECK_TIMEOUT ({format_duration(s.timeout)}) is not shorter than HEALTH_CHECK_INTERVAL "
            f"({format_duration(s.interval)}): a silent target's attempts overlap, and a dead endpoint is "
            "found no sooner than one timeout after it went quiet"
        )
    if s.node_witness != "off" and not s.node_evidence:
        out.append(
            f"EHC_NODE_WITNESS is {s.node_witness} but EHC_NODE_EVIDENCE is 0: without node evidence "
            "there is no node to witness, so no witness is checked"
        )
    if s.second_opinion and s.peer_address and not s.hot_standby:
        out.append(
            "EHC_SECOND_OPINION is on but EHC_HOT_STANDBY is false: standbys probe nothing, so they have no "
            "opinion to give and every ejection goes ahead on the leader's word alone"
        )
    if s.interval > 10:
        out.append(
            f"HEALTH_CHECK_INTERVAL is {format_duration(s.interval)}: a dead endpoint may keep its traffic "
            "that long before ehc even looks (Kubernetes alone takes 40-50s)"
        )
    return out


def advertised_peer_address(s: RunSettings) -> str:
    """Where peers reach this replica (``POD_IP:port``, or the peer address's own host), or "" when
    it has none to give: then it keeps no member Lease."""
    if not s.peer_address:
        return ""
    host, port = parse_address(s.peer_address)
    host = s.pod_ip or (host if host not in (None, "0.0.0.0", "::") else "")
    if not host:
        return ""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_address(text: str) -> tuple[str | None, int]:
    """``HOST:PORT``, ``[IPv6]:PORT`` or ``:PORT`` (every address) → (host or None, port).

    Raises ValueError when the form or the port (1-65535) is wrong."""
    host, sep, port = text.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise ValueError(f"bad address {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"an IPv6 host needs brackets: {text!r}")
    return host or None, int(port)


def _service_account_namespace() -> str:
    try:
        with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as f:
            return f.read().strip()
    except OSError:
        return ""
