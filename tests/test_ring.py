from collections import Counter

import pytest

from ehc.coordinator.sharding import jump_hash, key_digest, worker_for

KEYS = [f"ns-{i % 37}/pod-{i}" for i in range(10_000)]


@pytest.mark.parametrize("workers", [2, 3, 4, 5, 8, 12, 16])
def test_balance(workers: int) -> None:
    load = Counter(worker_for(k, workers) for k in KEYS)
    assert set(load) == set(range(workers))
    assert max(load.values()) / (len(KEYS) / workers) <= 1.15


@pytest.mark.parametrize("workers", range(1, 16))
def test_growing_by_one_moves_only_what_the_new_worker_takes(workers: int) -> None:
    moved = [k for k in KEYS if worker_for(k, workers) != worker_for(k, workers + 1)]
    assert len(moved) / len(KEYS) <= 1.5 / (workers + 1)
    assert all(worker_for(k, workers + 1) == workers for k in moved)


def test_stable_across_processes() -> None:
    # BLAKE2b, not the per-process salted hash(): these values hold on every run and machine.
    assert key_digest("default/web-0") == key_digest("default/web-0")
    import subprocess
    import sys

    code = "from ehc.coordinator.sharding import worker_for; print(worker_for('default/web-0', 7))"
    out = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout for _ in range(2)
    }
    assert out == {f"{worker_for('default/web-0', 7)}\n"}


def test_bad_bucket_count() -> None:
    with pytest.raises(ValueError):
        jump_hash(1, 0)
