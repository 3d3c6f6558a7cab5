"""A simulated Kubernetes cluster for tests, benchmarks and the demo: an API server that speaks the real
protocol and fake nodes whose pods really answer on loopback addresses. See ``SimCluster``."""

from ehc.sim.cluster import SimCluster
from ehc.sim.fleet import Fleet, FleetSpec, SimExternal, SimPod, Unsupported
from ehc.sim.slicectl import SliceController

__all__ = ["Fleet", "FleetSpec", "SimCluster", "SimExternal", "SimPod", "SliceController", "Unsupported"]
