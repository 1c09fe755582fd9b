"""The execution saga's commands and events (pydantic models), with stable wire names.

Each class sets ``message_name``: the name on the wire (the Kafka topic),
which other services use without mirroring this module's path.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel


class ExecutionRequested(BaseModel):
    """Published by the API when a user submits code: it starts one saga per execution id."""

    message_name: ClassVar[str] = "execution.requested"
    execution_id: str
    script: str
    timeout_seconds: float = 30.0


class ExecutionState(BaseModel):
    """The saga's data."""

    execution_id: str
    script: str
    timeout_seconds: float = 30.0
    pod_name: str | None = None  # set by the local step register_execution
    node: str | None = None  # from PodCreated
    exit_code: int | None = None  # from ExecutionCompleted
    stdout: str | None = None


# ------------------------------------------------------------ to the Kubernetes worker


class CreatePodCommand(BaseModel):
    message_name: ClassVar[str] = "saga.create_pod"
    execution_id: str
    pod_name: str
    script: str
    timeout_seconds: float


class PodCreated(BaseModel):
    message_name: ClassVar[str] = "saga.pod_created"
    execution_id: str
    node: str


class PodCreationFailed(BaseModel):
    message_name: ClassVar[str] = "saga.pod_creation_failed"
    execution_id: str
    reason: str


class DeletePodCommand(BaseModel):
    message_name: ClassVar[str] = "saga.delete_pod"
    execution_id: str
    pod_name: str
    reason: str  # why: the failure event's reason, or the user's cancellation


class PodDeleted(BaseModel):
    message_name: ClassVar[str] = "saga.pod_deleted"
    execution_id: str


# ------------------------------------------------------------ from the pod (execution events)


class ExecutionCompleted(BaseModel):
    message_name: ClassVar[str] = "execution.completed"
    execution_id: str
    exit_code: int
    stdout: str


class ExecutionFailed(BaseModel):
    message_name: ClassVar[str] = "execution.failed"
    execution_id: str
    exit_code: int
    reason: str


class ExecutionTimeout(BaseModel):
    message_name: ClassVar[str] = "execution.timeout"
    execution_id: str
    timeout_seconds: float
    reason: str


# ------------------------------------------------------------ the saga's outcome


class ExecutionSucceeded(BaseModel):
    message_name: ClassVar[str] = "execution.saga_completed"
    saga_id: str
    execution_id: str
    exit_code: int
    stdout: str


class ExecutionAborted(BaseModel):
    message_name: ClassVar[str] = "execution.saga_failed"
    saga_id: str
    execution_id: str
    reason: str
    failed_step: str | None = None
    failure_event: str | None = None
    failure: dict[str, Any] | None = None
