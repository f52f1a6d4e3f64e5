"""The client's three ways in (IAM password, AK/SK, static token) against the simulator's gateway.

The simulator's clock decides when IAM tokens expire and how far an ``X-Sdk-Date`` may drift; the
auth objects get their own clocks where a test must tell a server-side rejection from the client's own
expiry check. Secrets are checked never to leak into reprs or error messages.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import SecretStr

from orchestrator.clock import FakeClock
from orchestrator.cph import (
    AkSkAuth,
    ApiError,
    AuthError,
    CphClient,
    IamPasswordAuth,
    PropertyUpdate,
    StaticTokenAuth,
)
from orchestrator.cph.auth import TOKEN_REFRESH_MARGIN_S, OutgoingRequest
from orchestrator.cph.connect import open_client
from orchestrator.errors import ConfigError
from orchestrator.settings import CphSettings
from orchestrator.simulator import SimulatorServer
from tests.conftest import SimulatorFactory

USER, PASSWORD, DOMAIN = "alice", "correct-horse-battery-9z", "acme"
AK, SK = "AKCLIENTTEST", "SK-client-test-secret-41c9"
STATIC_TOKEN = "static-token-for-auth-tests-b2d0"
TTL_S = 3600.0
IAM_LOGIN = "KeystoneCreateUserTokenByPassword"
SECRETS = (PASSWORD, SK, STATIC_TOKEN)


def fake_clock(sim: SimulatorServer) -> FakeClock:
    assert isinstance(sim.clock, FakeClock)
    return sim.clock


def assert_no_secret(*texts: str, extra: tuple[str, ...] = ()) -> None:
    for text in texts:
        for secret in (*SECRETS, *extra):
            assert secret not in text, f"a secret leaked into {text!r}"


def error_texts(error: BaseException) -> tuple[str, ...]:
    texts = [str(error), repr(error)]
    if isinstance(error, ApiError):
        texts.append(error.error_msg)
        texts.extend(str(v) for v in error.log_fields().values())
    return tuple(texts)


async def iam_simulator(simulator: SimulatorFactory, **fields: Any) -> SimulatorServer:
    fields.setdefault("phones", 5)
    return await simulator(iam_users={USER: (PASSWORD, DOMAIN)}, token_ttl_s=TTL_S, **fields)


def iam_auth(
    sim: SimulatorServer,
    *,
    clock: FakeClock | None = None,
    password: str = PASSWORD,
    iam_endpoint: str | None = None,
) -> IamPasswordAuth:
    """An IAM auth on its own clock (not the simulator's) unless told otherwise."""
    return IamPasswordAuth(
        iam_endpoint=iam_endpoint or sim.url,
        username=USER,
        password=SecretStr(password),
        domain=DOMAIN,
        project_id=sim.config.project_id,
        region=None,
        clock=clock or FakeClock(),
    )


def client_for(sim: SimulatorServer, auth: Any) -> CphClient:
    return CphClient(endpoint=sim.url, project_id=sim.config.project_id, auth=auth, clock=sim.clock)


async def current_token(auth: IamPasswordAuth) -> str:
    credential = await auth.credential(OutgoingRequest("GET", "h", "/", [], {}, b""))
    return credential.headers["X-Auth-Token"]


# -- IAM password ----------------------------------------------------------------------------------


async def test_iam_logs_in_once_and_reuses_the_token(simulator: SimulatorFactory) -> None:
    sim = await iam_simulator(simulator)
    auth = iam_auth(sim)
    phone_id = sim.state.phone_ids()[0]
    async with client_for(sim, auth) as client:
        for _ in range(3):
            await client.show_phone(phone_id)
        await client.update_properties([PropertyUpdate.build(phone_id, {"a": 1})])
        token = await current_token(auth)
        texts = (repr(auth), repr(client), str(auth))
    assert auth.logins == 1
    stats = sim.state.stats()
    assert stats["requests"][IAM_LOGIN] == 1
    assert stats["auth_failures"] == 0
    assert client.calls == {"query.ok": 3, "submit.ok": 1}
    assert_no_secret(*texts, extra=(token,))


async def test_concurrent_first_calls_share_one_login(simulator: SimulatorFactory) -> None:
    sim = await iam_simulator(simulator)
    auth = iam_auth(sim)
    phone_id = sim.state.phone_ids()[0]
    async with client_for(sim, auth) as client:
        await asyncio.gather(*(client.show_phone(phone_id) for _ in range(20)))
    assert auth.logins == 1
    assert sim.state.stats()["requests"][IAM_LOGIN] == 1


async def test_server_side_expiry_renews_once_and_the_call_succeeds(
    simulator: SimulatorFactory,
) -> None:
    sim = await iam_simulator(simulator)
    auth = iam_auth(sim)  # its clock stays put: only the server knows the token expired
    phone_id = sim.state.phone_ids()[0]
    async with client_for(sim, auth) as client:
        await client.show_phone(phone_id)
        first_token = await current_token(auth)
        fake_clock(sim).advance(TTL_S + 1)
        detail = await client.show_phone(phone_id)
        second_token = await current_token(auth)
    assert detail.phone_id == phone_id
    assert auth.logins == 2
    assert second_token != first_token
    stats = sim.state.stats()
    assert stats["auth_failures"] == 1
    assert stats["requests"][IAM_LOGIN] == 2
    assert stats["requests"]["ShowCloudPhoneDetail"] == 3
    assert client.calls == {"query.ok": 2}


async def test_concurrent_callers_after_expiry_cause_exactly_one_login(
    simulator: SimulatorFactory,
) -> None:
    sim = await iam_simulator(simulator, phones=20)
    auth = iam_auth(sim)
    phone_ids = sim.state.phone_ids()
    async with client_for(sim, auth) as client:
        await client.show_phone(phone_ids[0])
        fake_clock(sim).advance(TTL_S + 1)
        details = await asyncio.gather(*(client.show_phone(pid) for pid in phone_ids))
    assert [d.phone_id for d in details] == phone_ids
    assert auth.logins == 2
    stats = sim.state.stats()
    assert stats["requests"][IAM_LOGIN] == 2
    assert stats["auth_failures"] == 20
    assert client.calls == {"query.ok": 21}


async def test_token_is_renewed_before_it_expires_by_the_auth_clock(
    simulator: SimulatorFactory,
) -> None:
    sim = await iam_simulator(simulator)
    auth_clock = FakeClock()
    auth = iam_auth(sim, clock=auth_clock)
    phone_id = sim.state.phone_ids()[0]

    def advance_both(seconds: float) -> None:
        auth_clock.advance(seconds)
        fake_clock(sim).advance(seconds)

    async with client_for(sim, auth) as client:
        await client.show_phone(phone_id)
        advance_both(TTL_S - TOKEN_REFRESH_MARGIN_S - 1)
        await client.show_phone(phone_id)
        assert auth.logins == 1
        advance_both(1)
        await client.show_phone(phone_id)
        assert auth.logins == 2
        await client.show_phone(phone_id)
    assert auth.logins == 2
    stats = sim.state.stats()
    assert stats["auth_failures"] == 0, "renewed before the server ever refused the token"
    assert stats["requests"][IAM_LOGIN] == 2


async def test_a_token_refused_again_after_renewal_is_not_renewed_in_a_loop(
    simulator: SimulatorFactory,
) -> None:
    """IAM hands out tokens the CPH gateway does not accept: one renewal, then the AuthError."""
    iam = await simulator(phones=0)  # open access: IAM issues a token to anyone
    cph = await simulator(phones=2, token=STATIC_TOKEN)
    auth = iam_auth(cph, iam_endpoint=iam.url)
    async with client_for(cph, auth) as client:
        with pytest.raises(AuthError) as caught:
            await client.show_phone(cph.state.phone_ids()[0])
    assert caught.value.error_code == "APIG.0301"
    assert auth.logins == 2
    assert cph.state.stats()["auth_failures"] == 2
    assert client.calls == {"query.auth_error": 1}
    assert_no_secret(*error_texts(caught.value))


async def test_wrong_password_is_an_auth_error_without_the_password(
    simulator: SimulatorFactory,
) -> None:
    sim = await iam_simulator(simulator)
    wrong = "wrong-password-3e8f"
    auth = iam_auth(sim, password=wrong)
    async with client_for(sim, auth) as client:
        with pytest.raises(AuthError) as caught:
            await client.show_phone(sim.state.phone_ids()[0])
        with pytest.raises(AuthError):
            await client.update_properties([PropertyUpdate.build(sim.state.phone_ids()[0], {})])
        texts = (repr(auth), repr(client))
    error = caught.value
    assert error.status == 401
    assert error.operation == "IamLogin"
    assert USER in str(error)
    assert auth.logins == 0
    stats = sim.state.stats()
    assert stats["requests"][IAM_LOGIN] == 2
    assert stats["requests"].get("ShowCloudPhoneDetail", 0) == 0, "nothing sent without a token"
    assert client.calls == {"query.auth_error": 1, "submit.auth_error": 1}
    assert_no_secret(*texts, *error_texts(error), extra=(wrong,))


# -- AK/SK -----------------------------------------------------------------------------------------


async def aksk_simulator(simulator: SimulatorFactory, **fields: Any) -> SimulatorServer:
    return await simulator(phones=60, ak=AK, sk=SK, **fields)


def aksk_auth(sim: SimulatorServer, *, sk: str = SK, clock: FakeClock | None = None) -> AkSkAuth:
    return AkSkAuth(
        AK, SecretStr(sk), project_id=sim.config.project_id, clock=clock or fake_clock(sim)
    )


async def test_aksk_signs_every_operation(simulator: SimulatorFactory) -> None:
    sim = await aksk_simulator(simulator)
    auth = aksk_auth(sim)
    phone_ids = sim.state.phone_ids()
    server_id = sim.state.phone(phone_ids[0])["server_id"]
    async with client_for(sim, auth) as client:
        answer = await client.update_properties(
            [PropertyUpdate.build(pid, {"persist.sys.locale": "zh-CN ü"}) for pid in phone_ids[:3]]
        )
        second = await client.restart_phones(phone_ids[3:5], image_id="img 1")
        job_id = answer.jobs[0].job_id
        assert job_id is not None
        await client.show_job(job_id)
        jobs = await client.list_jobs([answer.request_id, second.request_id])
        await client.show_phone(phone_ids[0])
        odd = [p async for page in client.iter_phones(phone_name="a b+c") for p in page]
        named = [p async for page in client.iter_phones(phone_name="phone-00001") for p in page]
        on_server = [
            p
            async for page in client.iter_phones(server_id=server_id, status=2, page_size=7)
            for p in page
        ]
    assert len(jobs) == 5
    assert odd == []
    assert len(named) == 10
    assert on_server
    assert {p.server_id for p in on_server} == {server_id}
    assert sim.state.stats()["auth_failures"] == 0
    assert set(client.calls) == {"submit.ok", "query.ok"}


async def test_aksk_signs_each_attempt_with_a_fresh_date(simulator: SimulatorFactory) -> None:
    """The gateway allows 15 minutes of skew; the calls are 20 minutes apart and both pass."""
    sim = await aksk_simulator(simulator)
    auth = aksk_auth(sim)  # shares the simulator's clock, as two synchronised real clocks would
    phone_id = sim.state.phone_ids()[0]
    async with client_for(sim, auth) as client:
        await client.show_phone(phone_id)
        fake_clock(sim).advance(1200)
        await client.show_phone(phone_id)
        await client.update_properties([PropertyUpdate.build(phone_id, {"a": 1})])
    assert sim.state.stats()["auth_failures"] == 0


async def test_aksk_with_a_skewed_clock_is_refused(simulator: SimulatorFactory) -> None:
    """The control for the test above: a date 20 minutes off is indeed refused."""
    sim = await aksk_simulator(simulator)
    auth = aksk_auth(sim, clock=FakeClock())
    fake_clock(sim).advance(1200)
    async with client_for(sim, auth) as client:
        with pytest.raises(AuthError) as caught:
            await client.show_phone(sim.state.phone_ids()[0])
    assert caught.value.error_code == "APIG.0303"
    assert "X-Sdk-Date" in caught.value.error_msg


async def test_aksk_wrong_secret_is_a_final_auth_error(simulator: SimulatorFactory) -> None:
    sim = await aksk_simulator(simulator)
    wrong = "SK-wrong-secret-0000"
    auth = aksk_auth(sim, sk=wrong)
    async with client_for(sim, auth) as client:
        with pytest.raises(AuthError) as caught:
            await client.update_properties([PropertyUpdate.build(sim.state.phone_ids()[0], {})])
        texts = (repr(auth), repr(client))
    error = caught.value
    assert (error.status, error.error_code) == (401, "APIG.0303")
    assert error.token_expired is False
    assert error.request_id in str(error)
    assert "UpdateCloudPhoneProperty" in str(error)
    stats = sim.state.stats()
    assert stats["auth_failures"] == 1, "a refused signature is not resent"
    assert stats["jobs"]["created"] == 0
    assert client.calls == {"submit.auth_error": 1}
    assert_no_secret(*texts, *error_texts(error), extra=(wrong,))
    assert AK in repr(auth)


async def test_aksk_unknown_access_key_is_not_resent(simulator: SimulatorFactory) -> None:
    sim = await aksk_simulator(simulator)
    auth = AkSkAuth("AKOTHER", SecretStr(SK), project_id="proj123", clock=fake_clock(sim))
    async with client_for(sim, auth) as client:
        with pytest.raises(AuthError):
            await client.show_phone(sim.state.phone_ids()[0])
    assert sim.state.stats()["auth_failures"] == 1


# -- open_client -----------------------------------------------------------------------------------


def iam_settings(sim: SimulatorServer, **fields: Any) -> CphSettings:
    values: dict[str, Any] = {
        "endpoint": sim.url,
        "iam_endpoint": sim.url,
        "iam_username": USER,
        "iam_password": SecretStr(PASSWORD),
        "iam_domain": DOMAIN,
        **fields,
    }
    return CphSettings(**values)


async def test_open_client_with_a_token(simulator: SimulatorFactory) -> None:
    sim = await simulator(phones=2, token=STATIC_TOKEN)
    settings = CphSettings(
        endpoint=sim.url, project_id=sim.config.project_id, auth_token=SecretStr(STATIC_TOKEN)
    )
    client = await open_client(settings, clock=sim.clock)
    async with client:
        await client.show_phone(sim.state.phone_ids()[0])
        assert_no_secret(repr(client), repr(settings))
    assert sim.state.stats()["auth_failures"] == 0


async def test_open_client_with_iam_learns_the_project_from_the_token(
    simulator: SimulatorFactory,
) -> None:
    sim = await iam_simulator(simulator, project_id="projfromiam")
    settings = iam_settings(sim, region="cn-north-4")
    client = await open_client(settings, clock=FakeClock())
    async with client:
        assert client.project_id == "projfromiam"
        await client.show_phone(sim.state.phone_ids()[0])
        assert_no_secret(repr(client), repr(settings))
    stats = sim.state.stats()
    assert stats["requests"][IAM_LOGIN] == 1, "the token of the discovery login is reused"
    assert stats["auth_failures"] == 0


async def test_open_client_with_iam_and_a_project_id(simulator: SimulatorFactory) -> None:
    sim = await iam_simulator(simulator)
    client = await open_client(iam_settings(sim, project_id="proj123"), clock=FakeClock())
    async with client:
        assert client.project_id == "proj123"
        await client.show_phone(sim.state.phone_ids()[0])
    assert sim.state.stats()["requests"][IAM_LOGIN] == 1


async def test_open_client_with_aksk_wins_over_a_token(simulator: SimulatorFactory) -> None:
    sim = await aksk_simulator(simulator)
    settings = CphSettings(
        endpoint=sim.url,
        project_id=sim.config.project_id,
        ak=AK,
        sk=SecretStr(SK),
        auth_token=SecretStr(STATIC_TOKEN),
    )
    client = await open_client(settings, clock=sim.clock)
    async with client:
        await client.show_phone(sim.state.phone_ids()[0])
        assert_no_secret(repr(client), repr(settings))
    assert sim.state.stats()["auth_failures"] == 0


async def test_open_client_prefers_iam_over_a_token(simulator: SimulatorFactory) -> None:
    sim = await iam_simulator(simulator)
    settings = iam_settings(sim, project_id="proj123", auth_token=SecretStr("ignored-token"))
    client = await open_client(settings, clock=FakeClock())
    async with client:
        await client.show_phone(sim.state.phone_ids()[0])
    assert sim.state.stats()["requests"][IAM_LOGIN] == 1


async def test_open_client_honours_an_explicit_mode(simulator: SimulatorFactory) -> None:
    sim = await simulator(phones=2, token=STATIC_TOKEN)
    settings = CphSettings(
        endpoint=sim.url,
        project_id=sim.config.project_id,
        auth="token",
        auth_token=SecretStr(STATIC_TOKEN),
        ak=AK,
        sk=SecretStr(SK),
    )
    client = await open_client(settings, clock=sim.clock)
    async with client:
        await client.show_phone(sim.state.phone_ids()[0])
    assert sim.state.stats()["auth_failures"] == 0


async def test_open_client_with_a_wrong_iam_password_raises_and_closes(
    simulator: SimulatorFactory,
) -> None:
    sim = await iam_simulator(simulator)
    settings = iam_settings(sim, region="cn-north-4", iam_password=SecretStr("nope-wrong-pw"))
    with pytest.raises(AuthError) as caught:
        await open_client(settings, clock=FakeClock())
    assert_no_secret(*error_texts(caught.value), extra=("nope-wrong-pw",))


@pytest.mark.parametrize(
    ("fields", "needs"),
    [
        ({}, "no CPH credentials"),
        ({"auth": "token"}, "CPH_AUTH_TOKEN"),
        ({"auth": "aksk", "ak": AK, "project_id": "p"}, "HUAWEICLOUD_SDK_SK"),
        ({"auth": "aksk", "sk": SecretStr(SK), "project_id": "p"}, "HUAWEICLOUD_SDK_AK"),
        ({"ak": AK, "sk": SecretStr(SK)}, "CPH_PROJECT_ID"),
        ({"auth": "iam", "iam_username": USER, "iam_domain": DOMAIN}, "CPH_IAM_PASSWORD"),
        (
            {"iam_username": USER, "iam_password": SecretStr(PASSWORD), "project_id": "p"},
            "CPH_IAM_DOMAIN",
        ),
        (
            {"iam_username": USER, "iam_password": SecretStr(PASSWORD), "iam_domain": DOMAIN},
            "CPH_PROJECT_ID or CPH_REGION",
        ),
    ],
)
async def test_open_client_rejects_missing_credentials(fields: dict[str, Any], needs: str) -> None:
    settings = CphSettings(endpoint="http://127.0.0.1:9", **fields)
    with pytest.raises(ConfigError, match=needs) as caught:
        await open_client(settings, clock=FakeClock())
    assert_no_secret(str(caught.value), repr(settings))


async def test_open_client_needs_an_endpoint_or_region() -> None:
    settings = CphSettings(project_id="p", auth_token=SecretStr(STATIC_TOKEN))
    with pytest.raises(ConfigError, match="CPH_ENDPOINT or CPH_REGION"):
        await open_client(settings, clock=FakeClock())


# -- secrets in reprs ------------------------------------------------------------------------------


def test_auth_reprs_hide_secrets() -> None:
    clock = FakeClock()
    auths: list[object] = [
        StaticTokenAuth(SecretStr(STATIC_TOKEN)),
        AkSkAuth(AK, SecretStr(SK), project_id="p", clock=clock),
        IamPasswordAuth(
            iam_endpoint="http://iam",
            username=USER,
            password=SecretStr(PASSWORD),
            domain=DOMAIN,
            project_id="p",
            region=None,
            clock=clock,
        ),
    ]
    for auth in auths:
        assert_no_secret(repr(auth), str(auth))
