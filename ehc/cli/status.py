"""``ehc status``: what a running ehc thinks, and why, as kubectl-style tables (``/status.json``).

Exit status: 0 when no target is unhealthy, 1 when some is (ejected, or its ejection held), 2 when
ehc cannot be reached or does not answer as ehc does.
"""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import TextIO

import msgspec

from ehc.coordinator.status import Status, clock

DEFAULT_URL = "http://127.0.0.1:9090"
HINT = (
    "is ehc running, and is its metrics port reachable from here? In a cluster, forward it first: "
    "kubectl -n endpoint-health-checker port-forward deploy/endpoint-health-checker 9090 "
    "(that reaches one replica: a standby names the leader, whose pod to forward instead); or pass --url"
)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "status",
        help="what a running ehc thinks, and why (its /status.json)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--url", default=DEFAULT_URL, help=f"ehc's metrics address (default {DEFAULT_URL})")
    p.add_argument(
        "--namespace", "-n", default="", help="only targets, transitions and writes of this namespace"
    )
    p.add_argument("--unhealthy", action="store_true", help="print only the targets that are not healthy")
    p.add_argument(
        "-o", "--output", choices=("wide", "json"), help="wide: every column and section; json: as served"
    )
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for an answer (default 5)")
    p.set_defaults(func=run)


def fetch(url: str, namespace: str, timeout: float) -> bytes:
    """``/status.json`` of the ehc at ``url``; raises OSError (or HTTPError) when it does not answer."""
    query = urllib.parse.urlencode({"namespace": namespace} if namespace else {})
    with urllib.request.urlopen(
        f"{url.rstrip('/')}/status.json{'?' + query if query else ''}", timeout=timeout
    ) as r:
        return r.read()


def run(args: argparse.Namespace, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    try:
        body = fetch(args.url, args.namespace, args.timeout)
    except urllib.error.HTTPError as exc:
        print(f"ehc status: {args.url} answered {exc.code} {exc.reason}: {exc.read()[:200]!r}", file=err)
        return 2
    except (OSError, ValueError) as exc:
        print(f"ehc status: cannot reach ehc at {args.url} ({getattr(exc, 'reason', exc)}); {HINT}", file=err)
        return 2
    try:
        status = msgspec.json.decode(body, type=Status)
    except msgspec.DecodeError as exc:
        print(f"ehc status: {args.url}/status.json is not ehc's status ({exc}); {HINT}", file=err)
        return 2
    if args.output == "json":
        out.write(body.decode() + "\n")
    else:
        out.write(render(status, wide=args.output == "wide", only_targets=args.unhealthy))
    return 1 if any(r.state in ("unhealthy", "held") for r in status.not_healthy) else 0


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns as kubectl prints them: upper-case headers, left-aligned, three spaces apart."""
    cells = [[str(h).upper() for h in headers], *([str(c) for c in r] for r in rows)]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "".join(
        "   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() + "\n" for r in cells
    )


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    return f"{seconds:.1f}s" if seconds < 120 else f"{seconds / 60:.0f}m"


def render(s: Status, *, wide: bool = False, only_targets: bool = False) -> str:
    parts = [] if only_targets else [_summary(s)]
    if s.not_healthy or only_targets:
        headers = ["state", "object", "node", "evidence", "since", "write"]
        if wide:
            headers[3:3] = ["checks", "shows"]
        rows = []
        for r in s.not_healthy:
            e = r.evidence
            evidence = (
                ""
                if e is None
                else e.detail
                if e.node_verdict
                else f"{e.detail} after {e.attempts} attempt(s)"
            )
            row = [
                r.state,
                r.object,
                r.node,
                "; ".join(x for x in (evidence, r.why) if x) or "-",
                clock(r.since) or "-",
                r.write or "-",
            ]
            if wide:
                row[3:3] = [r.address, r.shows]
            rows.append(row)
        parts.append(table(headers, rows) if rows else "No target is unhealthy or suspect.\n")
        if s.not_healthy_total > len(s.not_healthy):
            parts.append(f"({s.not_healthy_total - len(s.not_healthy)} more not listed)\n")
    if only_targets:
        return "\n".join(parts)
    nodes = s.nodes if wide else [n for n in s.nodes if n.unhealthy or n.suspect or n.verdict]
    if nodes:
        rows = [
            [
                n.name or "(none)",
                n.targets,
                n.healthy,
                n.suspect,
                n.unhealthy,
                n.verdict or "-",
                _ago(n.heard_ago),
            ]
            for n in nodes
        ]
        parts.append(
            table(["node", "targets", "healthy", "suspect", "unhealthy", "verdict", "last answer"], rows)
        )
    if wide:
        rows = [
            [
                w.index,
                w.pid,
                "up" if w.up else "DOWN",
                w.targets,
                f"{w.probes_per_second:.0f}",
                f"{w.lag_p99 * 1000:.1f}ms",
                w.restarts,
            ]
            for w in s.workers
        ]
        parts.append(table(["worker", "pid", "state", "targets", "probes/s", "lag p99", "restarts"], rows))
        q = s.queue
        if q.waiting:
            rows = [[w.key, w.summary, _ago(w.age), w.attempts, w.error or "-"] for w in q.waiting]
            parts.append(table(["waiting write", "write", "age", "attempts", "last error"], rows))
        rows = [[clock(t.at), t.key, t.health, t.detail or "-", f"{t.took:.2f}s"] for t in s.transitions[:20]]
        if rows:
            parts.append(table(["at", "transition", "health", "detail", "detected in"], rows))
        rows = [[clock(w.at), w.key, w.summary, w.outcome] for w in s.writes[:20]]
        if rows:
            parts.append(table(["at", "write", "what", "outcome"], rows))
    return "\n".join(parts)


def _summary(s: Status) -> str:
    r, f, t = s.role, s.failsafe, s.targets
    if r.leading:
        role = f"leading since {clock(r.term_started)} UTC" if r.term_started else "leading"
    else:
        role = f"standing by ({'hot' if r.hot_standby else 'idle'}), leader {r.leader or 'nobody'}"
    failsafe = (
        f"ENGAGED: {f.held} ejection(s) held" if f.engaged else "off"
    ) + f" ({f.dark}/{f.total} dark, {f.share:.1%}; engages above {f.threshold:.0%})"
    lines = [
        f"REPLICA     {r.identity}: {role}, {'ready' if r.ready else 'NOT READY'}, {len(r.peers)} peer(s)",
        f"FAIL-SAFE   {failsafe}",
        f"TARGETS     {t.total}: {t.healthy} healthy, {t.suspect} suspect, {t.unhealthy} unhealthy, "
        f"{t.unknown} not yet probed",
        f"WRITES      {s.queue.queued} waiting{', FAILING IN A ROW' if s.queue.outage else ''}",
    ]
    if s.workers_unanswered:
        lines.append(f"WORKERS     {', '.join(map(str, s.workers_unanswered))} did not answer")
    return "\n".join(lines) + "\n"
