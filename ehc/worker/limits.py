"""Process limits a worker needs: every probe in flight holds a file descriptor."""

from __future__ import annotations

import resource


def raise_fd_limit() -> int:
    """Raise the open-files limit as far as allowed (every probe in flight holds a descriptor).

    The soft limit goes to the hard one; with CAP_SYS_RESOURCE the hard one goes up to the
    kernel's ``fs.nr_open`` (capped at 1M).  Returns the soft limit now in force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        with open("/proc/sys/fs/nr_open") as f:
            ceiling = min(int(f.read()), 1 << 20)
    except OSError:
        ceiling = hard
    for wanted in (max(hard, ceiling), hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted
        except (ValueError, OSError):
            continue
    return soft
