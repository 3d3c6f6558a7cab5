"""Probe kind → the Prober that runs it: the only place that lists the kinds a worker can probe.

The keys are the tags of ``ehc.wire.checks.Check``; a test keeps the two in step.
"""

from __future__ import annotations

from ehc.probe import Prober
from ehc.probe.grpc import GrpcProber
from ehc.probe.http import HttpProber
from ehc.probe.icmp import IcmpPinger
from ehc.probe.tcp import TcpProber

PROBERS: dict[str, type[Prober]] = {
    "tcp": TcpProber,
    "icmp": IcmpPinger,
    "http": HttpProber,
    "grpc": GrpcProber,
}
