"""Huawei's own SDK against the simulator: it must sign requests the simulator accepts and parse every answer.

The SDK is the closest thing to the real service we can run, so agreement here is what makes the
simulator "faithful" rather than merely self-consistent with our client. The SDK is synchronous
(``requests``), so its calls run in a thread while the simulator serves on this test's loop, on the real
clock because the SDK signs with the real time. The SDK writes ``~/.huaweicloud/application_id`` when it
is imported, so ``HOME`` points at a temporary directory first.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from orchestrator.clock import SystemClock
from orchestrator.cph.signer import CanonicalParts, authorization_header
from orchestrator.simulator import PROFILES, SimulatorServer, apply_overrides

StartSimulator = Callable[..., Awaitable[SimulatorServer]]
AK, SK, PROJECT = "AKCONFORMANCE", "SKCONFORMANCE-secret", "proj123"


def import_sdk(monkeypatch: pytest.MonkeyPatch, home: Path) -> Any:
    """Import the SDK with ``HOME`` in a temporary directory; returns the ``huaweicloudsdkcph.v1`` module."""
    monkeypatch.setenv("HOME", str(home))
    import huaweicloudsdkcph.v1 as cph

    return cph


def sdk_client(cph: Any, sim: SimulatorServer) -> Any:
    from huaweicloudsdkcore.auth.credentials import BasicCredentials

    credentials = BasicCredentials(AK, SK, PROJECT)
    return (
        cph.CphClient.new_builder().with_credentials(credentials).with_endpoints([sim.url]).build()
    )


async def test_the_official_sdk_drives_the_simulator(
    simulator: StartSimulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cph = import_sdk(monkeypatch, tmp_path)
    instant = apply_overrides(PROFILES["none"], {"job_duration": "fixed:0"})
    sim = await simulator(
        phones=30, project_id=PROJECT, ak=AK, sk=SecretStr(SK), profile=instant, clock=SystemClock()
    )
    client = sdk_client(cph, sim)
    phone_ids = sim.state.phone_ids()[:2]
    props = {"persist.sys.locale": "en-US", "ro.install.auto": 1}

    body = cph.UpdateCloudPhonePropertyRequestBody(
        phones=[
            cph.PropertyToUpdate(phone_id=pid, _property=json.dumps(props)) for pid in phone_ids
        ]
    )
    update = await asyncio.to_thread(
        client.update_cloud_phone_property, cph.UpdateCloudPhonePropertyRequest(body=body)
    )
    assert update.request_id
    assert len(update.jobs) == 2
    assert [job.phone_id for job in update.jobs] == phone_ids
    assert all(job.job_id and job.error_code is None for job in update.jobs)

    job = await asyncio.to_thread(client.show_job, cph.ShowJobRequest(job_id=update.jobs[0].job_id))
    assert (job.status, job.phone_id, job.job_id) == (2, phone_ids[0], update.jobs[0].job_id)
    assert job.request_id
    assert job.server_id
    assert job.begin_time
    assert job.end_time

    jobs = await asyncio.to_thread(
        client.list_jobs, cph.ListJobsRequest(request_id=update.request_id, limit=10)
    )
    assert jobs.request_id
    assert [j.phone_id for j in jobs.jobs] == phone_ids
    assert all(j.status == 2 and j.job_id and j.end_time for j in jobs.jobs)

    await _check_listing_and_detail(cph, client, sim, phone_ids[0], props)
    assert sim.state.stats()["auth_failures"] == 0


async def _check_listing_and_detail(
    cph: Any, client: Any, sim: SimulatorServer, phone_id: str, props: dict[str, Any]
) -> None:
    listing = await asyncio.to_thread(
        client.list_cloud_phones,
        cph.ListCloudPhonesRequest(offset=5, limit=10, phone_name="phone-0000"),
    )
    assert listing.count == 30
    assert len(listing.phones) == 10
    phone = listing.phones[0]
    assert phone.phone_name == "phone-000024"
    assert phone.status in (2, -7, 8)
    assert phone.phone_id
    assert phone.server_id
    assert phone.create_time
    assert phone.metadata is not None

    detail = await asyncio.to_thread(
        client.show_cloud_phone_detail, cph.ShowCloudPhoneDetailRequest(phone_id=phone_id)
    )
    assert detail.phone_id == phone_id
    assert detail.request_id
    assert json.loads(detail._property) == props
    assert detail.access_infos[0].listen_port
    assert detail.phone_data_volume.volume_size
    assert detail.custom_property == {}


async def test_the_sdk_sees_simulator_errors(
    simulator: StartSimulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cph = import_sdk(monkeypatch, tmp_path)
    from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException

    sim = await simulator(
        phones=1, project_id=PROJECT, ak=AK, sk=SecretStr(SK), clock=SystemClock()
    )
    client = sdk_client(cph, sim)
    with pytest.raises(ClientRequestException) as raised:
        await asyncio.to_thread(
            client.show_cloud_phone_detail, cph.ShowCloudPhoneDetailRequest(phone_id="0" * 32)
        )
    assert (raised.value.status_code, raised.value.error_code) == (404, "CPS.0005")
    assert raised.value.request_id


def test_our_signer_matches_the_sdk_signer(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import_sdk(monkeypatch, tmp_path)
    from huaweicloudsdkcore.auth.credentials import BasicCredentials
    from huaweicloudsdkcore.sdk_request import SdkRequest
    from huaweicloudsdkcore.signer.signer import Signer

    path = f"/v1/{PROJECT}/cloud-phone/phones/batch-update-property"
    query = [("limit", "10"), ("phone_name", "a b+c,d")]
    headers = {
        "Content-Type": "application/json",
        "Host": "cph.cn-north-4.myhuaweicloud.com",
        "X-Project-Id": PROJECT,
        "X-Sdk-Date": "20240101T000000Z",
    }
    body = b'{"phones":[{"phone_id":"p1","property":"{\\"a\\":1}"}]}'
    request = SdkRequest(
        method="POST",
        schema="https",
        host="cph.cn-north-4.myhuaweicloud.com",
        resource_path=path,
        query_params=list(query),
        header_params=dict(headers),
        body=body,
    )
    sdk_authorization = (
        Signer(BasicCredentials(AK, SK, PROJECT)).sign(request).header_params["Authorization"]
    )
    ours = authorization_header(AK, SK, CanonicalParts("POST", path, query, headers, body))
    assert ours == sdk_authorization
