"""A deterministic fleet of simulated phones.

Ids come from ``Random(f"{seed}:fleet")`` and per-phone faults from a separate stream, so the same seed
gives the same phone ids whatever the fault profile. Phones are slotted dataclasses and derive their
name and creation time from their index, keeping a million phones within a few hundred megabytes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from orchestrator.simulator.profiles import FaultProfile

__all__ = [
    "PHONE_ABNORMAL",
    "PHONE_RESTARTING",
    "PHONE_RESTART_FAILED",
    "PHONE_RUNNING",
    "PHONE_STATUSES",
    "PHONE_STOPPED",
    "Fleet",
    "FleetShape",
    "Phone",
    "generate_fleet",
    "hex_id",
]

PHONE_RUNNING = 2
PHONE_RESTARTING = 4
PHONE_STOPPED = 8
PHONE_RESTART_FAILED = -6
PHONE_ABNORMAL = -7
PHONE_STATUSES = frozenset({0, 1, 2, 3, 4, 6, 7, 8, -5, -6, -7, -8, -9})
"""Documented phone status values (cph-api.md §3; 0 is the older "creating")."""

FLEET_AGE_S = 365 * 86_400.0
"""The oldest phone was created this long before the simulator started."""


def hex_id(rng: random.Random) -> str:
    """A 32-hex-digit id, the shape of CPH phone, server, job and request ids."""
    return f"{rng.getrandbits(128):032x}"


@dataclass(slots=True, eq=False)
class Phone:
    """One phone's mutable state; wire views are built from it on demand."""

    phone_id: str
    index: int
    server_id: str
    status: int
    type: int
    create_wall_s: float
    exists: bool = True
    late_submissions_left: int = 0
    rejects_properties: bool = False
    properties: dict[str, object] | None = None
    custom_property: dict[str, str] | None = None
    update_wall_s: float | None = None
    running_jobs: int = 0
    running_restarts: int = 0

    @property
    def phone_name(self) -> str:
        """``phone-000123``: the phone's position in the fleet."""
        return f"phone-{self.index:06d}"


@dataclass(frozen=True, slots=True)
class FleetShape:
    """Fleet-level knobs taken from the simulator configuration."""

    size: int
    seed: int
    abnormal_rate: float = 0.02
    stopped_rate: float = 0.03
    trial_rate: float = 0.0
    per_server_min: int = 30
    per_server_max: int = 60


@dataclass(slots=True)
class Fleet:
    """All phones, indexed the ways the API needs: by id, newest first, and by server."""

    by_id: dict[str, Phone] = field(default_factory=dict)
    listed: list[Phone] = field(default_factory=list)
    by_server: dict[str, list[Phone]] = field(default_factory=dict)
    image_id: str = ""

    def ids(self) -> list[str]:
        """Every fleet id in creation order, including phones that never exist."""
        return list(self.by_id)


def generate_fleet(shape: FleetShape, profile: FaultProfile, now_wall_s: float) -> Fleet:
    """Build the fleet; listing order (newest first) is fixed here so paging is O(page)."""
    rng = random.Random(f"{shape.seed}:fleet")
    faults = random.Random(f"{shape.seed}:fleet-faults")
    fleet = Fleet(image_id=hex_id(rng))
    spacing_s = FLEET_AGE_S / max(1, shape.size)
    oldest_wall_s = now_wall_s - FLEET_AGE_S
    server_id, server_left = "", 0
    for index in range(shape.size):
        if server_left == 0:
            server_id = hex_id(rng)
            server_left = rng.randint(shape.per_server_min, shape.per_server_max)
        server_left -= 1
        phone = Phone(
            phone_id=hex_id(rng),
            index=index,
            server_id=server_id,
            status=_initial_status(rng, shape),
            type=1 if rng.random() < shape.trial_rate else 0,
            create_wall_s=oldest_wall_s + index * spacing_s + rng.uniform(0.0, spacing_s / 2),
        )
        _assign_faults(phone, faults, profile)
        fleet.by_id[phone.phone_id] = phone
    _index_listing(fleet)
    return fleet


def _initial_status(rng: random.Random, shape: FleetShape) -> int:
    draw = rng.random()
    if draw < shape.abnormal_rate:
        return PHONE_ABNORMAL
    if draw < shape.abnormal_rate + shape.stopped_rate:
        return PHONE_STOPPED
    return PHONE_RUNNING


def _assign_faults(phone: Phone, rng: random.Random, profile: FaultProfile) -> None:
    """Draw every per-phone fault, always in the same order, so one knob does not shift the others."""
    missing, late, rejects = rng.random(), rng.random(), rng.random()
    phone.exists = missing >= profile.missing_phone_rate
    if late < profile.late_phone_rate:
        phone.late_submissions_left = profile.late_phone_submissions
    phone.rejects_properties = rejects < profile.invalid_property_phone_rate


def _index_listing(fleet: Fleet) -> None:
    for phone in reversed(list(fleet.by_id.values())):
        if not phone.exists:
            continue
        fleet.listed.append(phone)
        fleet.by_server.setdefault(phone.server_id, []).append(phone)
