"""Who may run a rollout: the lease rules as pure functions, so they are tested without processes.

A lease names its holder as ``"{hostname}:{pid}:{start}:{random}"``, where ``start`` is when that
process started (clock ticks since boot, from ``/proc``), and carries a wall-clock expiry (seconds
since the epoch, since the holders are different processes) and a generation that grows each time
the lease changes hands. The holder's :class:`LeaseToken` (owner and generation) fences its
writes: the store refuses any write whose token is no longer the rollout's current one.

A lease may be taken when it is free or already ours. A holder on this host is judged by its
process alone, whatever the clocks say: taken at once when that process is gone (or its pid was
reused by another process, which the start time reveals), never while it runs. A holder on another
host, or one whose owner string we cannot read, is trusted until its expiry.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

__all__ = [
    "Lease",
    "LeaseToken",
    "LocalHolder",
    "local_holder",
    "may_take",
    "new_owner",
    "pid_alive",
    "process_start_ticks",
    "refusal",
    "taken_over",
]


@dataclass(frozen=True, slots=True)
class Lease:
    """A rollout's current lease as stored: owner and expiry are None when nobody holds it."""

    owner: str | None
    expires_at: float | None
    generation: int = 0


@dataclass(frozen=True, slots=True)
class LeaseToken:
    """What a runner holds after taking a lease: every write it makes is checked against it."""

    owner: str
    generation: int


@dataclass(frozen=True, slots=True)
class LocalHolder:
    """A lease holder that is a process of this host."""

    pid: int
    start: int | None
    """The process's start time in clock ticks since boot; None in owner strings that lack it."""


def process_start_ticks(pid: int) -> int | None:
    """When process ``pid`` started (Linux ``/proc/<pid>/stat`` field 22); None if unknowable."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            stat = handle.read()
    except OSError:
        return None
    # Fields after the parenthesised command name (which may contain spaces) start at field 3.
    fields = stat[stat.rfind(")") + 2 :].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def new_owner(*, host: str | None = None, pid: int | None = None) -> str:
    """A fresh owner string for this process: unique per lease taken, readable by :func:`local_holder`."""
    pid = os.getpid() if pid is None else pid
    start = process_start_ticks(pid)
    return f"{host or socket.gethostname()}:{pid}:{start or 0}:{secrets.token_hex(4)}"


def local_holder(owner: str, host: str) -> LocalHolder | None:
    """The holder's process when ``owner`` is a process of ``host``; None if remote or unreadable.

    Reads both forms: ``host:pid:start:random`` and the older ``host:pid:random``.
    """
    parts = owner.split(":")
    if len(parts) not in (3, 4) or parts[0] != host:
        return None
    try:
        pid = int(parts[1])
    except ValueError:
        return None
    if pid <= 0:
        return None
    start = _ticks(parts[2]) if len(parts) == 4 else None
    return LocalHolder(pid, start)


def _ticks(text: str) -> int | None:
    try:
        value = int(text)
    except ValueError:
        return None
    return value if value > 0 else None


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


def _running(
    holder: LocalHolder, alive: Callable[[int], bool], started: Callable[[int], int | None]
) -> bool:
    """The holder's process still runs: its pid is alive and, when known, started when it did."""
    if not alive(holder.pid):
        return False
    if holder.start is None:
        return True
    now_started = started(holder.pid)
    return now_started is None or now_started == holder.start


def may_take(
    lease: Lease,
    *,
    owner: str,
    now: float,
    host: str | None = None,
    alive: Callable[[int], bool] = pid_alive,
    started: Callable[[int], int | None] = process_start_ticks,
) -> bool:
    """Whether ``owner`` may take (or keep) the lease at wall time ``now``."""
    if lease.owner is None or lease.owner == owner:
        return True
    holder = local_holder(lease.owner, host if host is not None else socket.gethostname())
    if holder is not None:
        return not _running(holder, alive, started)
    return lease.expires_at is None or lease.expires_at < now


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


def taken_over(rollout_id: str, lease: Lease) -> str:
    """The message for a runner whose lease another runner took: it must stop writing."""
    holder = lease.owner or "nobody (the lease was released)"
    return (
        f"rollout {rollout_id} was taken over by {holder}; this runner lost its lease and"
        " stopped without writing anything more"
    )
