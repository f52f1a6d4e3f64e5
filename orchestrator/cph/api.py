"""The calls the rollout engine makes on the CPH API, as one narrow interface.

:class:`~orchestrator.cph.client.CphClient` satisfies it over HTTP; the in-process fake of
:mod:`orchestrator.testing` satisfies it on an injected clock, so the engine's behaviour (waves,
bake, abort, timeouts, grace, pause, adaptive rate) can be tested deterministically without a
network. A new call the engine needs is added here first, then to both implementations.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any, Protocol

from orchestrator.cph.models import (
    BatchJobsResponse,
    ListJobsResponse,
    PhoneDetail,
    PropertyUpdate,
    ShowJobResponse,
)

__all__ = [
    "LIST_JOBS_MAX_REQUEST_IDS",
    "LIST_JOBS_PAGE_LIMIT",
    "LIST_PHONES_PAGE_LIMIT",
    "ApiFamily",
    "CphApi",
    "list_jobs_query",
    "restart_body",
]

LIST_JOBS_MAX_REQUEST_IDS = 20
"""Batch request IDs one ListJobs call may name."""
LIST_JOBS_PAGE_LIMIT = 100
"""Jobs one ListJobs page holds at most."""
LIST_PHONES_PAGE_LIMIT = 200
"""Phones one ListCloudPhones page may hold (the current docs allow 1-200; older ones said 100):
the largest page takes the fewest calls (docs/cph-api.md §5)."""


class ApiFamily(StrEnum):
    """Rate-limit families: submits change phones, queries only read. Each has its own budget."""

    SUBMIT = "submit"
    QUERY = "query"


class CphApi(Protocol):
    """What the engine asks of the cloud; errors are those of :mod:`orchestrator.cph.errors`."""

    @property
    def calls(self) -> Mapping[str, int]:
        """Calls made so far, keyed ``"<family>.<outcome>"`` (``submit.ok``, ``query.throttled``)."""
        ...

    async def update_properties(self, updates: Sequence[PropertyUpdate]) -> BatchJobsResponse:
        """Batch-update phone properties; per-phone errors come back in ``jobs``, never raised."""
        ...

    async def restart_phones(
        self,
        phone_ids: Sequence[str],
        *,
        image_id: str | None = None,
        properties: Mapping[str, str] | None = None,
    ) -> BatchJobsResponse:
        """Restart (or start) phones."""
        ...

    async def show_job(self, job_id: str) -> ShowJobResponse:
        """One job by ID."""
        ...

    async def list_jobs_page(
        self, request_ids: Sequence[str], *, offset: int = 0, limit: int = ...
    ) -> ListJobsResponse:
        """One page of the jobs of up to 20 batch requests."""
        ...

    async def show_phone(self, phone_id: str) -> PhoneDetail:
        """One phone's details, including its current ``property`` string."""
        ...


def restart_body(
    phone_ids: Sequence[str], *, image_id: str | None, properties: Mapping[str, str] | None
) -> dict[str, Any]:
    """The batch-restart body: each phone, with its ``property`` JSON string when one is given."""
    phones: list[dict[str, str]] = []
    for phone_id in phone_ids:
        item = {"phone_id": phone_id}
        if properties and phone_id in properties:
            item["property"] = properties[phone_id]
        phones.append(item)
    return {"phones": phones, **({"image_id": image_id} if image_id else {})}


def list_jobs_query(request_ids: Sequence[str], *, offset: int, limit: int) -> dict[str, str]:
    """ListJobs' query for one page; ``ValueError`` outside 1 to 20 request IDs."""
    if not 0 < len(request_ids) <= LIST_JOBS_MAX_REQUEST_IDS:
        raise ValueError(
            f"list_jobs takes 1 to {LIST_JOBS_MAX_REQUEST_IDS} request IDs, not {len(request_ids)}"
        )
    return {"request_ids": ",".join(request_ids), "offset": str(offset), "limit": str(limit)}
