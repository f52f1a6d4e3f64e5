"""The three ways to authenticate to CPH: a static token, an IAM password login, or AK/SK signing.

Each is an :class:`Auth`: it adds headers to a request about to be sent and, when the gateway rejects
a token as expired, may obtain a new one. The client calls :meth:`Auth.credential` for *every attempt*, so
AK/SK signatures always carry a fresh ``X-Sdk-Date``, and IAM tokens are renewed shortly before expiry.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import aiohttp
import structlog
from pydantic import SecretStr

from orchestrator.clock import Clock
from orchestrator.cph.errors import (
    ApiError,
    AuthError,
    ThrottledError,
    TransientError,
    error_from_response,
)
from orchestrator.cph.signer import CanonicalParts, authorization_header, format_sdk_date

__all__ = [
    "AkSkAuth",
    "Auth",
    "IamPasswordAuth",
    "OutgoingRequest",
    "StaticTokenAuth",
]

log = structlog.get_logger("orchestrator.cph.auth")

TOKEN_REFRESH_MARGIN_S = 300.0
"""Renew an IAM token this long before its ``expires_at`` so no call races the expiry."""
IAM_TIMEOUT_S = 30.0
FALLBACK_TOKEN_LIFETIME_S = 3600.0
"""Assumed lifetime of a token whose answer lacks a readable ``expires_at``."""


SessionProvider = Callable[[], Awaitable[aiohttp.ClientSession]]
"""Returns the client's open session (created lazily inside the running loop)."""


@dataclass(frozen=True, slots=True)
class OutgoingRequest:
    """What an :class:`Auth` may read of a request: enough to sign it."""

    method: str
    host: str
    path: str
    query: Sequence[tuple[str, str]]
    headers: Mapping[str, str]
    body: bytes


@dataclass(frozen=True, slots=True)
class Credential:
    """Headers to add and the generation of the credential that produced them."""

    headers: dict[str, str]
    generation: int = 0


class Auth(Protocol):
    """Adds credentials to requests; may renew them once the gateway says they expired."""

    def bind(self, session: SessionProvider) -> None:
        """Called by the client so that logins share its connection pool."""
        ...

    async def credential(self, request: OutgoingRequest) -> Credential:
        """Headers for this attempt."""
        ...

    async def renew(self, rejected: Credential, error: AuthError) -> bool:
        """Try to fix an auth rejection; True when resending may now succeed."""
        ...


class StaticTokenAuth:
    """A token obtained elsewhere (``CPH_AUTH_TOKEN``), sent as ``X-Auth-Token``; never renewed."""

    def __init__(self, token: SecretStr) -> None:
        self._token = token

    def __repr__(self) -> str:
        return "StaticTokenAuth(token=SecretStr('**********'))"

    def bind(self, session: SessionProvider) -> None:
        """A static token needs no connection of its own."""

    async def credential(self, request: OutgoingRequest) -> Credential:
        """Send the token as is."""
        return Credential({"X-Auth-Token": self._token.get_secret_value()})

    async def renew(self, rejected: Credential, error: AuthError) -> bool:
        """A static token cannot be renewed: the rejection is final."""
        return False


class AkSkAuth:
    """``SDK-HMAC-SHA256`` signing with an access key and secret key, as the official SDK signs."""

    def __init__(self, access_key: str, secret_key: SecretStr, *, project_id: str, clock: Clock):
        self._access_key = access_key
        self._secret_key = secret_key
        self._project_id = project_id
        self._clock = clock

    def __repr__(self) -> str:
        return f"AkSkAuth(access_key={self._access_key!r}, secret_key=SecretStr('**********'))"

    def bind(self, session: SessionProvider) -> None:
        """Signing is local: no connection needed."""

    async def credential(self, request: OutgoingRequest) -> Credential:
        """Sign this attempt with the current time."""
        signed = {
            **request.headers,
            "Host": request.host,
            "X-Project-Id": self._project_id,
            "X-Sdk-Date": format_sdk_date(self._clock.time()),
        }
        parts = CanonicalParts(request.method, request.path, request.query, signed, request.body)
        signed["Authorization"] = authorization_header(
            self._access_key, self._secret_key.get_secret_value(), parts
        )
        return Credential({k: v for k, v in signed.items() if k not in request.headers})

    async def renew(self, rejected: Credential, error: AuthError) -> bool:
        """A refused signature is a wrong key or a skewed clock: resending will not help."""
        return False


@dataclass(slots=True)
class _Token:
    value: str
    renew_at_epoch_s: float
    generation: int


@dataclass(slots=True)
class IamPasswordAuth:
    """Log in to IAM with a user name and password; cache the token; renew it once when rejected.

    One login serves every concurrent caller: a lock guards renewal, and a rejection is acted on only
    if it was made with the newest token (a *generation* check), so a burst of 401s costs one login.
    """

    iam_endpoint: str
    username: str
    password: SecretStr = field(repr=False)
    domain: str
    project_id: str | None
    region: str | None
    clock: Clock
    session: SessionProvider | None = field(default=None, repr=False)
    refresh_margin_s: float = TOKEN_REFRESH_MARGIN_S
    logins: int = 0
    scoped_project_id: str | None = None
    _token: _Token | None = field(default=None, repr=False)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)

    def bind(self, session: SessionProvider) -> None:
        """Log in through the client's session."""
        self.session = session

    async def credential(self, request: OutgoingRequest) -> Credential:
        """The cached token, logging in first when there is none or it is about to expire."""
        token = self._token
        if token is None or self._expiring(token):
            token = await self._login_once(token.generation if token else -1)
        return Credential({"X-Auth-Token": token.value}, token.generation)

    async def renew(self, rejected: Credential, error: AuthError) -> bool:
        """Log in again if the rejected token is still the newest; True when a fresh one is ready."""
        if not error.token_expired:
            return False
        await self._login_once(rejected.generation)
        return True

    async def ensure_token(self) -> None:
        """Log in now unless a fresh token is cached (learns ``scoped_project_id``)."""
        token = self._token
        if token is None or self._expiring(token):
            await self._login_once(token.generation if token else -1)

    def _expiring(self, token: _Token) -> bool:
        return self.clock.time() >= token.renew_at_epoch_s

    async def _login_once(self, stale_generation: int) -> _Token:
        async with self._lock:
            current = self._token
            renewed_meanwhile = current is not None and current.generation != stale_generation
            if current is not None and renewed_meanwhile and not self._expiring(current):
                return current
            fresh = await self._login(next_generation=(current.generation + 1) if current else 0)
            self._token = fresh
            return fresh

    def _scope(self) -> dict[str, object]:
        if self.project_id:
            return {"project": {"id": self.project_id}}
        if self.region:
            return {"project": {"name": self.region}}
        raise AuthError("IAM login needs CPH_PROJECT_ID or CPH_REGION to scope the token")

    def _login_body(self) -> bytes:
        user = {
            "name": self.username,
            "password": self.password.get_secret_value(),
            "domain": {"name": self.domain},
        }
        identity = {"methods": ["password"], "password": {"user": user}}
        return json.dumps({"auth": {"identity": identity, "scope": self._scope()}}).encode()

    async def _login(self, *, next_generation: int) -> _Token:
        url = self.iam_endpoint.rstrip("/") + "/v3/auth/tokens"
        if self.session is None:
            raise RuntimeError("IamPasswordAuth is not bound to a client session")
        session = await self.session()
        try:
            async with session.post(
                url,
                params={"nocatalog": "true"},
                data=self._login_body(),
                headers={"Content-Type": "application/json;charset=utf8"},
                timeout=aiohttp.ClientTimeout(total=IAM_TIMEOUT_S),
            ) as resp:
                raw = await resp.read()
                status, headers = resp.status, resp.headers.copy()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransientError(f"IAM login failed: {exc!r}", operation="IamLogin") from exc
        if status != 201 or not headers.get("X-Subject-Token"):
            raise self._login_error(status, headers, raw)
        body = _json_object(raw)
        token = _Token(headers["X-Subject-Token"], self._renew_at(body), next_generation)
        self.scoped_project_id = _project_id(body) or self.project_id
        self.logins += 1
        log.info("auth.token_refreshed", username=self.username, generation=next_generation)
        return token

    def _login_error(self, status: int, headers: Mapping[str, str], raw: bytes) -> ApiError:
        error = error_from_response(
            status=status,
            headers=headers,
            body=raw,
            operation="IamLogin",
            method="POST",
            now_epoch_s=self.clock.time(),
        )
        if isinstance(error, TransientError | ThrottledError):
            return error
        reference = f" (request_id={error.request_id})" if error.request_id else ""
        return AuthError(
            f"IamLogin: IAM refused the login of user {self.username!r}:"
            f" {error.error_msg or status}{reference}",
            status=status,
            error_code=error.error_code,
            error_msg=error.error_msg,
            request_id=error.request_id,
            operation="IamLogin",
        )

    def _renew_at(self, body: dict[str, Any]) -> float:
        """When to log in again, on our clock.

        The lifetime is ``expires_at - issued_at`` as IAM states it, counted from now, so a skew
        between IAM's clock and ours does not matter; renewal comes ``refresh_margin_s`` early,
        or halfway through a lifetime shorter than twice the margin.
        """
        lifetime = _lifetime_s(body)
        if lifetime is None:
            lifetime = FALLBACK_TOKEN_LIFETIME_S
        margin = min(self.refresh_margin_s, lifetime / 2)
        return self.clock.time() + lifetime - margin


def _iso_epoch_s(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _lifetime_s(body: dict[str, Any]) -> float | None:
    """``expires_at - issued_at`` of an IAM token answer, when both are readable and sane."""
    token = body.get("token")
    if not isinstance(token, dict):
        return None
    expires = _iso_epoch_s(token.get("expires_at"))
    issued = _iso_epoch_s(token.get("issued_at"))
    if expires is None or issued is None or expires <= issued:
        return None
    return expires - issued


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        decoded = json.loads(raw)
    except ValueError:
        return {}
    return decoded if isinstance(decoded, dict) else {}


def _project_id(body: dict[str, Any]) -> str | None:
    """The project the token is scoped to (``token.project.id``), when IAM says."""
    token = body.get("token")
    project = token.get("project") if isinstance(token, dict) else None
    value = project.get("id") if isinstance(project, dict) else None
    return value if isinstance(value, str) and value else None
