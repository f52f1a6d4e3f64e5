"""The durable journal of rollouts and phones: the interface, and its SQLite implementation.

Import :class:`SqliteStore` from here or from :mod:`orchestrator.store.sqlite`; code that only
needs the interface should depend on :class:`RolloutStore` and the errors from
:mod:`orchestrator.store.base`.
"""

from orchestrator.store.base import (
    LeaseHeldError,
    LeaseLostError,
    LeaseToken,
    RolloutExistsError,
    RolloutMeta,
    RolloutNotFoundError,
    RolloutStore,
    StoreCorruptError,
    StoredPhone,
    StoreError,
    StoreUnavailableError,
)
from orchestrator.store.sqlite import SqliteStore

__all__ = [
    "LeaseHeldError",
    "LeaseLostError",
    "LeaseToken",
    "RolloutExistsError",
    "RolloutMeta",
    "RolloutNotFoundError",
    "RolloutStore",
    "SqliteStore",
    "StoreCorruptError",
    "StoreError",
    "StoreUnavailableError",
    "StoredPhone",
]
