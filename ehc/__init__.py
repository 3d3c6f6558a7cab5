"""ehc: the endpoint health checker.

Data flows one way: watch → targets → workers (probes) → transitions → decisions → patches.
"""

__version__ = "0.1.0"
