"""``/status`` in a real browser: headless Chromium, driven through Selenium, watches ``ehc run`` (a real
process in the simulated cluster's namespace) follow a node's power-off without a reload, and the same
page, filtered, with JavaScript off.

How the browser reaches the page: ehc's metrics server listens on loopback *inside* the cluster's
network namespace, which the test process (and a browser it starts) cannot reach.  Rather than run
Chromium inside the namespace, the test forwards a loopback port of its own to it: every connection
the browser opens is piped, on the test's event loop, to a socket made inside the namespace
(``sim.fleet.socket()``) and connected to ehc's port there.  The browser stays an ordinary local
process; only the one port crosses.  Selenium's calls block, so they run in a thread
(``asyncio.to_thread``) while the loop keeps serving the simulated API server and the forwarder.

The browser is the system's (Debian ``chromium`` and ``chromium-driver``, which ``scripts/setup``
installs as root): the driver's path is given, so Selenium Manager is never asked to fetch one.
Screenshots go to ``$EHC_ARTIFACTS`` (else pytest's ``tmp_path``); with ``EHC_README_SCREENSHOT`` set
to a path, the one taken during the power-off is also saved there (that is how
``docs/status-page.png`` is made).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sys
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import conditions_are, stop, until
from test_run import FAST, lease_holder

from ehc.sim import SimCluster
from ehc.sim import netns as sim_netns

pytestmark = pytest.mark.skipif(
    not sim_netns.available()[0], reason=f"needs a network namespace: {sim_netns.available()[1]}"
)

METRICS_PORT = 19490  # inside the cluster's own namespace: free
VICTIM = "sim-node-000"
WAIT = 15.0  # seconds the page gets to show what it should

# One atomic read of what the page shows (the auto-refresh swaps #content while we look): every table
# as rows of {header: cell text}, the banner, the filter form, and whether the script ran.
SNAPSHOT = """
const byId = id => document.getElementById(id);
const shown = id => { const e = byId(id); return !!e && e.getClientRects().length > 0; };
const table = id => {
  const e = byId(id);
  if (!e) return null;
  const head = [...e.tHead.rows[0].cells].map(c => c.innerText.trim());
  return [...e.tBodies[0].rows].map(r => Object.fromEntries([...r.cells].map((c, i) => [head[i], c.innerText.trim()])));
};
const field = sel => { const e = document.querySelector(sel); return e ? e.value : null; };
return {
  failsafe: byId('failsafe') ? byId('failsafe').innerText.trim() : null,
  none_unhealthy: shown('none-unhealthy'),
  auto: shown('auto'),
  auto_on: !!byId('auto-on') && byId('auto-on').checked,
  still_here: window.ehcStillHere === true,
  namespace: field('input[name=namespace]'),
  state: field('select[name=state]'),
  tables: Object.fromEntries(['not-healthy', 'nodes', 'workers', 'waiting', 'transitions', 'writes']
    .map(id => [id, table(id)])),
};
"""


def tools_or_skip() -> tuple[str, str]:
    """The system's chromium and chromedriver, and Selenium; skip without them."""
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or chromedriver is None:
        pytest.skip("needs Debian's chromium and chromium-driver (scripts/setup installs them as root)")
    pytest.importorskip("selenium", reason="needs selenium (the test extra: pip install -e '.[test]')")
    return chromium, chromedriver


def chrome(chromium: str, chromedriver: str, *, javascript: bool = True) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000",
                "--no-proxy-server", "--hide-scrollbars"):  # fmt: skip
        options.add_argument(arg)
    if not javascript:
        options.add_argument("--blink-settings=scriptEnabled=false")
    return webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))


@contextlib.asynccontextmanager
async def forwarded(sim: SimCluster, port: int) -> AsyncIterator[int]:
    """A loopback port of the test process piped to ``127.0.0.1:port`` inside the cluster's namespace."""
    loop = asyncio.get_running_loop()
    open_writers: set[asyncio.StreamWriter] = set()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except OSError:
            pass

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        open_writers.add(client_w)
        sock = sim.fleet.socket()
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, ("127.0.0.1", port))
        except OSError:
            sock.close()
            client_w.close()
            open_writers.discard(client_w)
            return
        ehc_r, ehc_w = await asyncio.open_connection(sock=sock)
        open_writers.add(ehc_w)
        try:
            await asyncio.gather(pipe(client_r, ehc_w), pipe(ehc_r, client_w))
        finally:
            for w in (client_w, ehc_w):
                w.close()
                open_writers.discard(w)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for w in list(open_writers):  # the browser's keep-alive connections
            w.close()
        await server.wait_closed()


def status_json(url: str) -> str:
    """``/status.json``, for a failure's message (what ehc thought, next to what the page showed)."""
    try:
        with urllib.request.urlopen(f"{url}/status.json", timeout=5) as r:
            return json.dumps(json.loads(r.read()), indent=1)[:20000]
    except OSError as exc:
        return f"(status.json unavailable: {exc})"


def wait_page(driver: Any, url: str, what: str, ok: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """Poll the page (never reloading it) until ``ok(snapshot)``; the snapshot that passed."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    seen: list[dict[str, Any]] = []

    def check(d: Any) -> dict[str, Any] | bool:
        snap = d.execute_script(SNAPSHOT)
        seen.append(snap)
        return snap if ok(snap) else False

    try:
        return WebDriverWait(driver, WAIT, poll_frequency=0.2).until(check)
    except TimeoutException:
        last = json.dumps(seen[-1] if seen else None, indent=1)
        raise AssertionError(
            f"the page did not show {what} within {WAIT:g}s.\nIt showed: {last}\n"
            f"/status.json said: {status_json(url)}"
        ) from None


def judged(evidence: str) -> str | None:
    """How the evidence cell says a victim's pod was judged: "node" (with its node, the verdict the
    power-off should bring), "alone" (its own attempts timed out first), None (neither, yet).

    "alone" is tolerated: on a loaded machine one pod's own confirmations (retry count + 1 timeouts)
    can complete a few milliseconds before the node has its ten unanswered attempts, and ehc then
    ejects that pod on its own evidence; the rest go with the node."""
    if f"node {VICTIM} silent" in evidence:
        return "node"
    if "timeout" in evidence:
        return "alone"
    return None


def first_line(cell: str) -> str:
    return cell.splitlines()[0] if cell else ""


def artifacts(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("EHC_ARTIFACTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def screenshot(driver: Any, path: Path) -> None:
    driver.execute_script("window.scrollTo(0, 0)")
    assert driver.save_screenshot(str(path)), path
    print(f"screenshot: {path}")


async def test_the_status_page_follows_a_power_off_and_works_without_javascript(tmp_path: Path) -> None:
    chromium, chromedriver = tools_or_skip()
    shots = artifacts(tmp_path)
    flags = list(FAST)
    flags[flags.index("--metrics-address") + 1] = f"127.0.0.1:{METRICS_PORT}"
    async with (
        SimCluster(nodes=3, pods_per_node=8, kubelet_delay=1.0) as sim,
        forwarded(sim, METRICS_PORT) as port,
    ):
        fleet, api = sim.fleet, sim.api
        url = f"http://127.0.0.1:{port}"
        nodes = sorted({p.node for p in fleet.pods})
        dead = {f"Pod {p.namespace}/{p.name}": p for p in fleet.pods_on(VICTIM) if p.opted_in}
        others = {f"Pod {p.namespace}/{p.name}" for p in fleet.targets() if p.node != VICTIM}
        assert len(nodes) == 3 and dead and others
        proc = await asyncio.create_subprocess_exec(
            *sim.exec_prefix(), sys.executable, "-m", "ehc", "run", "--kubeconfig", sim.kubeconfig,
            "--identity", "ehc-a", "--namespace", "default", *flags,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        drivers: list[Any] = []
        try:
            await until(lambda: lease_holder(sim) == "ehc-a", "ehc leading")
            await until(conditions_are(api, [p for p in fleet.targets() if p.style == "gate"], "True"))

            # ---- before: all healthy -------------------------------------------------------------
            def before() -> dict[str, Any]:
                driver = chrome(chromium, chromedriver)
                drivers.append(driver)
                driver.get(f"{url}/status")

                def settled(s: dict[str, Any]) -> bool:
                    listed = {r["node"] for r in s["tables"]["nodes"] or []}
                    workers = s["tables"]["workers"] or []
                    return listed == set(nodes) and any(w["state"] == "up" for w in workers)

                snap = wait_page(driver, url, "every node and a worker up", settled)
                driver.execute_script("window.ehcStillHere = true")  # gone if the page is ever reloaded
                screenshot(driver, shots / "status-before.png")
                return snap

            snap = await asyncio.to_thread(before)
            assert (snap["failsafe"] or "").startswith("Fail-safe off"), snap["failsafe"]
            assert snap["none_unhealthy"], "nothing is unhealthy: the page should say so"
            assert snap["tables"]["not-healthy"] is None
            assert snap["auto"] and snap["auto_on"], "with JavaScript on, the page refreshes itself"
            assert sorted(r["node"] for r in snap["tables"]["nodes"]) == nodes
            workers = snap["tables"]["workers"]
            assert workers and all(w["state"] == "up" for w in workers), workers
            assert all(r["verdict"] == "" for r in snap["tables"]["nodes"]), snap["tables"]["nodes"]

            # ---- during: a node loses power; the open page follows by itself -----------------------
            fleet.power_off(VICTIM)
            listed_others: set[str] = set()

            def shows_the_dead_node(s: dict[str, Any]) -> bool:
                rows = {r["object"]: r for r in s["tables"]["not-healthy"] or []}
                listed_others.update(
                    o for o, r in rows.items() if o in others and first_line(r["state"]) != "suspect"
                )
                victim = next((r for r in s["tables"]["nodes"] or [] if r["node"] == VICTIM), None)
                return (
                    s["still_here"]
                    and rows.keys() == dead.keys()
                    and all(
                        first_line(r["state"]) == "unhealthy"
                        and judged(r["evidence"]) is not None
                        and r["ehc's write"].startswith("ok at")
                        for r in rows.values()
                    )
                    and victim is not None
                    and victim["verdict"].startswith("down")
                )

            def during() -> dict[str, Any]:
                driver = drivers[0]
                snap = wait_page(driver, url, f"{VICTIM}'s pods unhealthy and written", shows_the_dead_node)
                screenshot(driver, shots / "status-power-off.png")
                if readme := os.environ.get("EHC_README_SCREENSHOT"):
                    Path(readme).parent.mkdir(parents=True, exist_ok=True)
                    screenshot(driver, Path(readme))
                return snap

            snap = await asyncio.to_thread(during)
            assert snap["still_here"], "the page was reloaded: it should have swapped its content in place"
            assert (snap["failsafe"] or "").startswith("Fail-safe off"), snap["failsafe"]  # 1 of 3 nodes
            assert not snap["none_unhealthy"]
            assert not listed_others, f"pods of live nodes listed as not healthy: {sorted(listed_others)}"
            rows = {r["object"]: r for r in snap["tables"]["not-healthy"]}
            assert rows.keys() == dead.keys()
            for row in rows.values():
                assert row["node"] == VICTIM, row
            alone = sorted(o for o, r in rows.items() if judged(r["evidence"]) == "alone")
            if alone:
                print(f"judged alone, before the node verdict: {alone}")
            assert len(alone) < len(rows), "no pod's evidence names the node verdict"
            victim_row = next(r for r in snap["tables"]["nodes"] if r["node"] == VICTIM)
            assert victim_row["unhealthy"] == str(len(dead)), victim_row
            for row in snap["tables"]["nodes"]:
                if row["node"] != VICTIM:
                    assert row["verdict"] == "" and row["unhealthy"] == "0", row
            # The witness agrees: ehc took exactly those pods out.
            assert api.write_log.first_taken_out().keys() == {(p.namespace, p.name) for p in dead.values()}

            # ---- without JavaScript: the filter form works, by plain GET -------------------------
            namespace = min(p.namespace for p in dead.values())
            wanted = {o for o, p in dead.items() if p.namespace == namespace}
            assert wanted != dead.keys(), "pick a namespace that leaves some dead pods out"

            def without_javascript() -> dict[str, Any]:
                driver = chrome(chromium, chromedriver, javascript=False)
                drivers.append(driver)
                driver.get(f"{url}/status?state=unhealthy&namespace={namespace}")
                snap = driver.execute_script(SNAPSHOT)
                screenshot(driver, shots / "status-no-javascript.png")
                return snap

            snap = await asyncio.to_thread(without_javascript)
            assert not snap["auto"], "the script ran: JavaScript should be off in this browser"
            assert snap["namespace"] == namespace and snap["state"] == "unhealthy", snap
            listed = {r["object"]: r for r in snap["tables"]["not-healthy"] or []}
            assert listed.keys() == wanted, sorted(listed)
            assert all(first_line(r["state"]) == "unhealthy" for r in listed.values()), listed
        finally:
            for driver in drivers:
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(driver.quit)
            assert await stop(proc) == 0
