"""Error codes, timestamps and JSON views exactly as the real CPH API spells them (cph-api.md §1, §4).

Kept apart from the state so that a reviewer can compare field names with the docs in one place. Codes the
docs leave open are named constants whose docstrings say they are placeholders.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from orchestrator.simulator.fleet import Phone

__all__ = [
    "BAD_PAGING_ERROR_CODE",
    "BATCH_TOO_LARGE_ERROR_CODE",
    "BUSY_ERROR_CODE",
    "EMPTY_LIST_ERROR_CODE",
    "INTERNAL_ERROR_CODE",
    "INVALID_PARAMETER_ERROR_CODE",
    "INVALID_STATUS_ERROR_CODE",
    "JOB_FAILED",
    "JOB_NOT_FOUND_ERROR_CODE",
    "JOB_RUNNING",
    "JOB_SUCCEEDED",
    "PHONE_NOT_FOUND_ERROR_CODE",
    "Rejection",
    "format_iam_time",
    "format_utc",
    "phone_detail_view",
    "phone_list_view",
]

JOB_RUNNING = 1
JOB_SUCCEEDED = 2
JOB_FAILED = -1

INVALID_PARAMETER_ERROR_CODE = "CPS.0004"
"""Documented as "invalid phone id"; the doc example's message "Parameter: phone_id is invalid." shows it
is the generic invalid-parameter code, so the simulator uses it for every malformed parameter."""
PHONE_NOT_FOUND_ERROR_CODE = "CPS.0005"
INTERNAL_ERROR_CODE = "CPS.0003"
INTERNAL_ERROR_MSG = "service internal error, try again later"
BAD_PAGING_ERROR_CODE = "CPS.0002"
EMPTY_LIST_ERROR_CODE = "CPS.0009"
JOB_NOT_FOUND_ERROR_CODE = "CPS.0011"
"""ShowJob of a job ID the account does not hold: HTTP 404 (cph-api.md §4)."""
JOB_NOT_FOUND_MSG = "The job does not exist."
INVALID_STATUS_ERROR_CODE = "CPS.0010"
BATCH_TOO_LARGE_ERROR_CODE = "CPS.0024"
"""Placeholder: the real answer to an oversized batch is undocumented (cph-api.md §5, UNCONFIRMED);
CPS.0024 ("count invalid") is the closest documented meaning."""
BUSY_ERROR_CODE = "CPS.0032"
"""Placeholder: the code for "phone busy / operation in progress" is UNCONFIRMED in cph-api.md §4.2."""
BUSY_ERROR_MSG = "The phone is busy with another operation, try again later."
PHONE_NOT_FOUND_MSG = "The phone does not exist."
INVALID_PROPERTY_MSG = "Parameter: property is invalid."

THROTTLED_ERROR_CODE = "APIG.0308"
TOKEN_ERROR_CODE = "APIG.0301"
SIGNATURE_ERROR_CODE = "APIG.0303"
NOT_FOUND_ERROR_CODE = "APIG.0101"

WIRE_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
PHONE_MODEL_NAME = "kc1.large.1"
AVAILABILITY_ZONE = "cn-north-4a"
DATA_VOLUME_SIZE_GIB = 32
ADB_LISTEN_PORT = 5555


@dataclass(frozen=True, slots=True)
class Rejection:
    """A whole-request error answer: HTTP status plus the CPH ``error_code``/``error_msg`` pair.

    ``violation`` names the client mistake it reveals (``None`` for the cloud's own doing).
    """

    status: int
    error_code: str
    error_msg: str
    violation: str | None = None


def format_utc(epoch_s: float) -> str:
    """``YYYY-MM-DDTHH:MM:SSZ``, the timestamp form of CPH phones and jobs."""
    return datetime.fromtimestamp(epoch_s, tz=UTC).strftime(WIRE_TIME_FORMAT)


def format_iam_time(epoch_s: float) -> str:
    """ISO-8601 with microseconds and ``Z``, as IAM's ``expires_at``/``issued_at``."""
    return datetime.fromtimestamp(epoch_s, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _imei(phone: Phone) -> str:
    return f"86{phone.index:013d}"


def phone_list_view(phone: Phone, image_id: str) -> dict[str, Any]:
    """A ``Phone`` item of ListCloudPhones (cph-api.md §1.4)."""
    updated_s = phone.update_wall_s if phone.update_wall_s is not None else phone.create_wall_s
    return {
        "phone_name": phone.phone_name,
        "server_id": phone.server_id,
        "phone_id": phone.phone_id,
        "phone_model_name": PHONE_MODEL_NAME,
        "image_id": image_id,
        "image_version": "1.0.0",
        "vnc_enable": "false",
        "status": phone.status,
        "type": phone.type,
        "imei": _imei(phone),
        "traffic_type": "direct",
        "volume_mode": 0,
        "availability_zone": AVAILABILITY_ZONE,
        "metadata": {"order_id": "", "product_id": ""},
        "has_encrypt": False,
        "create_time": format_utc(phone.create_wall_s),
        "update_time": format_utc(updated_s),
    }


def _access_info(phone: Phone) -> dict[str, Any]:
    octet_hi, octet_lo = divmod(phone.index % 65_536, 256)
    return {
        "type": "server_adb",
        "device_ip": f"172.16.{octet_hi}.{octet_lo}",
        "phone_ip": f"172.16.{octet_hi}.{octet_lo}",
        "listen_port": ADB_LISTEN_PORT,
        "access_ip": "",
        "public_ip": "",
        "intranet_ip": f"192.168.{octet_hi}.{octet_lo}",
        "server_ip": f"192.168.{octet_hi}.1",
        "access_port": 20_000 + phone.index % 10_000,
        "phone_ipv6": "",
        "server_ipv6": "",
    }


def phone_detail_view(phone: Phone, image_id: str) -> dict[str, Any]:
    """ShowCloudPhoneDetail's body without ``request_id``; ``property`` is a JSON string."""
    view = phone_list_view(phone, image_id)
    view["access_infos"] = [_access_info(phone)]
    view["property"] = json.dumps(phone.properties or {}, separators=(",", ":"))
    view["custom_property"] = dict(phone.custom_property or {})
    view["phone_data_volume"] = {"volume_type": "SSD", "volume_size": DATA_VOLUME_SIZE_GIB}
    return view
