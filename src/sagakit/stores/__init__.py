"""Stores: where sagas live, one module per backend, and what a new backend implements.

``store_from_url`` picks a backend by URL and imports it only then: ``memory``
(tests), ``sqlite`` (the embedded default), ``postgres`` (many workers; needs
the ``postgres`` extra).

A backend implements the ``Store`` protocol; the records it reads and writes
(``Write``, ``SagaQuery``, ``OutboxMessage``, ``OutboxRecord``, ``DeadLetter``,
``Pruned``, ``WorkerInfo``, ``Lease``, ``Handling`` for participants' handled
commands, the machine's ``SagaState`` and ``HistoryEntry``) and the errors it
raises (``StoreError``, ``NotASagaStore``) are exported here. The store
contract tests (``tests/stores/contract.py`` in the repository) check a
backend against the protocol.
"""

from .._errors import NotASagaStore, StoreError
from .._store import (
    DeadLetter,
    Handling,
    Lease,
    OutboxMessage,
    OutboxRecord,
    Pruned,
    SagaQuery,
    Store,
    WorkerInfo,
    Write,
    store_from_url,
)
from ..machine import HistoryEntry, SagaState

__all__ = [
    "DeadLetter",
    "Handling",
    "HistoryEntry",
    "Lease",
    "NotASagaStore",
    "OutboxMessage",
    "OutboxRecord",
    "Pruned",
    "SagaQuery",
    "SagaState",
    "Store",
    "StoreError",
    "WorkerInfo",
    "Write",
    "store_from_url",
]
