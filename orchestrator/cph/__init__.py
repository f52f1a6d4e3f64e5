"""The asynchronous CPH API client: wire models, authentication and the error taxonomy."""

from orchestrator.cph.api import ApiFamily, CphApi
from orchestrator.cph.auth import AkSkAuth, Auth, IamPasswordAuth, StaticTokenAuth
from orchestrator.cph.client import CphClient
from orchestrator.cph.errors import (
    ApiError,
    AuthError,
    MalformedResponseError,
    PermanentError,
    ThrottledError,
    TransientError,
)
from orchestrator.cph.models import (
    BatchJobsResponse,
    Job,
    JobStatus,
    Phone,
    PhoneDetail,
    PhoneJob,
    PhoneStatus,
    PropertyTooLargeError,
    PropertyUpdate,
)

__all__ = [
    "AkSkAuth",
    "ApiError",
    "ApiFamily",
    "Auth",
    "AuthError",
    "BatchJobsResponse",
    "CphApi",
    "CphClient",
    "IamPasswordAuth",
    "Job",
    "JobStatus",
    "MalformedResponseError",
    "PermanentError",
    "Phone",
    "PhoneDetail",
    "PhoneJob",
    "PhoneStatus",
    "PropertyTooLargeError",
    "PropertyUpdate",
    "StaticTokenAuth",
    "ThrottledError",
    "TransientError",
]
