"""The asynchronous CPH client: one aiohttp session, typed answers, one place that translates errors.

Every call makes exactly one HTTP attempt (plus one more after a token renewal). Retrying, backing off
and rate limiting are the engine's decisions, not the client's: the client reports precisely what
happened (:mod:`orchestrator.cph.errors`) and counts its calls by API family and outcome.
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import quote

import aiohttp
from multidict import CIMultiDict
from pydantic import BaseModel, ValidationError
from yarl import URL

from orchestrator import __version__
from orchestrator.clock import Clock, SystemClock
from orchestrator.cph.api import (
    LIST_JOBS_PAGE_LIMIT,
    LIST_PHONES_PAGE_LIMIT,
    ApiFamily,
    list_jobs_query,
    restart_body,
)
from orchestrator.cph.auth import Auth, OutgoingRequest
from orchestrator.cph.errors import (
    ApiError,
    AuthError,
    MalformedResponseError,
    ThrottledError,
    TransientError,
    error_from_response,
)
from orchestrator.cph.models import (
    BatchJobsResponse,
    Job,
    ListJobsResponse,
    ListPhonesResponse,
    Phone,
    PhoneDetail,
    PropertyUpdate,
    ShowJobResponse,
)
from orchestrator.cph.signer import canonical_query_string

__all__ = ["ApiFamily", "CphClient", "PhoneFilters"]

USER_AGENT = f"cph-orchestrator/{__version__}"
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_MAX_CONNECTIONS = 64
_EXCERPT_CHARS = 200

AnswerT = TypeVar("AnswerT", bound=BaseModel)
PageRead = Callable[[], Awaitable[ListPhonesResponse]]
"""One page's ListCloudPhones call, ready to be made (or retried) by the caller."""


@dataclass(frozen=True, slots=True)
class PhoneFilters:
    """ListCloudPhones filters; None leaves a filter out."""

    server_id: str | None = None
    status: int | None = None
    phone_name: str | None = None
    phone_type: int | None = None

    def query(self) -> dict[str, object]:
        """The query parameters, under the API's names."""
        names = {"server_id": self.server_id, "status": self.status, "phone_name": self.phone_name}
        return {**names, "type": self.phone_type}


class CphClient:
    """Talks to one CPH endpoint for one project.

    Use as ``async with CphClient(...) as client``; the session's connection pool is sized to
    ``max_connections`` so that it never becomes the hidden bottleneck below the engine's own caps.
    """

    def __init__(
        self,
        *,
        endpoint: str,
        project_id: str,
        auth: Auth,
        clock: Clock | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        user_agent: str = USER_AGENT,
    ) -> None:
        self._base = URL(endpoint.rstrip("/"))
        self.project_id = project_id
        self._auth = auth
        auth.bind(self.session)
        self._clock = clock or SystemClock()
        self._max_connections = max_connections
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._user_agent = user_agent
        self._session: aiohttp.ClientSession | None = None
        self.calls: Counter[str] = Counter()
        """Calls made, keyed ``"<family>.<outcome>"`` (``submit.ok``, ``query.throttled`` …)."""

    def __repr__(self) -> str:
        return f"CphClient(endpoint={str(self._base)!r}, project_id={self.project_id!r})"

    async def __aenter__(self) -> Self:
        await self.session()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def session(self) -> aiohttp.ClientSession:
        """The shared session, created on first use (inside the running loop)."""
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._max_connections, limit_per_host=0)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
        return self._session

    async def close(self) -> None:
        """Close the connection pool."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- operations -------------------------------------------------------------------------

    async def update_properties(self, updates: Sequence[PropertyUpdate]) -> BatchJobsResponse:
        """Batch-update phone properties; per-phone errors come back in ``jobs``, never raised."""
        body = {"phones": [update.wire() for update in updates]}
        return await self._call(
            BatchJobsResponse,
            "UpdateCloudPhoneProperty",
            "POST",
            "/cloud-phone/phones/batch-update-property",
            body=body,
        )

    async def restart_phones(
        self,
        phone_ids: Sequence[str],
        *,
        image_id: str | None = None,
        properties: Mapping[str, str] | None = None,
    ) -> BatchJobsResponse:
        """Restart (or start) phones; ``properties`` maps a phone to a property JSON string."""
        body = restart_body(phone_ids, image_id=image_id, properties=properties)
        path = "/cloud-phone/phones/batch-restart"
        return await self._call(BatchJobsResponse, "RestartCloudPhone", "POST", path, body=body)

    async def show_job(self, job_id: str) -> ShowJobResponse:
        """One job by ID; the fallback when ListJobs cannot find it."""
        path = f"/cloud-phone/jobs/{quote(job_id, safe='')}"
        return await self._call(ShowJobResponse, "ShowJob", "GET", path)

    async def list_jobs(self, request_ids: Sequence[str]) -> list[Job]:
        """All jobs of up to 20 batch requests, following pages until the last one."""
        jobs: list[Job] = []
        while True:
            page = await self.list_jobs_page(request_ids, offset=len(jobs))
            jobs.extend(page.jobs)
            if not _more_pages(len(page.jobs), len(jobs), page.count, LIST_JOBS_PAGE_LIMIT):
                return jobs

    async def list_jobs_page(
        self, request_ids: Sequence[str], *, offset: int = 0, limit: int = LIST_JOBS_PAGE_LIMIT
    ) -> ListJobsResponse:
        """One page of the jobs of up to 20 batch requests (for callers that rate-limit each page)."""
        query = list_jobs_query(request_ids, offset=offset, limit=limit)
        return await self._call(
            ListJobsResponse, "ListJobs", "GET", "/cloud-phone/jobs", query=query
        )

    async def iter_phones(
        self,
        *,
        server_id: str | None = None,
        status: int | None = None,
        phone_name: str | None = None,
        phone_type: int | None = None,
        page_size: int = LIST_PHONES_PAGE_LIMIT,
        read: Callable[[PageRead], Awaitable[ListPhonesResponse]] | None = None,
    ) -> AsyncIterator[list[Phone]]:
        """Pages of phones matching the filters (newest first, as the API lists them).

        ``read`` makes each page's call, for callers that retry page by page (the client itself
        makes one attempt); by default the call is made as is.
        """
        filters = PhoneFilters(server_id, status, phone_name, phone_type)
        seen = 0
        while True:
            call = functools.partial(self.list_phones_page, filters, offset=seen, limit=page_size)
            page = await (read(call) if read is not None else call())
            if page.phones:
                yield page.phones
            seen += len(page.phones)
            if not _more_pages(len(page.phones), seen, page.count, page_size):
                return

    async def list_phones_page(
        self, filters: PhoneFilters, *, offset: int = 0, limit: int = LIST_PHONES_PAGE_LIMIT
    ) -> ListPhonesResponse:
        """One page of ListCloudPhones (for callers that retry page by page)."""
        query = {**filters.query(), "offset": offset, "limit": limit}
        path = "/cloud-phone/phones"
        return await self._call(ListPhonesResponse, "ListCloudPhones", "GET", path, query=query)

    async def show_phone(self, phone_id: str) -> PhoneDetail:
        """One phone's details, including its current ``property`` string."""
        path = f"/cloud-phone/phones/{quote(phone_id, safe='')}"
        return await self._call(PhoneDetail, "ShowCloudPhoneDetail", "GET", path)

    # -- the one request path -----------------------------------------------------------------

    async def _call(
        self,
        answer: type[AnswerT],
        operation: str,
        method: str,
        path: str,
        *,
        query: Mapping[str, object] | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> AnswerT:
        family = ApiFamily.QUERY if method == "GET" else ApiFamily.SUBMIT
        pairs = [(k, _query_value(v)) for k, v in (query or {}).items() if v is not None]
        payload = json.dumps(body).encode() if body is not None else b""
        request = self._outgoing(method, path, pairs, payload)
        try:
            raw, headers = await self._send_with_auth(operation, request)
        except ApiError as exc:
            self.calls[f"{family}.{_outcome(exc)}"] += 1
            raise
        self.calls[f"{family}.ok"] += 1
        return _parse(answer, raw, headers, operation=operation, method=method)

    def _outgoing(
        self, method: str, path: str, query: list[tuple[str, str]], body: bytes
    ) -> OutgoingRequest:
        full_path = f"{self._base.path.rstrip('/')}/v1/{quote(self.project_id, safe='')}{path}"
        headers = {"Content-Type": "application/json", "User-Agent": self._user_agent}
        host = self._base.raw_host or ""
        if self._base.explicit_port:
            host = f"{host}:{self._base.port}"
        return OutgoingRequest(method, host, full_path, query, headers, body)

    async def _send_with_auth(
        self, operation: str, request: OutgoingRequest
    ) -> tuple[bytes, CIMultiDict[str]]:
        credential = await self._auth.credential(request)
        try:
            return await self._send(operation, request, credential.headers)
        except AuthError as exc:
            if not await self._auth.renew(credential, exc):
                raise
        credential = await self._auth.credential(request)
        return await self._send(operation, request, credential.headers)

    async def _send(
        self, operation: str, request: OutgoingRequest, auth_headers: Mapping[str, str]
    ) -> tuple[bytes, CIMultiDict[str]]:
        query = canonical_query_string(request.query)
        target = f"{request.path}?{query}" if query else request.path
        url = URL(str(self._base.origin()) + target, encoded=True)
        session = await self.session()
        headers = {**request.headers, **auth_headers}
        try:
            async with session.request(
                request.method, url, data=request.body or None, headers=headers
            ) as resp:
                raw = await resp.read()
                status, resp_headers = resp.status, resp.headers.copy()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _transport_error(exc, operation, request.method) from exc
        if status >= 400:
            raise error_from_response(
                status=status,
                headers=resp_headers,
                body=raw,
                operation=operation,
                method=request.method,
                now_epoch_s=self._clock.time(),
            )
        return raw, resp_headers


def _more_pages(page_len: int, seen: int, total: int | None, limit: int) -> bool:
    """Another page exists when this one was full and the total (if given) is not reached."""
    return page_len >= limit and (total is None or seen < total)


def _query_value(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _outcome(error: ApiError) -> str:
    if isinstance(error, ThrottledError):
        return "throttled"
    if isinstance(error, AuthError):
        return "auth_error"
    if isinstance(error, TransientError):
        return "transient_error"
    return "error"


def _transport_error(exc: BaseException, operation: str, method: str) -> TransientError:
    """Translate aiohttp's and asyncio's errors; a POST that may have reached the server is unknown."""
    never_sent = isinstance(exc, aiohttp.ClientConnectorError)
    kind = "timed out" if isinstance(exc, TimeoutError) else f"failed: {type(exc).__name__}"
    unknown = method != "GET" and not never_sent
    detail = " (outcome unknown: the request may have taken effect)" if unknown else ""
    return TransientError(
        f"{operation} {kind}{detail}: {exc}",
        operation=operation,
        error_msg=str(exc),
        outcome_unknown=unknown,
        unreachable=True,
    )


def _parse(
    answer: type[AnswerT], raw: bytes, headers: Mapping[str, str], *, operation: str, method: str
) -> AnswerT:
    """Validate a success body; anything unreadable becomes a :class:`MalformedResponseError`."""
    try:
        return answer.model_validate_json(raw)
    except ValidationError as exc:
        request_id = headers.get("X-Request-Id", "") or _body_request_id(raw)
        excerpt = raw[:_EXCERPT_CHARS].decode("utf-8", errors="replace")
        problem = exc.errors()[0]["msg"] if exc.errors() else str(exc)
        raise MalformedResponseError(
            f"{operation} answered something unreadable ({problem}): {excerpt!r}"
            f" (request_id={request_id or 'none'})",
            operation=operation,
            error_code="MALFORMED_RESPONSE",
            error_msg=problem,
            request_id=request_id,
            outcome_unknown=method != "GET",
        ) from exc


def _body_request_id(raw: bytes) -> str:
    try:
        decoded = json.loads(raw)
    except ValueError:
        return ""
    value = decoded.get("request_id") if isinstance(decoded, dict) else None
    return value if isinstance(value, str) else ""
