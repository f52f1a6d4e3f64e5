"""Whatever a server answers, the client either returns a typed answer or raises an ApiError.

A real aiohttp server plays the broken cloud: it answers each call with bytes chosen by hypothesis
(arbitrary JSON, truncated JSON, random bytes) and a chosen status.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from orchestrator.cph import ApiError, CphClient, PropertyUpdate, StaticTokenAuth

Call = Callable[[CphClient], Awaitable[Any]]


async def _update(client: CphClient) -> Any:
    return await client.update_properties([PropertyUpdate.build("p1", {"a": 1})])


async def _list_jobs(client: CphClient) -> Any:
    return await client.list_jobs(["r1"])


async def _list_phones(client: CphClient) -> Any:
    return [page async for page in client.iter_phones(page_size=2)]


async def _show_job(client: CphClient) -> Any:
    return await client.show_job("j1")


async def _show_phone(client: CphClient) -> Any:
    return await client.show_phone("p1")


CALLS: list[Call] = [_update, _list_jobs, _list_phones, _show_job, _show_phone]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
plausible = st.fixed_dictionaries(
    {},
    optional={
        "request_id": json_values,
        "jobs": st.lists(json_values, max_size=3) | json_values,
        "phones": st.lists(json_values, max_size=3) | json_values,
        "job_id": json_values,
        "status": json_values,
        "phone_id": json_values,
        "count": json_values,
        "error_code": json_values,
    },
)
bodies = st.one_of(
    json_values.map(lambda v: json.dumps(v).encode()),
    plausible.map(lambda v: json.dumps(v).encode()),
    plausible.map(lambda v: json.dumps(v).encode()).flatmap(
        lambda raw: st.integers(0, max(0, len(raw) - 1)).map(lambda cut: raw[:cut])
    ),
    st.binary(max_size=64),
)
statuses = st.sampled_from([200, 200, 200, 201, 400, 401, 404, 429, 500, 502])


async def _exercise(status: int, body: bytes, call: Call) -> None:
    async def answer(request: web.Request) -> web.Response:
        return web.Response(status=status, body=body, content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    auth = StaticTokenAuth(SecretStr("t"))
    try:
        async with CphClient(endpoint=f"http://127.0.0.1:{port}", project_id="p", auth=auth) as c:
            try:
                await call(c)
            except ApiError as error:
                failure: ApiError | None = error
            else:
                failure = None
        if failure is not None:
            assert failure.operation, "the error names the call it answered"
            assert str(failure)
    finally:
        await runner.cleanup()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(status=statuses, body=bodies, call=st.sampled_from(CALLS))
def test_any_answer_is_parsed_or_becomes_an_api_error(status: int, body: bytes, call: Call) -> None:
    asyncio.run(_exercise(status, body, call))
