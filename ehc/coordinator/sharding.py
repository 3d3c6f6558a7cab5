"""Which worker owns a target: jump consistent hash of a stable digest of a key (the pool hashes a
target's node, so a node's targets are judged together; a target without a node by its own key).

Jump hash (Lamping & Veach, 2014) needs no ring state, balances evenly, and when the worker count
grows from N to N+1 moves exactly the ~1/(N+1) of keys the new worker takes.  The key digest is
BLAKE2b, not Python's per-process salted ``hash()``, so every process and restart agrees.
"""

from __future__ import annotations

import hashlib

_MASK64 = (1 << 64) - 1


def key_digest(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")


def jump_hash(digest: int, buckets: int) -> int:
    if buckets < 1:
        raise ValueError(f"buckets must be >= 1, got {buckets}")
    b, j = -1, 0
    while j < buckets:
        b = j
        digest = (digest * 2862933555777941757 + 1) & _MASK64
        j = int((b + 1) * ((1 << 31) / ((digest >> 33) + 1)))
    return b


def worker_for(key: str, workers: int) -> int:
    """Index in ``range(workers)`` of the worker that probes ``key``."""
    return jump_hash(key_digest(key), workers)
