"""nftables rules that make a simulated node or pod fail the way real ones do, inside the fleet's
namespace: a powered-off address drops packets silently (connects time out), a closed port answers
with a TCP reset (refused at once), random loss drops X % of packets sent to pod addresses, and a
cut drops, silently too, only the packets that sockets of one unix group (one checker replica's
vantage) send to given prefixes: the *output* hook, which still knows the sending socket's gid, marks
them (packet mark ``CUT_MARK``, which survives loopback) and the input hook drops what is marked.

Drops and rejects sit on the *input* hook: loopback traffic passes output then input, and a drop on
output would turn into an immediate EPERM for the sender instead of silence.
"""

from __future__ import annotations

import subprocess

from ehc.sim.netns import exec_prefix

TABLE = "ehcsim"
CUT_MARK = 0x65686300  # packet mark of what a cut drops on input


class Nft:
    """The ``inet ehcsim`` table of one namespace, changed through ``nft -f -`` batches."""

    def __init__(self, netns: str, pod_net4: str, pod_net6: str) -> None:
        self.netns = netns
        self.pod_net4 = pod_net4
        self.pod_net6 = pod_net6
        self._loss: dict[str, int] = {}  # "" (all pods) or a CIDR -> percent

    def run(self, script: str) -> None:
        proc = subprocess.run(
            [*exec_prefix(self.netns), "nft", "-f", "-"],
            input=script,
            text=True,
            capture_output=True,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"nft failed: {proc.stderr.strip()}\n{script}")

    def setup(self) -> None:
        self.run(
            f"""
table inet {TABLE} {{
  set down4 {{ type ipv4_addr; flags interval; }}
  set down6 {{ type ipv6_addr; flags interval; }}
  set closed4 {{ type ipv4_addr . inet_service; }}
  set closed6 {{ type ipv6_addr . inet_service; }}
  set cut4 {{ typeof meta skgid . ip daddr; flags interval; }}
  set cut6 {{ typeof meta skgid . ip6 daddr; flags interval; }}
  chain loss {{ }}
  chain output {{
    type filter hook output priority 0; policy accept;
    meta skgid . ip daddr @cut4 meta mark set {CUT_MARK:#x}
    meta skgid . ip6 daddr @cut6 meta mark set {CUT_MARK:#x}
  }}
  chain input {{
    type filter hook input priority 0; policy accept;
    ip daddr @down4 drop
    ip6 daddr @down6 drop
    meta mark {CUT_MARK:#x} drop
    ip daddr . tcp dport @closed4 reject with tcp reset
    ip6 daddr . tcp dport @closed6 reject with tcp reset
    jump loss
  }}
}}
"""
        )

    @staticmethod
    def _family(addr: str) -> str:
        return "6" if ":" in addr else "4"

    def drop(self, cidrs: list[str], on: bool) -> None:
        """Add (``on``) or remove addresses/prefixes to the silently dropped set."""
        if not cidrs:
            return
        verb = "add" if on else "delete"
        lines = [f"{verb} element inet {TABLE} down{self._family(c)} {{ {c} }}" for c in cidrs]
        self._run_tolerant(lines)

    def reject(self, addr: str, port: int, on: bool) -> None:
        verb = "add" if on else "delete"
        self._run_tolerant([f"{verb} element inet {TABLE} closed{self._family(addr)} {{ {addr} . {port} }}"])

    def cut(self, gid: int, cidrs: list[str], on: bool) -> None:
        """Silently drop (``on``) or stop dropping packets that sockets of group ``gid`` send to the
        given addresses/prefixes."""
        verb = "add" if on else "delete"
        lines = [f"{verb} element inet {TABLE} cut{self._family(c)} {{ {int(gid)} . {c} }}" for c in cidrs]
        if lines:
            self._run_tolerant(lines)

    def _run_tolerant(self, lines: list[str]) -> None:
        """Apply element changes one by one, ignoring deletes of absent / adds of present elements."""
        try:
            self.run("\n".join(lines) + "\n")
        except RuntimeError:
            for line in lines:
                subprocess.run(
                    [*exec_prefix(self.netns), "nft", "-f", "-"], input=line + "\n", text=True,
                    capture_output=True, check=False,
                )  # fmt: skip

    def set_loss(self, percent: int, cidrs: list[str] | None = None) -> None:
        """Drop ``percent`` % of packets to the given prefixes (all pod addresses if None); 0 clears."""
        for cidr in cidrs or [""]:
            if percent <= 0:
                self._loss.pop(cidr, None)
            else:
                self._loss[cidr] = min(int(percent), 100)
        rules = [f"flush chain inet {TABLE} loss"]
        for cidr, pct in self._loss.items():
            match = "" if pct >= 100 else f"numgen random mod 100 < {pct} "
            for target in [cidr] if cidr else [self.pod_net4, self.pod_net6]:
                fam = "ip6" if ":" in target else "ip"
                rules.append(f"add rule inet {TABLE} loss {fam} daddr {target} {match}drop")
        self.run("\n".join(rules) + "\n")

    def reset(self) -> None:
        self._loss.clear()
        self.run(
            "\n".join(
                f"flush set inet {TABLE} {s}"
                for s in ("down4", "down6", "closed4", "closed6", "cut4", "cut6")
            )
            + f"\nflush chain inet {TABLE} loss\n"
        )
