"""The simulated fleet: K nodes × M pods with a realistic mix of opt-in styles and probe specs, real
addresses whose probe ports accept TCP, and per-node / per-pod failure injection.

Addressing: node ``i`` owns the /22 ``127.64.0.0 + 1024·i`` (up to 4096 nodes of 1021 pods; 20,000
pods over 50 nodes fit easily) and, for IPv6 pods, the /64 ``fd00:e4c:0:i::``. Inside the fleet's own
network namespace the whole ``fd00:e4c::/48`` is routed locally, so every pod address answers ICMP from
the kernel and one dual-stack wildcard listener per port number serves all pods; nftables rules there
make nodes and pods fail. Without root there is no namespace: pods get per-address listeners in the
current namespace, IPv6 pods become IPv4, and the only injectable failure is a closed listener.

Services: each workload (the pods of one template in one namespace) has a Service selecting them by
``app``, whose EndpointSlices the slice controller stand-in (``ehc.sim.slicectl``) keeps. External
backends (``FleetSpec.external_per_node``) are addresses from the top of each node's /22, answering
TCP on their port like pods do and failing with their node, published by selectorless Services: half
the groups as EndpointSlices of a third party, half as legacy Endpoints objects, each group ("database
cluster") holding addresses from up to 20 nodes, so one object can have some addresses on a dead node
and some alive.

Application health: when the fleet has pods annotated ``endpoint-health-checker.io/probe: readiness``
(``FleetSpec.readiness_every``), a second process (``ehc.sim.appserver``) serves the HTTP and gRPC probe
ports (8080 and 9100, 9090) of every pod with real servers (aiohttp; grpcio's health servicer), and
``Fleet.set_app_health`` makes one pod's application unhealthy (HTTP 503, gRPC NOT_SERVING) while its
ports keep accepting connections. Without such pods those ports are plain TCP listeners, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import math
import os
import random
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ehc.kube.model import ANNOTATION, GATE, PROBE_ANNOTATION
from ehc.sim import netns as netns_mod
from ehc.sim.apiserver import ApiServer
from ehc.sim.nft import Nft
from ehc.sim.slicectl import MANAGED_BY, SERVICE_NAME
from ehc.sim.store import now_rfc3339

log = logging.getLogger(__name__)

POD_NET4 = "127.64.0.0/10"
POD_NET6 = "fd00:e4c::/48"
BLOCK = 1024
_BASE4 = int(ipaddress.IPv4Address("127.64.0.0"))
_BASE6 = int(ipaddress.IPv6Address("fd00:e4c::"))
STYLES = ("annotation", "gate", "none", "annotation-off")


class Unsupported(RuntimeError):
    """A failure this environment cannot inject (e.g. packet loss without root)."""


def _probe(kind: dict[str, Any]) -> dict[str, Any]:
    return {**kind, "periodSeconds": 10, "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3}


# name -> (containers, probe ports ehc should resolve). Ports by number and by name, several per pod.
TEMPLATES: dict[str, tuple[list[dict[str, Any]], tuple[int, ...]]] = {
    "tcp-number": (
        [
            {
                "name": "app",
                "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                "readinessProbe": _probe({"tcpSocket": {"port": 8080}}),
            }
        ],
        (8080,),
    ),
    "tcp-named": (
        [
            {
                "name": "db",
                "ports": [{"name": "postgres", "containerPort": 5432, "protocol": "TCP"}],
                "readinessProbe": _probe({"tcpSocket": {"port": "postgres"}}),
            }
        ],
        (5432,),
    ),
    "http": (
        [
            {
                "name": "web",
                "ports": [
                    {"name": "http", "containerPort": 8080, "protocol": "TCP"},
                    {"name": "metrics", "containerPort": 9100, "protocol": "TCP"},
                ],
                "readinessProbe": _probe({"httpGet": {"path": "/healthz", "port": "http", "scheme": "HTTP"}}),
                "livenessProbe": _probe({"httpGet": {"path": "/metrics", "port": 9100, "scheme": "HTTP"}}),
            }
        ],
        (8080, 9100),
    ),
    "grpc": (
        [
            {
                "name": "api",
                "ports": [{"name": "grpc", "containerPort": 9090, "protocol": "TCP"}],
                "readinessProbe": _probe({"grpc": {"port": 9090}}),
            }
        ],
        (9090,),
    ),
    "icmp": ([{"name": "worker"}], ()),
    "sidecar": (
        [
            {
                "name": "app",
                "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                "readinessProbe": _probe({"tcpSocket": {"port": 8080}}),
            },
            {
                "name": "proxy",
                "ports": [{"name": "admin", "containerPort": 15000, "protocol": "TCP"}],
                "livenessProbe": _probe({"tcpSocket": {"port": "admin"}}),
            },
        ],
        (8080, 15000),
    ),
}
PROBE_PORTS = tuple(sorted({p for _, ports in TEMPLATES.values() for p in ports}))


def _ports_of(kind: str) -> tuple[int, ...]:
    """The port numbers the templates' probes of ``kind`` (httpGet, grpc) use, named ports resolved."""
    found: set[int] = set()
    for containers, _ in TEMPLATES.values():
        for c in containers:
            named = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
            for probe in ("readinessProbe", "livenessProbe"):
                port = c.get(probe, {}).get(kind, {}).get("port")
                if port is not None:
                    found.add(named[port] if isinstance(port, str) else port)
    return tuple(sorted(found))


HTTP_PORTS = _ports_of("httpGet")
"""Ports the application process serves with HTTP (every pod's, when it runs)."""
GRPC_PORTS = _ports_of("grpc")
"""Ports the application process serves with gRPC health."""
APP_PORTS = frozenset(HTTP_PORTS + GRPC_PORTS)

EXTERNAL_SLICE_PORT = ("postgres", 5432)  # what external backends published as EndpointSlices serve
EXTERNAL_ENDPOINTS_PORT = ("redis", 6379)  # and those published as legacy Endpoints
EXTERNAL_PORTS = (EXTERNAL_SLICE_PORT[1], EXTERNAL_ENDPOINTS_PORT[1])
EXTERNAL_GROUP = 20  # addresses per selectorless Service at most
EXTERNAL_MANAGER = "example.com/db-operator"  # managed-by of the external backends' slices
ENABLED_LABEL = ANNOTATION  # as a label, it opts an EndpointSlice or Endpoints object in
SKIP_MIRROR = "endpointslice.kubernetes.io/skip-mirror"


@dataclass
class FleetSpec:
    """What to build. Weights pick each pod's opt-in style and probe template (deterministic by seed)."""

    nodes: int = 3
    pods_per_node: int = 10
    namespaces: tuple[str, ...] = ("default", "shop", "batch")
    styles: dict[str, int] = field(
        default_factory=lambda: {"annotation": 4, "gate": 3, "none": 2, "annotation-off": 1}
    )
    templates: dict[str, int] = field(
        default_factory=lambda: {
            "tcp-number": 3,
            "tcp-named": 2,
            "http": 2,
            "grpc": 1,
            "icmp": 1,
            "sidecar": 1,
        }
    )
    ipv6_every: int = 25  # every Nth pod is single-stack IPv6 (0: none)
    seed: int = 1
    # Every Nth opted-in pod carries endpoint-health-checker.io/probe: readiness (0: none), and then
    # the fleet's HTTP and gRPC ports answer with real servers (see the module docstring).
    readiness_every: int = 0
    # Serve HTTP and gRPC even without readiness-mode pods (e.g. for ehc's default probe set to
    # readiness); None: only when there are some. Costs a process and, for clients that close
    # connections normally instead of resetting them, the servers' CPU on every TCP probe.
    app_servers: bool | None = None
    # A Service with a selector for each workload, so a slice controller derives their EndpointSlices
    # (SimCluster runs the stand-in); costs a slice write for each pod write that changes readiness.
    services: bool = True
    # Addresses per node for external backends behind selectorless Services (see the module docstring).
    external_per_node: int = 0


@dataclass
class SimPod:
    """A pod as the fleet sees it: where it lives and what ehc should probe."""

    name: str
    namespace: str
    node: str
    node_index: int
    ip: str
    style: str  # annotation | gate | none | annotation-off
    template: str
    ports: tuple[int, ...]  # resolved probe ports; empty -> ICMP
    probe: str = ""  # its endpoint-health-checker.io/probe annotation ("readiness"); "": none (ehc's default)

    @property
    def opted_in(self) -> bool:
        return self.style in ("annotation", "gate")

    @property
    def readiness(self) -> bool:
        """Whether ehc should check it the way its readiness probe declares (HTTP GET, gRPC, TCP)."""
        return self.probe == "readiness"

    @property
    def app_checked(self) -> bool:
        """Whether its own kubelet's readiness probe asks the application (httpGet or grpc), so that an
        unhealthy application makes it unready although its ports accept connections."""
        return any(
            "httpGet" in probe or "grpc" in probe
            for c in TEMPLATES[self.template][0]
            if (probe := c.get("readinessProbe"))
        )

    @property
    def ipv6(self) -> bool:
        return ":" in self.ip

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)


@dataclass(frozen=True)
class SimExternal:
    """One address of an external backend: which object publishes it, where it lives, what it serves."""

    kind: str  # "EndpointSlice" | "Endpoints"
    namespace: str
    name: str  # of the EndpointSlice or Endpoints object
    service: str  # the selectorless Service it backs
    ip: str
    node: str
    node_index: int
    port: int


def node_name(i: int) -> str:
    return f"sim-node-{i:03d}"


def node_cidrs(i: int) -> list[str]:
    """The prefixes node ``i`` owns (IPv4 /22 and IPv6 /64)."""
    v4 = ipaddress.IPv4Address(_BASE4 + i * BLOCK)
    v6 = ipaddress.IPv6Address(_BASE6 + (i << 64))
    return [f"{v4}/22", f"{v6}/64"]


def host_ip(i: int) -> str:
    return str(ipaddress.IPv4Address(_BASE4 + i * BLOCK + 1))


def build_pods(spec: FleetSpec, ipv6: bool = True) -> list[SimPod]:
    """The pods of ``spec``, deterministic for a given seed."""
    if spec.pods_per_node + spec.external_per_node > BLOCK - 3:
        raise ValueError(f"at most {BLOCK - 3} pods and external addresses per node")
    if spec.nodes > 4096:
        raise ValueError("at most 4096 nodes")
    rng = random.Random(spec.seed)
    styles, sw = list(spec.styles), list(spec.styles.values())
    temps, tw = list(spec.templates), list(spec.templates.values())
    pods = []
    k = opted = 0
    for i in range(spec.nodes):
        for j in range(spec.pods_per_node):
            template = rng.choices(temps, tw)[0]
            style = rng.choices(styles, sw)[0]
            if ipv6 and spec.ipv6_every and k % spec.ipv6_every == spec.ipv6_every - 1:
                ip = str(ipaddress.IPv6Address(_BASE6 + (i << 64) + j + 2))
            else:
                ip = str(ipaddress.IPv4Address(_BASE4 + i * BLOCK + j + 2))
            ns = spec.namespaces[k % len(spec.namespaces)]
            probe = ""
            if style in ("annotation", "gate"):
                if spec.readiness_every and opted % spec.readiness_every == spec.readiness_every - 1:
                    probe = "readiness"
                opted += 1
            pods.append(
                SimPod(
                    f"{template}-{i:03d}-{j:04d}",
                    ns,
                    node_name(i),
                    i,
                    ip,
                    style,
                    template,
                    TEMPLATES[template][1],
                    probe,
                )
            )
            k += 1
    return pods


def build_externals(spec: FleetSpec) -> list[SimExternal]:
    """The external backends of ``spec``: addresses taken one round over the nodes after another and
    cut into groups of at most ``EXTERNAL_GROUP`` (at least two groups when there are two addresses,
    so both kinds exist); even groups are published as EndpointSlices, odd ones as Endpoints."""
    rounds = [(e, i) for e in range(spec.external_per_node) for i in range(spec.nodes)]
    size = max(1, min(EXTERNAL_GROUP, math.ceil(len(rounds) / 2)))
    out = []
    for g, start in enumerate(range(0, len(rounds), size)):
        as_slice = g % 2 == 0
        service = f"{'pg' if as_slice else 'redis'}-{g:03d}"
        kind, name = ("EndpointSlice", f"{service}-1") if as_slice else ("Endpoints", service)
        port = (EXTERNAL_SLICE_PORT if as_slice else EXTERNAL_ENDPOINTS_PORT)[1]
        ns = spec.namespaces[g % len(spec.namespaces)]
        for e, i in rounds[start : start + size]:
            ip = str(ipaddress.IPv4Address(_BASE4 + i * BLOCK + BLOCK - 2 - e))
            out.append(SimExternal(kind, ns, name, service, ip, node_name(i), i, port))
    return out


def external_manifests(externals: list[SimExternal]) -> list[tuple[str, dict[str, Any]]]:
    """("services" | "endpointslices" | "endpoints", object) for each group of external backends: its
    selectorless Service and the EndpointSlice or Endpoints object publishing its addresses."""
    groups: dict[tuple[str, str, str], list[SimExternal]] = {}
    for x in externals:
        groups.setdefault((x.kind, x.namespace, x.name), []).append(x)
    out: list[tuple[str, dict[str, Any]]] = []
    for (kind, ns, name), members in groups.items():
        service = members[0].service
        pname, port = EXTERNAL_SLICE_PORT if kind == "EndpointSlice" else EXTERNAL_ENDPOINTS_PORT
        svc_meta = {"name": service, "namespace": ns, "labels": {"app.kubernetes.io/name": pname}}
        svc_ports = [{"name": pname, "port": port, "targetPort": port, "protocol": "TCP"}]
        out.append(("services", {"metadata": svc_meta, "spec": {"ports": svc_ports}}))
        ports = [{"name": pname, "port": port, "protocol": "TCP"}]
        meta: dict[str, Any] = {"name": name, "namespace": ns, "labels": {ENABLED_LABEL: "true"}}
        if kind == "EndpointSlice":
            meta["labels"].update({SERVICE_NAME: service, MANAGED_BY: EXTERNAL_MANAGER})
            endpoints = [
                {
                    "addresses": [x.ip],
                    "conditions": {"ready": True, "serving": True, "terminating": False},
                    "nodeName": x.node,
                }
                for x in members
            ]
            out.append(
                (
                    "endpointslices",
                    {"metadata": meta, "addressType": "IPv4", "endpoints": endpoints, "ports": ports},
                )
            )
        else:
            meta["labels"][SKIP_MIRROR] = "true"
            addresses = [{"ip": x.ip, "nodeName": x.node} for x in members]
            out.append(
                ("endpoints", {"metadata": meta, "subsets": [{"addresses": addresses, "ports": ports}]})
            )
    return out


def workload_services(pods: list[SimPod]) -> list[dict[str, Any]]:
    """A Service for each workload (namespace × template) selecting its pods by ``app``: the template's
    container ports, named ones targeted by name; headless without ports, as a Service must be."""
    out = []
    for ns, template in dict.fromkeys((p.namespace, p.template) for p in pods):
        ports = [
            {
                "name": cp.get("name") or f"port-{cp['containerPort']}",
                "port": cp["containerPort"],
                "targetPort": cp.get("name") or cp["containerPort"],
                "protocol": cp.get("protocol", "TCP"),
            }
            for c in TEMPLATES[template][0]
            for cp in c.get("ports", [])
        ]
        spec: dict[str, Any] = {"selector": {"app": template}, "ports": ports, "type": "ClusterIP"}
        if not ports:
            spec["clusterIP"] = "None"
        out.append(
            {"metadata": {"name": template, "namespace": ns, "labels": {"app": template}}, "spec": spec}
        )
    return out


def _container(c: dict[str, Any], pod: SimPod) -> dict[str, Any]:
    """A template container for ``pod``; its grpc probes ask for the service named after the pod, which
    is how the application process tells the pods it serves on one wildcard port apart."""
    out = {**c, "image": "registry.k8s.io/pause:3.9", "imagePullPolicy": "IfNotPresent"}
    for kind in ("readinessProbe", "livenessProbe"):
        probe = c.get(kind)
        if probe and "grpc" in probe:
            out[kind] = {**probe, "grpc": {**probe["grpc"], "service": pod.name}}
    return out


def pod_manifest(pod: SimPod) -> dict[str, Any]:
    """The Pod object the API server stores for ``pod``: Running, with IPs and conditions; Ready,
    except a gate pod, which waits for its gate condition."""
    ts = now_rfc3339()
    containers = [_container(c, pod) for c in TEMPLATES[pod.template][0]]
    annotations: dict[str, str] = {}
    if pod.style == "annotation":
        annotations[ANNOTATION] = "true"
    elif pod.style == "annotation-off":
        annotations[ANNOTATION] = "false"
    if pod.probe:
        annotations[PROBE_ANNOTATION] = pod.probe
    spec: dict[str, Any] = {"nodeName": pod.node, "containers": containers, "restartPolicy": "Always"}
    conditions = [
        {
            "type": "PodReadyToStartContainers",
            "status": "True",
            "lastProbeTime": None,
            "lastTransitionTime": ts,
        },
        {"type": "Initialized", "status": "True", "lastProbeTime": None, "lastTransitionTime": ts},
        {"type": "Ready", "status": "True", "lastProbeTime": None, "lastTransitionTime": ts},
        {"type": "ContainersReady", "status": "True", "lastProbeTime": None, "lastTransitionTime": ts},
        {"type": "PodScheduled", "status": "True", "lastProbeTime": None, "lastTransitionTime": ts},
    ]
    if pod.style == "gate":
        # As a real kubelet reports a new pod whose gate nobody has set yet: no gate condition, and
        # Ready False until the gate is True (the kubelet stand-in sets Ready then).
        spec["readinessGates"] = [{"conditionType": GATE}]
        ready = conditions[2]
        ready.update(status="False", reason="ReadinessGatesNotReady",
                     message=f'corresponding condition of pod readiness gate "{GATE}" does not exist.')  # fmt: skip
    meta: dict[str, Any] = {
        "name": pod.name,
        "namespace": pod.namespace,
        "labels": {"app": pod.template, "ehc-sim/node": pod.node, "ehc-sim/style": pod.style},
    }
    if annotations:
        meta["annotations"] = annotations
    return {
        "metadata": meta,
        "spec": spec,
        "status": {
            "phase": "Running",
            "conditions": conditions,
            "hostIP": host_ip(pod.node_index),
            "hostIPs": [{"ip": host_ip(pod.node_index)}],
            "podIP": pod.ip,
            "podIPs": [{"ip": pod.ip}],
            "startTime": ts,
            "qosClass": "BestEffort",
            "containerStatuses": [
                {
                    "name": c["name"],
                    "ready": True,
                    "started": True,
                    "restartCount": 0,
                    "image": c["image"],
                    "imageID": "",
                    "containerID": f"containerd://{pod.name}-{c['name']}",
                    "state": {"running": {"startedAt": ts}},
                }
                for c in containers
            ],
        },
    }


def node_manifest(i: int) -> dict[str, Any]:
    ts = now_rfc3339()
    return {
        "metadata": {"name": node_name(i), "labels": {"kubernetes.io/hostname": node_name(i)}},
        "spec": {},
        "status": {
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "lastHeartbeatTime": ts,
                    "lastTransitionTime": ts,
                    "reason": "KubeletReady",
                }
            ],
            "addresses": [
                {"type": "InternalIP", "address": host_ip(i)},
                {"type": "Hostname", "address": node_name(i)},
            ],
            "nodeInfo": {
                "kubeletVersion": "v1.31.0-ehc-sim",
                "architecture": "amd64",
                "operatingSystem": "linux",
            },
        },
    }


PodRef = SimPod | str | tuple[str, str]


class Fleet:
    """Owns the fleet's pods in the API server, the listener and application processes and the failure
    rules."""

    def __init__(self, api: ApiServer, spec: FleetSpec, netns: str | None, listeners: bool = True) -> None:
        self.api = api
        self.spec = spec
        self.netns = netns
        self.listeners = listeners
        self.pods = build_pods(spec, ipv6=netns is not None)
        self._externals = build_externals(spec)
        self.nodes = [node_name(i) for i in range(spec.nodes)]
        self._by_key = {p.key: p for p in self.pods}
        self._by_name: dict[str, SimPod] = {}
        for p in self.pods:
            self._by_name.setdefault(p.name, p)
        self._nft: Nft | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._app: subprocess.Popen[bytes] | None = None
        wanted = spec.app_servers
        self.app_servers = listeners and (any(p.readiness for p in self.pods) if wanted is None else wanted)
        """Whether the HTTP and gRPC ports are served by real servers (the application process)."""
        self.down_nodes: set[str] = set()
        self.down_pods: set[tuple[str, str]] = set()
        self.closed_ports: set[tuple[tuple[str, str], int]] = set()
        self.loss: dict[str | None, int] = {}
        self.sick_pods: set[tuple[str, str]] = set()  # applications answering 503 / NOT_SERVING
        self.cuts: set[tuple[int, str]] = set()  # (gid, node) paths cut by Fleet.cut

    @property
    def capabilities(self) -> frozenset[str]:
        """What can be injected here: drop (timeouts), reject (refused), loss, cut (one vantage's path to
        a node), close (listener closed), app (application unhealthy behind open ports)."""
        app = {"app"} if self.app_servers else set()
        if self.netns is not None:
            return frozenset({"drop", "reject", "loss", "cut", *app})
        return frozenset({"close", *app})

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        for i in range(self.spec.nodes):
            self.api.nodes.create(node_manifest(i), actor="sim")
        for p in self.pods:
            self.api.create_pod(pod_manifest(p))
        # After the pods, so a slice controller builds each Service's slices in one go.
        objects = [("services", svc) for svc in workload_services(self.pods)] if self.spec.services else []
        objects += external_manifests(self._externals)
        cols = {"services": self.api.services, "endpointslices": self.api.endpointslices,
                "endpoints": self.api.endpoints}  # fmt: skip
        for plural, obj in objects:
            self.api.ensure_namespace(obj["metadata"]["namespace"])
            cols[plural].create(obj, actor="sim")
        if self.netns is not None:
            subprocess.run(
                ["ip", "-n", self.netns, "-6", "route", "add", "local", POD_NET6, "dev", "lo"],
                check=True, capture_output=True,
            )  # fmt: skip
            self._nft = Nft(self.netns, POD_NET4, POD_NET6)
            self._nft.setup()
        elif self.listeners:
            log.warning(
                "ehc sim: no network namespace (not root or nft/ip missing): pods listen on per-address "
                "sockets in this namespace; power-off and closed ports both close listeners (connects are "
                "refused, never time out), pings are always answered, and packet loss is unavailable"
                + (
                    "; closing a gRPC port restarts the gRPC server on the others (their connections drop)"
                    if self.app_servers
                    else ""
                )
            )
        if self.listeners:
            await asyncio.to_thread(self._start_listener)

    def _start_listener(self) -> None:
        """Start the listener process and, when wanted, the application process (both at once: the
        latter takes a moment to import its servers), and make every pod port answer."""
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
        prefix = netns_mod.exec_prefix(self.netns) if self.netns is not None else []
        cmd = [*prefix, sys.executable, "-m", "ehc.sim.listener"]
        tcp_ports = sorted(
            {p for p in PROBE_PORTS if not (self.app_servers and p in APP_PORTS)}
            | {x.port for x in self._externals}
        )
        if self.netns is not None and tcp_ports:
            cmd += ["--wildcard", ",".join(map(str, tcp_ports))]
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        if self.app_servers:
            app = [*prefix, sys.executable, "-m", "ehc.sim.appserver"]
            app += ["--http", ",".join(map(str, HTTP_PORTS)), "--grpc", ",".join(map(str, GRPC_PORTS))]
            if self.netns is not None:
                app.append("--wildcard")
            self._app = subprocess.Popen(app, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        for proc, what in ((self._proc, "listener"), (self._app, "application")):
            if proc is not None and _reply(proc) != b"ready":
                raise RuntimeError(f"{what} process failed to start")
        if self._app is not None:  # every gRPC service SERVING, as a started application reports
            grpc_pods = [p for p in self.pods if set(p.ports) & set(GRPC_PORTS)]
            self._app_health(True, grpc_pods)
        if self.netns is None:
            self._listener_cmd("open", [(p.ip, port) for p in self.pods for port in p.ports])
            self._listener_cmd("open", [(x.ip, x.port) for x in self._externals])

    def _listener_cmd(self, op: str, addrs: list[tuple[str, int]]) -> None:
        """Open or close per-address listeners (no namespace), each in the process serving its port."""
        if self._app is not None:
            _send(self._app, {"op": op, "addrs": [a for a in addrs if a[1] in APP_PORTS]})
            addrs = [a for a in addrs if a[1] not in APP_PORTS]
        if self._proc is not None and addrs:
            _send(self._proc, {"op": op, "addrs": addrs})

    def _app_health(self, healthy: bool, pods: list[SimPod]) -> None:
        if self._app is not None and pods:
            _send(self._app, {"op": "health", "healthy": healthy, "pods": [[p.ip, p.name] for p in pods]})

    async def stop(self) -> None:
        for attr in ("_app", "_proc"):
            proc = getattr(self, attr)
            if proc is None:
                continue
            setattr(self, attr, None)
            with contextlib.suppress(OSError):
                assert proc.stdin is not None
                proc.stdin.close()
            try:
                await asyncio.to_thread(proc.wait, 5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    # -- lookup -------------------------------------------------------------------------------
    def pod(self, ref: PodRef) -> SimPod:
        if isinstance(ref, SimPod):
            return ref
        if isinstance(ref, tuple):
            return self._by_key[ref]
        return self._by_name[ref]

    def pods_on(self, node: str) -> list[SimPod]:
        return [p for p in self.pods if p.node == node]

    def externals(self) -> list[SimExternal]:
        """Every external backend address (``FleetSpec.external_per_node``), grouped by object."""
        return list(self._externals)

    def externals_on(self, node: str) -> list[SimExternal]:
        return [x for x in self._externals if x.node == node]

    def targets(self) -> list[SimPod]:
        """The pods ehc should probe (opted in by annotation or readiness gate)."""
        return [p for p in self.pods if p.opted_in]

    def node_up(self, node: str) -> bool:
        return node not in self.down_nodes

    def pod_healthy(self, pod: dict[str, Any]) -> bool:
        """Whether the pod would pass its own kubelet's probes (node up, not off, no port closed, and an
        application that its readiness probe asks is healthy)."""
        key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
        sp = self._by_key.get(key)
        if sp is None:
            return True
        if sp.node in self.down_nodes or key in self.down_pods:
            return False
        if key in self.sick_pods and sp.app_checked:
            return False
        return not any((key, port) in self.closed_ports for port in sp.ports)

    # -- namespace helpers --------------------------------------------------------------------
    def netns_exec_prefix(self) -> list[str]:
        """Prefix to run a command where the pods are reachable (empty without a namespace)."""
        return netns_mod.exec_prefix(self.netns) if self.netns else []

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """Enter the fleet's namespace in the calling thread (no-op without one); not on an event loop
        thread. Child processes started inside the block (multiprocessing spawn too) live there."""
        if self.netns is None:
            yield
        else:
            with netns_mod.entered(self.netns):
                yield

    def socket(
        self, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM, proto: int = 0
    ) -> socket.socket:
        """A socket in the fleet's namespace, usable from any thread or event loop."""
        return netns_mod.socket_in(self.netns, family, type, proto)

    # -- failure injection --------------------------------------------------------------------
    def _need(self, what: str) -> Nft:
        if self._nft is None:
            raise Unsupported(
                f"{what} needs root and nftables (a private network namespace); not available here"
            )
        return self._nft

    def power_off(self, node: str) -> None:
        """Node loses power: every packet to its pods and external addresses is dropped silently
        (connects time out)."""
        self._node_index(node)
        self.down_nodes.add(node)
        if self._nft is not None:
            self._nft.drop(node_cidrs(self._node_index(node)), True)
        else:
            self._listener_cmd("close", [(p.ip, port) for p in self.pods_on(node) for port in p.ports])
            self._listener_cmd("close", [(x.ip, x.port) for x in self.externals_on(node)])

    def recover(self, node: str) -> None:
        """Power the node back on (ports closed per pod stay closed)."""
        self.down_nodes.discard(node)
        if self._nft is not None:
            self._nft.drop(node_cidrs(self._node_index(node)), False)
        else:
            self._listener_cmd(
                "open",
                [
                    (p.ip, port)
                    for p in self.pods_on(node)
                    if p.key not in self.down_pods
                    for port in p.ports
                    if (p.key, port) not in self.closed_ports
                ],
            )
            self._listener_cmd("open", [(x.ip, x.port) for x in self.externals_on(node)])

    def power_off_pod(self, ref: PodRef) -> None:
        """One pod goes silent (its address drops everything)."""
        p = self.pod(ref)
        self.down_pods.add(p.key)
        if self._nft is not None:
            self._nft.drop([p.ip], True)
        else:
            self._listener_cmd("close", [(p.ip, port) for port in p.ports])

    def recover_pod(self, ref: PodRef) -> None:
        p = self.pod(ref)
        self.down_pods.discard(p.key)
        if self._nft is not None:
            self._nft.drop([p.ip], False)
        elif p.node not in self.down_nodes:
            self._listener_cmd(
                "open", [(p.ip, port) for port in p.ports if (p.key, port) not in self.closed_ports]
            )

    def close_port(self, ref: PodRef, port: int) -> None:
        """The pod's port refuses connections at once (TCP reset)."""
        p = self.pod(ref)
        self.closed_ports.add((p.key, port))
        if self._nft is not None:
            self._nft.reject(p.ip, port, True)
        else:
            self._listener_cmd("close", [(p.ip, port)])

    def open_port(self, ref: PodRef, port: int) -> None:
        p = self.pod(ref)
        self.closed_ports.discard((p.key, port))
        if self._nft is not None:
            self._nft.reject(p.ip, port, False)
        elif p.node not in self.down_nodes and p.key not in self.down_pods:
            self._listener_cmd("open", [(p.ip, port)])

    def set_loss(self, percent: int, node: str | None = None) -> None:
        """Drop ``percent`` % of packets sent to pod addresses (of one node, or all); 0 clears."""
        nft = self._need("packet loss")
        self.loss[node] = percent
        nft.set_loss(percent, None if node is None else node_cidrs(self._node_index(node)))

    def cut(self, gid: int, node: str, on: bool = True) -> None:
        """The path from the processes of group ``gid`` (one checker replica's vantage) to ``node``
        breaks silently (packets dropped, connects time out); everyone else still reaches it.
        ``on=False`` mends it."""
        nft = self._need("cutting one vantage's path to a node")
        cidrs = node_cidrs(self._node_index(node))
        nft.cut(gid, cidrs, on)
        if on:
            self.cuts.add((gid, node))
        else:
            self.cuts.discard((gid, node))

    def set_app_health(self, ref: PodRef, healthy: bool) -> None:
        """The pod's application turns unhealthy (HTTP 503 on its HTTP ports, NOT_SERVING for its gRPC
        service) or healthy again; its ports accept connections either way, so TCP probes succeed."""
        if not self.app_servers:
            raise Unsupported(
                "application health needs the HTTP and gRPC servers, which run only for a fleet with "
                "readiness-mode pods (FleetSpec.readiness_every) or FleetSpec.app_servers=True"
            )
        p = self.pod(ref)
        if healthy:
            self.sick_pods.discard(p.key)
        else:
            self.sick_pods.add(p.key)
        self._app_health(healthy, [p])

    def set_latency(self, seconds: float, node: str | None = None) -> None:
        """Added latency needs the netem qdisc, which this kernel lacks."""
        raise Unsupported(
            "added latency needs the netem qdisc (sch_netem), which this kernel does not provide"
        )

    def reset(self) -> None:
        """Recover everything: nodes, pods, ports, loss, cuts, application health."""
        if self.sick_pods:
            self._app_health(True, [self._by_key[k] for k in self.sick_pods])
            self.sick_pods.clear()
        for node in list(self.down_nodes):
            self.recover(node)
        for key in list(self.down_pods):
            self.recover_pod(key)
        for key, port in list(self.closed_ports):
            self.open_port(key, port)
        if self._nft is not None:
            self._nft.reset()
        self.loss.clear()
        self.cuts.clear()

    def _node_index(self, node: str) -> int:
        try:
            return self.nodes.index(node)
        except ValueError:
            raise KeyError(f"no node {node!r}") from None


def _send(proc: subprocess.Popen[bytes], msg: dict[str, Any]) -> None:
    """One command to a helper process, waiting for its answer (so the change is in effect on return)."""
    if msg.get("addrs") == [] or msg.get("pods") == []:
        return
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(msg).encode() + b"\n")
    proc.stdin.flush()
    if _reply(proc) != b"ok":
        raise RuntimeError(f"sim helper process {proc.args!r} did not answer (exit status {proc.poll()})")


def _reply(proc: subprocess.Popen[bytes]) -> bytes:
    assert proc.stdout is not None
    return proc.stdout.readline().strip()
