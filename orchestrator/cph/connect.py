"""Build a ready client from settings: pick the auth mode, resolve the endpoint and project."""

from __future__ import annotations

from orchestrator.clock import Clock, SystemClock
from orchestrator.cph.auth import AkSkAuth, Auth, IamPasswordAuth, StaticTokenAuth
from orchestrator.cph.client import CphClient
from orchestrator.cph.errors import ApiError
from orchestrator.errors import ConfigError
from orchestrator.settings import CphSettings

__all__ = ["open_client"]


def _require(value: str | None, env_name: str, mode: str) -> str:
    if not value:
        raise ConfigError(f"{mode} authentication needs {env_name}")
    return value


def _auth(settings: CphSettings, clock: Clock) -> Auth:
    mode = settings.resolved_auth()
    if mode == "aksk":
        if settings.sk is None:
            raise ConfigError("AK/SK authentication needs HUAWEICLOUD_SDK_SK")
        ak = _require(settings.ak, "HUAWEICLOUD_SDK_AK", "AK/SK")
        project_id = _require(settings.project_id, "CPH_PROJECT_ID", "AK/SK")
        return AkSkAuth(ak, settings.sk, project_id=project_id, clock=clock)
    if mode == "iam":
        if settings.iam_password is None:
            raise ConfigError("IAM password authentication needs CPH_IAM_PASSWORD")
        if not (settings.project_id or settings.region):
            raise ConfigError("IAM password authentication needs CPH_PROJECT_ID or CPH_REGION")
        return IamPasswordAuth(
            iam_endpoint=settings.resolved_iam_endpoint(),
            username=_require(settings.iam_username, "CPH_IAM_USERNAME", "IAM password"),
            password=settings.iam_password,
            domain=_require(settings.iam_domain, "CPH_IAM_DOMAIN", "IAM password"),
            project_id=settings.project_id,
            region=settings.region,
            clock=clock,
        )
    if settings.auth_token is None:
        raise ConfigError("token authentication needs CPH_AUTH_TOKEN")
    return StaticTokenAuth(settings.auth_token)


async def _project_id(settings: CphSettings, auth: Auth, client: CphClient) -> str:
    if settings.project_id:
        return settings.project_id
    if isinstance(auth, IamPasswordAuth):
        await auth.ensure_token()
        if auth.scoped_project_id:
            return auth.scoped_project_id
    raise ConfigError("set CPH_PROJECT_ID: the project could not be learnt from IAM")


async def open_client(settings: CphSettings, *, clock: Clock | None = None) -> CphClient:
    """A client for the configured endpoint and credentials; the caller closes it.

    With IAM and only a region, logs in first to learn the project ID from the token's scope.
    """
    clock = clock or SystemClock()
    auth = _auth(settings, clock)
    client = CphClient(
        endpoint=settings.resolved_endpoint(),
        project_id=settings.project_id or "",
        auth=auth,
        clock=clock,
        max_connections=settings.max_connections,
        timeout_s=settings.timeout_s,
    )
    try:
        client.project_id = await _project_id(settings, auth, client)
    except (ApiError, ConfigError):
        await client.close()
        raise
    return client
