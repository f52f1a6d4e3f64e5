"""AK/SK request signing, ``SDK-HMAC-SHA256``, exactly as Huawei's official SDK does it.

Pure functions only: the client signs each attempt afresh (a new ``X-Sdk-Date``), and the simulator
verifies with the same code. Reproducing the SDK byte for byte matters more than elegance here; the
signing vectors in the tests were produced by the SDK itself.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote, unquote

__all__ = [
    "ALGORITHM",
    "SDK_DATE_FORMAT",
    "CanonicalParts",
    "authorization_header",
    "canonical_query_string",
    "canonical_request",
    "format_sdk_date",
    "parse_authorization",
    "parse_sdk_date",
    "signed_header_names",
]

ALGORITHM = "SDK-HMAC-SHA256"
SDK_DATE_FORMAT = "%Y%m%dT%H%M%SZ"
EMPTY_BODY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def _encode(text: str) -> str:
    """Percent-encode as the SDK does: only unreserved characters and ``~`` stay as they are."""
    return quote(text, safe="~")


def format_sdk_date(epoch_s: float) -> str:
    """Render ``X-Sdk-Date`` (UTC, ``20240101T000000Z``) from Unix seconds."""
    return datetime.fromtimestamp(epoch_s, tz=UTC).strftime(SDK_DATE_FORMAT)


def parse_sdk_date(value: str) -> float:
    """Parse ``X-Sdk-Date`` into Unix seconds; raises ``ValueError`` when malformed."""
    return datetime.strptime(value, SDK_DATE_FORMAT).replace(tzinfo=UTC).timestamp()


def canonical_query_string(query: Iterable[tuple[str, str]]) -> str:
    """Sorted, encoded ``k=v`` pairs; the request URL must carry this very string."""
    return "&".join(f"{_encode(k)}={_encode(v)}" for k, v in sorted(query))


def _canonical_uri(path: str) -> str:
    uri = "/".join(_encode(segment) for segment in unquote(path).split("/"))
    return uri if uri.endswith("/") else uri + "/"


def signed_header_names(headers: Mapping[str, str]) -> list[str]:
    """Lower-cased header names to sign: all of them except names containing ``_``."""
    return sorted(name.lower() for name in headers if "_" not in name)


@dataclass(frozen=True, slots=True)
class CanonicalParts:
    """What a request contributes to its signature."""

    method: str
    path: str
    query: Sequence[tuple[str, str]]
    headers: Mapping[str, str]
    body: bytes


def canonical_request(parts: CanonicalParts) -> str:
    """The SDK's CanonicalRequest: method, URI, query, headers, signed header list, payload hash."""
    lowered = {name.lower(): str(value).strip() for name, value in parts.headers.items()}
    names = signed_header_names(parts.headers)
    header_block = "".join(f"{name}:{lowered[name]}\n" for name in names)
    payload_hash = hashlib.sha256(parts.body).hexdigest() if parts.body else EMPTY_BODY_SHA256
    return "\n".join(
        [
            parts.method.upper(),
            _canonical_uri(parts.path),
            canonical_query_string(parts.query),
            header_block,
            ";".join(names),
            payload_hash,
        ]
    )


def string_to_sign(canonical: str, sdk_date: str) -> str:
    """``SDK-HMAC-SHA256`` + date + hex SHA-256 of the canonical request."""
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    return f"{ALGORITHM}\n{sdk_date}\n{digest}"


def signature(secret_key: str, parts: CanonicalParts) -> str:
    """Hex HMAC-SHA256 of the string to sign, keyed with the secret key.

    ``parts.headers`` must already hold ``X-Sdk-Date`` and ``Host``.
    """
    sdk_date = next(v for k, v in parts.headers.items() if k.lower() == "x-sdk-date")
    message = string_to_sign(canonical_request(parts), sdk_date)
    return hmac.new(secret_key.encode(), message.encode(), hashlib.sha256).hexdigest()


def authorization_header(access_key: str, secret_key: str, parts: CanonicalParts) -> str:
    """The ``Authorization`` header value the API gateway expects."""
    names = ";".join(signed_header_names(parts.headers))
    sig = signature(secret_key, parts)
    return f"{ALGORITHM} Access={access_key}, SignedHeaders={names}, Signature={sig}"


def parse_authorization(value: str) -> dict[str, str]:
    """Split an ``Authorization`` header into ``Access``, ``SignedHeaders`` and ``Signature``.

    Raises ``ValueError`` when the header is not an ``SDK-HMAC-SHA256`` one.
    """
    algorithm, _, rest = value.partition(" ")
    if algorithm != ALGORITHM:
        raise ValueError(f"unsupported signing algorithm {algorithm!r}")
    fields: dict[str, str] = {}
    for item in rest.split(","):
        key, sep, val = item.strip().partition("=")
        if not sep:
            raise ValueError("malformed Authorization header")
        fields[key] = val
    if not {"Access", "SignedHeaders", "Signature"} <= fields.keys():
        raise ValueError("Authorization header lacks Access, SignedHeaders or Signature")
    return fields
