"""``/status``: the status view as one self-contained HTML page.

No external assets, and usable without JavaScript (a form filters, a link refreshes).  With
JavaScript on, the page fetches itself every ``REFRESH`` seconds and swaps its content in place, so
the filter and the scroll position stay.  Every text that comes from the cluster is escaped.
"""

from __future__ import annotations

from html import escape
from urllib.parse import urlencode

from ehc.coordinator.status import STATES, Status, TargetRow, clock

REFRESH = 2.0

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1em 2em;color:#222}
h1{font-size:1.3em;margin:.2em 0}h2{font-size:1.1em;margin:1.2em 0 .3em}
table{border-collapse:collapse;margin:.2em 0}td,th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:left;
vertical-align:top}th{background:#f3f3f3;white-space:nowrap}td.n{text-align:right;font-variant-numeric:tabular-nums}
.bad{color:#b00;font-weight:600}.warn{color:#a60;font-weight:600}.ok{color:#070}.muted{color:#777}
.banner{padding:.4em .8em;margin:.5em 0;border-radius:4px}.banner.bad{background:#fdd}.banner.ok{background:#efe}
.banner.warn{background:#ffe9c7}form{margin:.5em 0}code{font-size:.95em}
"""

_SCRIPT = """
(function(){
  var box=document.getElementById('auto');box.hidden=false;
  function tick(){
    if(!document.getElementById('auto-on').checked)return;
    fetch(location.href,{cache:'no-store'}).then(function(r){return r.text()}).then(function(t){
      var doc=new DOMParser().parseFromString(t,'text/html');
      var fresh=doc.getElementById('content');
      if(fresh)document.getElementById('content').replaceWith(fresh);
      document.getElementById('stale').hidden=true;
    }).catch(function(){document.getElementById('stale').hidden=false});
  }
  setInterval(tick,INTERVAL);
})();
""".replace("INTERVAL", str(int(REFRESH * 1000)))


def esc(value: object) -> str:
    return escape(str(value), quote=True)


def ago(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _table(id_: str, headers: list[str], rows: list[list[str]], numeric: set[int] | None = None) -> str:
    """Cells are HTML already (escaped by the caller)."""
    numeric = numeric or set()
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(f'<td class="n">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(r))
        + "</tr>"
        for r in rows
    )
    return f'<table id="{id_}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _role(s: Status) -> str:
    r = s.role
    if r.leading:
        since = r.term_started
        term = f" since {clock(since)} UTC ({ago(s.at - since)})" if since is not None else ""
        line = f'<span class="ok">leading</span>{term}'
    else:
        kind = "hot (probing)" if r.hot_standby else "idle"
        line = (
            f'<span class="warn">standing by</span>, {kind}; the leader is <b>{esc(r.leader or "nobody")}</b>'
        )
    ready = '<span class="ok">ready</span>' if r.ready else '<span class="bad">not ready</span>'
    peers = ", ".join(esc(p) for p in r.peers) or "none"
    return f"<p><b>{esc(r.identity)}</b>: {line}. {ready}. Peers: {peers}.</p>"


def _failsafe(s: Status) -> str:
    f = s.failsafe
    share = f"{f.dark} of {f.total} targets unhealthy or suspect ({f.share:.1%}); it engages above {f.threshold:.0%}"
    if f.engaged:
        return (
            f'<p class="banner bad" id="failsafe">FAIL-SAFE ENGAGED: ehc is not ejecting ({f.held} ejection(s) held). '
            f"{share}: ehc's own network is the likelier fault.</p>"
        )
    exempt = f"; exempt below {f.min_targets} targets" if f.total < f.min_targets else ""
    return f'<p class="banner ok" id="failsafe">Fail-safe off: {share}{exempt}.</p>'


def _filters(s: Status) -> str:
    options = "".join(
        f'<option value="{v}"{" selected" if v == s.state else ""}>{esc(v or "all not healthy")}</option>'
        for v in ("", *STATES)
    )
    return (
        '<form method="get" action="status">Namespace <input name="namespace" value="'
        f'{esc(s.namespace)}" placeholder="all"> State <select name="state">{options}</select> '
        '<button type="submit">Filter</button> <a href="status">clear</a></form>'
    )


def _targets(s: Status) -> str:
    t = s.targets
    kinds = ", ".join(f"{esc(k)} {n}" for k, n in t.by_kind.items() if n) or "none"
    return (
        f"<p>{t.total} targets: <span class=ok>{t.healthy} healthy</span>, "
        f'<span class="warn">{t.suspect} suspect</span>, <span class="bad">{t.unhealthy} unhealthy</span>, '
        f"{t.unknown} not yet probed. By probe: {kinds}.</p>"
    )


def _workers(s: Status) -> str:
    if not s.workers:
        return '<p class="muted">No workers: this replica is not probing (an idle standby).</p>'
    rows = [
        [
            str(w.index),
            str(w.pid),
            '<span class="ok">up</span>' if w.up else '<span class="bad">down</span>',
            str(w.targets),
            f"{w.probes_per_second:.0f}",
            f"{w.lag_p99 * 1000:.1f} ms",
            str(w.restarts),
            str(w.stalls),
        ]
        for w in s.workers
    ]
    late = ""
    if s.workers_unanswered:
        late = f'<p class="bad">Worker(s) {", ".join(map(str, s.workers_unanswered))} did not answer the status question in time.</p>'
    table = _table(
        "workers",
        ["worker", "pid", "state", "targets", "probes/s", "lag p99", "restarts", "stalls"],
        rows,
        {3, 4, 5, 6, 7},
    )
    return table + late


def _nodes(s: Status) -> str:
    if not s.nodes:
        return '<p class="muted">No nodes known (no worker census).</p>'
    rows = []
    for n in s.nodes:
        verdict = {
            "down": f'<span class="bad">down</span> at {clock(n.verdict_at)}',
            "looking": '<span class="warn">silent: looking</span>',
        }.get(n.verdict, "")
        rows.append(
            [
                esc(n.name or "(no node)"),
                str(n.targets),
                str(n.healthy),
                f'<span class="warn">{n.suspect}</span>' if n.suspect else "0",
                f'<span class="bad">{n.unhealthy}</span>' if n.unhealthy else "0",
                str(n.unknown),
                verdict,
                ago(n.heard_ago),
            ]
        )
    more = (
        f"<p class=muted>{s.nodes_total - len(s.nodes)} more nodes, all healthy, not listed.</p>"
        if s.nodes_total > len(s.nodes)
        else ""
    )
    headers = ["node", "targets", "healthy", "suspect", "unhealthy", "unknown", "verdict", "last answer"]
    return _table("nodes", headers, rows, {1, 2, 3, 4, 5}) + more


def _evidence(r: TargetRow) -> str:
    e = r.evidence
    if e is None:
        return (
            '<span class="muted">none yet</span>'
            if r.state != "suspect"
            else '<span class="muted">confirming</span>'
        )
    which = f"{esc(e.check)}: " if "," in r.address else ""  # several checks: say which one failed
    tries = "" if e.node_verdict else f" after {e.attempts} attempt(s)"
    return f"{which}{esc(e.detail or 'failed')}{tries}; detected in {e.took:.2f} s"


def _not_healthy(s: Status) -> str:
    if not s.not_healthy:
        return '<p class="ok" id="none-unhealthy">Every target matching the filter is healthy.</p>'
    css = {"unhealthy": "bad", "held": "warn", "suspect": "warn"}
    rows = [
        [
            f'<span class="{css[r.state]}">{r.state}</span>'
            + (f'<br><span class="muted">{esc(r.why)}</span>' if r.why else ""),
            esc(r.object),
            esc(r.address),
            esc(r.node),
            _evidence(r),
            f"{clock(r.since)} ({ago(s.at - r.since)} ago)" if r.since is not None else "",
            esc(r.shows),
            esc(r.write),
        ]
        for r in s.not_healthy
    ]
    more = ""
    if s.not_healthy_total > len(s.not_healthy):
        more = f"<p>{s.not_healthy_total - len(s.not_healthy)} more not listed (limit {len(s.not_healthy)}; see /status.json?limit=N).</p>"
    headers = ["state", "object", "checks", "node", "evidence", "since (UTC)", "object shows", "ehc's write"]
    return _table("not-healthy", headers, rows) + more


def _queue(s: Status) -> str:
    q = s.queue
    outage = (
        '<p class="banner bad">Writes are failing in a row: sent one at a time until the API server answers.</p>'
        if q.outage
        else ""
    )
    line = f"<p>{q.queued} write(s) queued or in flight; {q.retries} retries so far.</p>"
    if not q.waiting:
        return outage + line
    rows = [
        [
            esc(w.key),
            esc(w.summary),
            ago(w.age),
            str(w.attempts),
            "sending" if w.sending else "queued",
            esc(w.error),
        ]
        for w in q.waiting
    ]
    return (
        outage
        + line
        + _table("waiting", ["object", "write", "waiting", "attempts", "state", "last error"], rows, {3})
    )


def _history(s: Status) -> str:
    tr = [
        [
            clock(t.at),
            esc(t.key),
            f'<span class="{"bad" if t.health == "unhealthy" else "ok"}">{esc(t.health)}</span>',
            esc(t.check),
            esc(t.detail),
            str(t.attempts),
            f"{t.took:.2f} s",
            esc(t.node),
        ]
        for t in s.transitions
    ]
    wr = [
        [clock(w.at), esc(w.key), esc(w.summary), esc(w.outcome), f"{w.seconds * 1000:.0f} ms"]
        for w in s.writes
    ]
    return (
        f"<h2>Last {len(tr)} transitions</h2>"
        + (
            _table(
                "transitions",
                ["at (UTC)", "target", "health", "check", "detail", "attempts", "detected in", "node down"],
                tr,
            )
            if tr
            else "<p class=muted>None yet.</p>"
        )
        + f"<h2>Last {len(wr)} writes</h2>"
        + (
            _table("writes", ["at (UTC)", "object", "write", "outcome", "took"], wr)
            if wr
            else "<p class=muted>None yet.</p>"
        )
    )


def render(s: Status, query: dict[str, str]) -> str:
    here = "status" + (f"?{urlencode(query)}" if query else "")
    title = f"ehc status: {s.role.identity}"
    content = (
        f'<div id="content"><h1>{esc(title)}</h1>'
        f'<p class="muted">At {clock(s.at)} UTC. <a href="{esc(here)}">Refresh</a> · '
        f'<a href="{esc("status.json" + here[len("status") :])}">JSON</a> · <a href="metrics">metrics</a></p>'
        + _role(s)
        + _failsafe(s)
        + _targets(s)
        + _filters(s)
        + f"<h2>Not healthy ({s.not_healthy_total})</h2>"
        + _not_healthy(s)
        + "<h2>Nodes</h2>"
        + _nodes(s)
        + "<h2>Workers</h2>"
        + _workers(s)
        + "<h2>Writes waiting</h2>"
        + _queue(s)
        + _history(s)
        + "</div>"
    )
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
        f'<meta name="viewport" content="width=device-width"><style>{_STYLE}</style></head><body>'
        f'<p id="auto" hidden><label><input type="checkbox" id="auto-on" checked> refresh every {REFRESH:g} s</label> '
        '<span id="stale" class="bad" hidden>(ehc did not answer the last refresh)</span></p>'
        f"{content}<script>{_SCRIPT}</script></body></html>"
    )
