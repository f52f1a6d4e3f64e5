"""The gateway's authentication: static or IAM-issued ``X-Auth-Token``, or AK/SK ``SDK-HMAC-SHA256``.

Signatures are checked with :mod:`orchestrator.cph.signer` over the request *as received* (method, path,
query pairs, the headers named in ``SignedHeaders``, body), so a client that signs one thing and sends
another is caught here. Answers never echo a token or the secret key.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator.clock import Clock
from orchestrator.cph.signer import CanonicalParts, parse_authorization, parse_sdk_date, signature
from orchestrator.simulator.config import SimulatorConfig
from orchestrator.simulator.wire import SIGNATURE_ERROR_CODE, TOKEN_ERROR_CODE, Rejection

__all__ = ["Authenticator", "IamFailure", "IamLogin", "ReceivedRequest"]

TOKEN_EXPIRED_MSG = "The token must be updated."
IAM_TOKEN_PREFIX = "MIIsim"
"""Real IAM tokens are long base64 blobs starting ``MII``; the prefix marks simulator tokens."""


@dataclass(frozen=True, slots=True)
class ReceivedRequest:
    """The parts of an HTTP request that authentication looks at."""

    method: str
    path: str
    query: Sequence[tuple[str, str]]
    headers: Mapping[str, str]
    body: bytes


@dataclass(frozen=True, slots=True)
class IamLogin:
    """A token issued by ``POST /v3/auth/tokens``."""

    token: str
    issued_wall_s: float
    expires_wall_s: float
    user: str
    domain: str
    project: dict[str, str] | None


@dataclass(frozen=True, slots=True)
class IamFailure:
    """An IAM error answer (Keystone-style body)."""

    status: int
    message: str


def _rejected(code: str, msg: str) -> Rejection:
    return Rejection(401, code, msg)


def _stable_id(*parts: str) -> str:
    return hashlib.sha256(":".join(parts).encode()).hexdigest()[:32]


class Authenticator:
    """Decides whether a CPH request is authenticated; issues and expires IAM tokens on the clock."""

    def __init__(self, config: SimulatorConfig, clock: Clock) -> None:
        self._config = config
        self._clock = clock
        self._issued: dict[str, float] = {}

    def check(self, request: ReceivedRequest) -> Rejection | None:
        """``None`` when the request may proceed, else the 401 to answer."""
        if self._config.open_access:
            return None
        authorization = request.headers.get("authorization")
        if authorization:
            return self._check_signature(authorization, request)
        token = request.headers.get("x-auth-token")
        if token:
            return self._check_token(token)
        return _rejected(
            TOKEN_ERROR_CODE, "Incorrect IAM authentication information: no credentials."
        )

    def _check_token(self, token: str) -> Rejection | None:
        static = self._config.token
        if static is not None and hmac.compare_digest(token, static.get_secret_value()):
            return None
        expires_mono_s = self._issued.get(token)
        if expires_mono_s is None:
            return _rejected(
                TOKEN_ERROR_CODE, "Incorrect IAM authentication information: token invalid."
            )
        if self._clock.monotonic() >= expires_mono_s:
            return _rejected(TOKEN_ERROR_CODE, TOKEN_EXPIRED_MSG)
        return None

    def _check_signature(self, authorization: str, request: ReceivedRequest) -> Rejection | None:
        ak, sk = self._config.ak, self._config.sk
        try:
            fields = parse_authorization(authorization)
        except ValueError as exc:
            return _rejected(
                SIGNATURE_ERROR_CODE, f"Incorrect app authentication information: {exc}."
            )
        if ak is None or sk is None or not hmac.compare_digest(fields["Access"], ak):
            return _rejected(
                TOKEN_ERROR_CODE, "Incorrect IAM authentication information: unknown AK."
            )
        names = [name for name in fields["SignedHeaders"].split(";") if name]
        problem = self._header_problem(names, request.headers)
        if problem is not None:
            return _rejected(
                SIGNATURE_ERROR_CODE, f"Incorrect app authentication information: {problem}."
            )
        parts = CanonicalParts(
            method=request.method,
            path=request.path,
            query=list(request.query),
            headers={name: request.headers[name] for name in names},
            body=request.body,
        )
        expected = signature(sk.get_secret_value(), parts)
        if not hmac.compare_digest(expected, fields["Signature"]):
            msg = "Incorrect app authentication information: verify aksk signature fail."
            return _rejected(SIGNATURE_ERROR_CODE, msg)
        return None

    def _header_problem(self, names: list[str], headers: Mapping[str, str]) -> str | None:
        """Why the signed headers cannot be trusted (missing, or a date too far from our clock)."""
        if "x-sdk-date" not in names:
            return "X-Sdk-Date must be signed"
        missing = [name for name in names if name not in headers]
        if missing:
            return f"signed header {missing[0]} is missing"
        try:
            sent_s = parse_sdk_date(headers["x-sdk-date"])
        except ValueError:
            return "X-Sdk-Date is malformed"
        skew_s = abs(sent_s - self._clock.time())
        if skew_s > self._config.max_clock_skew_s:
            limit_min = self._config.max_clock_skew_s / 60
            return (
                f"X-Sdk-Date is {skew_s:.0f} s from the server time, "
                f"more than the allowed {limit_min:g} minutes"
            )
        return None

    # -- IAM ------------------------------------------------------------------------------------

    def login(self, body: Any) -> IamLogin | IamFailure:
        """``POST /v3/auth/tokens`` with the password method (cph-api.md §7.1)."""
        identity = _password_identity(body)
        if identity is None:
            return IamFailure(400, "The request body is invalid.")
        user, password, domain = identity
        if not self._password_ok(user, password, domain):
            return IamFailure(401, "The username or password is wrong.")
        issued_wall_s = self._clock.time()
        token = IAM_TOKEN_PREFIX + secrets.token_urlsafe(48)
        self._issued[token] = self._clock.monotonic() + self._config.token_ttl_s
        return IamLogin(
            token=token,
            issued_wall_s=issued_wall_s,
            expires_wall_s=issued_wall_s + self._config.token_ttl_s,
            user=user,
            domain=domain,
            project=_scope_project(body, self._config.project_id),
        )

    def _password_ok(self, user: str, password: str, domain: str) -> bool:
        if self._config.open_access:
            return True
        known = self._config.iam_users.get(user)
        if known is None:
            return False
        password_ok = hmac.compare_digest(password, known.password.get_secret_value())
        return password_ok and known.domain == domain


def _dig(value: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _password_identity(body: Any) -> tuple[str, str, str] | None:
    """``(name, password, domain name)`` from an IAM password-method body, or None if malformed."""
    methods = _dig(body, "auth", "identity", "methods")
    user = _dig(body, "auth", "identity", "password", "user")
    if not isinstance(methods, list) or "password" not in methods or not isinstance(user, dict):
        return None
    parts = (user.get("name"), user.get("password"), _dig(user, "domain", "name"))
    name, password, domain = (part if isinstance(part, str) else "" for part in parts)
    if not (name and password and domain):
        return None
    return name, password, domain


def _scope_project(body: Any, project_id: str) -> dict[str, str] | None:
    project = _dig(body, "auth", "scope", "project")
    if not isinstance(project, dict):
        return None
    name = project.get("name")
    return {"id": project_id, "name": name if isinstance(name, str) else project_id}


def iam_token_body(login: IamLogin, issued: str, expires: str) -> dict[str, Any]:
    """The ``token`` object of a successful IAM answer (no token in the body: it is a header)."""
    domain = {"name": login.domain, "id": _stable_id("domain", login.domain)}
    token: dict[str, Any] = {
        "expires_at": expires,
        "issued_at": issued,
        "methods": ["password"],
        "user": {"name": login.user, "id": _stable_id("user", login.user), "domain": domain},
    }
    if login.project is not None:
        token["project"] = {**login.project, "domain": domain}
    return {"token": token}
