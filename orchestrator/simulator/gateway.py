"""The API gateway in front of the simulated cloud, apart from HTTP: who is let in, and how it fails.

A request meets, in order: authentication (401), the project check (404), throttling (429 from the
per-family token buckets, or an extra throttle from the fault profile), transient gateway errors
(502/503 with an HTML page), then a latency spike; only then does it reach the cloud
(:class:`~orchestrator.simulator.state.SimState`), and a submit's answer may still be lost on the
way back (the connection dropped after the jobs were created). Requests refused on the way have no
effect.

Every decision draws from one seeded stream in a fixed order, so a seed gives the same weather
whether the requests come over HTTP (:mod:`orchestrator.simulator.app`) or from the in-process
fake of :mod:`orchestrator.testing`. Answers are rendered as :class:`WireAnswer` (status, headers,
body bytes) so both serve exactly the same bytes.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from typing import Any

from orchestrator.clock import Clock
from orchestrator.simulator.auth import Authenticator, ReceivedRequest
from orchestrator.simulator.config import SimulatorConfig
from orchestrator.simulator.ratelimit import TokenBucket
from orchestrator.simulator.stats import SimStats
from orchestrator.simulator.wire import NOT_FOUND_ERROR_CODE, THROTTLED_ERROR_CODE, Rejection

__all__ = [
    "DEFAULT_GATEWAY_LIMIT_PER_S",
    "OPERATION_FAMILY",
    "QUERY",
    "SUBMIT",
    "Gateway",
    "WireAnswer",
    "cph_answer",
    "error_answer",
    "html_error_answer",
    "json_answer",
]

SUBMIT = "submit"
QUERY = "query"
OPERATION_FAMILY = {
    "UpdateCloudPhoneProperty": SUBMIT,
    "RestartCloudPhone": SUBMIT,
    "ShowJob": QUERY,
    "ListJobs": QUERY,
    "ListCloudPhones": QUERY,
    "ShowCloudPhoneDetail": QUERY,
}
"""Each CPH operation and the gateway budget (API family) it draws from."""

DEFAULT_GATEWAY_LIMIT_PER_S = 200
"""The gateway's documented default per-API limit, quoted in 429 messages when no bucket is set."""

_HTML_ERRORS = {502: "Bad Gateway", 503: "Service Temporarily Unavailable"}


@dataclass(frozen=True, slots=True)
class WireAnswer:
    """One HTTP answer as bytes on the wire, before any transport."""

    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def json_answer(status: int, body: dict[str, Any]) -> WireAnswer:
    """A JSON answer."""
    return WireAnswer(status, json.dumps(body).encode())


def error_answer(rejection: Rejection, request_id: str) -> WireAnswer:
    """A CPH error answer: ``{"request_id", "error_code", "error_msg"}``."""
    body = {
        "request_id": request_id,
        "error_code": rejection.error_code,
        "error_msg": rejection.error_msg,
    }
    return json_answer(rejection.status, body)


def html_error_answer(status: int) -> WireAnswer:
    """The load balancer's HTML page for a 502 or 503 (no JSON, no error code)."""
    title = f"{status} {_HTML_ERRORS[status]}"
    text = (
        f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n"
        f"<center><h1>{title}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
    )
    return WireAnswer(status, text.encode(), content_type="text/html")


def cph_answer(
    counters: SimStats, result: dict[str, Any] | Rejection, request_id: str, where: str
) -> WireAnswer:
    """A handler's answer: 200 with ``request_id`` added, or the rejection (noting the client
    mistake it reveals, described by ``where``, e.g. ``"POST /v1/…"``)."""
    if isinstance(result, Rejection):
        if result.violation is not None:
            counters.violation(result.violation, f"{where}: {result.error_msg}")
        return error_answer(result, request_id)
    return json_answer(200, {"request_id": request_id, **result})


class Gateway:
    """The gateway's decisions for one simulated account, on the injected clock."""

    def __init__(self, config: SimulatorConfig, clock: Clock, counters: SimStats) -> None:
        self.config = config
        self.clock = clock
        self.counters = counters
        self.profile = config.profile
        self.auth = Authenticator(config, clock)
        self._faults = random.Random(f"{config.seed}:faults")
        self._buckets = {
            SUBMIT: self._bucket(config.submit_rate_per_s),
            QUERY: self._bucket(config.query_rate_per_s),
        }

    def _bucket(self, rate_per_s: float | None) -> TokenBucket | None:
        return TokenBucket(rate_per_s, self.clock) if rate_per_s else None

    def check(
        self, request: ReceivedRequest, project_id: str | None, family: str, request_id: str
    ) -> WireAnswer | None:
        """The answer of a request stopped before the cloud (401, 404, 429, 5xx), or None."""
        rejection = self.auth.check(request)
        if rejection is None and project_id != self.config.project_id:
            rejection = Rejection(
                404, NOT_FOUND_ERROR_CODE, "The project in the URL does not exist."
            )
        if rejection is not None:
            self.counters.events["auth_failures" if rejection.status == 401 else "not_found"] += 1
            return error_answer(rejection, request_id)
        throttled = self._throttle(family, request_id)
        if throttled is not None:
            return throttled
        if self._chance(self.profile.transient_error_rate):
            self.counters.events["transient_errors"] += 1
            return html_error_answer(self._faults.choice((502, 503)))
        return None

    def _throttle(self, family: str, request_id: str) -> WireAnswer | None:
        bucket = self._buckets[family]
        if self._chance(self.profile.extra_throttle_rate):
            wait_s = 1.0
        elif bucket is not None:
            wait_s = bucket.try_acquire()
            if wait_s <= 0.0:
                return None
        else:
            return None
        self.counters.throttled[family] += 1
        limit = int(bucket.rate_per_s) if bucket is not None else DEFAULT_GATEWAY_LIMIT_PER_S
        msg = (
            "The throttling threshold has been reached: "
            f"policy user over ratelimit,limit:{max(1, limit)},time:1 second"
        )
        body = {"error_code": THROTTLED_ERROR_CODE, "error_msg": msg, "request_id": request_id}
        answer = json_answer(429, body)
        if self._chance(self.profile.retry_after_fraction):
            answer.headers["Retry-After"] = str(max(1, math.ceil(wait_s)))
        return answer

    def latency_spike_s(self) -> float:
        """Seconds this request is held before the cloud sees it (0.0 for most requests)."""
        if not self._chance(self.profile.latency_spike_rate):
            return 0.0
        self.counters.events["latency_spikes"] += 1
        return self.profile.latency_spike.sample(self._faults)

    def drops_answer(self, family: str, status: int) -> bool:
        """True when a submit's 200 answer is lost after its jobs were created (outcome unknown)."""
        if family != SUBMIT or status != 200:
            return False
        if not self._chance(self.profile.drop_after_apply_rate):
            return False
        self.counters.events["connections_dropped"] += 1
        return True

    def _chance(self, rate: float) -> bool:
        if rate <= 0.0:
            return False
        return rate >= 1.0 or self._faults.random() < rate
