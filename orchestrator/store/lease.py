"""Who may run a rollout: the lease rules as pure functions, so they are tested without processes.

A lease names its holder as ``"{hostname}:{pid}:{random}"`` and carries a wall-clock expiry
(seconds since the epoch, since the holders are different processes). It may be taken when it is
free, already ours, expired, or held by a process of this host that no longer exists; a holder on
another host, or one whose owner string we cannot read, is trusted until its expiry.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

__all__ = ["Lease", "holder_pid_on_host", "may_take", "pid_alive", "refusal"]


@dataclass(frozen=True, slots=True)
class Lease:
    """A rollout's current lease as stored: both None when nobody holds it."""

    owner: str | None
    expires_at: float | None


def holder_pid_on_host(owner: str, host: str) -> int | None:
    """The holder's pid when ``owner`` is a process of ``host``; None if remote or unreadable."""
    parts = owner.rsplit(":", 2)
    if len(parts) != 3 or parts[0] != host:
        return None
    try:
        pid = int(parts[1])
    except ValueError:
        return None
    return pid if pid > 0 else None


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists; a process we may not signal still counts as alive."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    """A killed process not yet reaped by its parent still answers signals: ask Linux's /proc."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            stat = handle.read()
    except OSError:
        return False
    # The state follows the parenthesised command name, which may itself contain spaces.
    return stat[stat.rfind(")") + 2 : stat.rfind(")") + 3] == "Z"


def may_take(
    lease: Lease,
    *,
    owner: str,
    now: float,
    host: str | None = None,
    alive: Callable[[int], bool] = pid_alive,
) -> bool:
    """Whether ``owner`` may take (or keep) the lease at wall time ``now``."""
    if lease.owner is None or lease.owner == owner:
        return True
    if lease.expires_at is None or lease.expires_at < now:
        return True
    pid = holder_pid_on_host(lease.owner, host if host is not None else socket.gethostname())
    return pid is not None and not alive(pid)


def refusal(rollout_id: str, lease: Lease, *, now: float) -> str:
    """The operator's message when the lease is held by someone else."""
    if lease.owner is None:
        return f"rollout {rollout_id} is not leased by us any more (nobody holds it now)"
    if lease.expires_at is None:
        return f"rollout {rollout_id} is being run by {lease.owner}"
    when = datetime.fromtimestamp(lease.expires_at, tz=UTC).isoformat(timespec="seconds")
    return (
        f"rollout {rollout_id} is being run by {lease.owner}; its lease expires at {when}"
        f" (in {max(0.0, lease.expires_at - now):.0f}s) unless renewed"
    )
