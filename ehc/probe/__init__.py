"""Probes: one non-blocking attempt against one endpoint, reported through a callback.

Probes are callback-based (no task or future per attempt) so thousands can be in flight per worker
at the cost of a socket and a loop timer each.  Every probe reports ``done(outcome, latency, detail)``
exactly once, where ``outcome`` is one of the constants below.
"""

from collections.abc import Callable

OK = 0
"""The endpoint answered."""
FAIL = 1
"""The endpoint did not answer (refused, unreachable, timed out): evidence against it."""
LOCAL_ERROR = 2
"""The probe could not be made (no file descriptors, no ephemeral port, no ICMP socket...).

This says nothing about the endpoint, so it never counts towards flipping a target."""

Done = Callable[[int, float, str], None]
"""``done(outcome, latency_seconds, detail)``; detail is "" on success, else a short reason."""
