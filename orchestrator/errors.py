"""The one exception root of the product.

Every error the orchestrator raises on purpose derives from :class:`OrchestratorError`, so that the
command line can map families of errors to exit codes in one place::

    OrchestratorError
    ├── ConfigError          settings or command-line input is unusable (exit 3)
    ├── PlanError            a plan file is invalid (exit 3)            -- orchestrator.plan
    └── ApiError             the CPH API answered with an error          -- orchestrator.cph.errors
        ├── ThrottledError   429 / APIG.0308: wait and resend
        ├── AuthError        401 / APIG.0301 / APIG.0303 / IAM failures
        ├── TransientError   5xx, timeouts, dropped connections: resend (maybe outcome unknown)
        │   └── MalformedResponseError   an answer we could not parse
        └── PermanentError   any other 4xx: do not resend as is
"""

from __future__ import annotations

__all__ = ["ConfigError", "OrchestratorError"]


class OrchestratorError(Exception):
    """Something the orchestrator could not do; the message is meant for the operator."""


class ConfigError(OrchestratorError):
    """Settings, environment or command-line input is invalid; nothing was sent."""
