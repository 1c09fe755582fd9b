"""The execution saga: register the execution, create its pod, wait for how the execution ended.

    register_execution (local)  ->  create_pod (CreatePodCommand)  ->  await_execution (waits for an event)
      undo: mark it cancelled        undo: DeletePodCommand               EXECUTION_COMPLETED: saga completed
                                                                           EXECUTION_FAILED / EXECUTION_TIMEOUT:
                                                                             the step fails, the pod is deleted

The saga stays RUNNING while the pod runs, until one of the three execution
events arrives (matched to the saga by its execution id). A user who cancels
the execution compensates the saga (``engine.compensate``): the wait stops
and the pod is deleted the same way.
"""

from __future__ import annotations

from typing import Any

from sagakit import RetryPolicy, SagaBuilder, SagaDefinition, StepContext, send, wait_for

from .messages import (
    CreatePodCommand,
    DeletePodCommand,
    ExecutionAborted,
    ExecutionCompleted,
    ExecutionFailed,
    ExecutionRequested,
    ExecutionState,
    ExecutionSucceeded,
    ExecutionTimeout,
    PodCreated,
    PodCreationFailed,
    PodDeleted,
)

REPLY_TIMEOUT = 10.0  # a worker that does not answer in time gets the command again (same message id)
RESEND = RetryPolicy(max_attempts=5, initial_delay=0.2, max_delay=2.0)
GRACE = 30.0  # how long after the execution's own timeout the saga still waits for an execution event


class Executions:
    """The orchestrator's own records of executions (a table in a real service) and why each was cancelled."""

    def __init__(self) -> None:
        self.rows: dict[str, str] = {}  # execution id -> "registered" | "cancelled"
        self.cancel_reasons: dict[str, str] = {}

    async def register(self, ctx: StepContext) -> dict[str, Any]:
        execution_id = ctx.data["execution_id"]
        self.rows[execution_id] = "registered"
        pod_name = f"executor-{execution_id}"
        ctx.update_data(pod_name=pod_name)  # the commands are built from the saga's data
        return {"pod_name": pod_name}

    async def cancel(self, ctx: StepContext) -> None:
        execution_id = ctx.data["execution_id"]
        self.rows[execution_id] = "cancelled"
        self.cancel_reasons[execution_id] = why(ctx)


def why(ctx: StepContext) -> str:
    """The reason of the failure event that failed the saga, or a cancellation's."""
    failure = ctx.failure
    if failure is None:
        return "cancelled"
    payload = failure.get("payload") or {}
    return str(payload.get("reason") or payload.get("message") or failure.get("event"))


def delete_pod(data: dict[str, Any], ctx: StepContext) -> DeletePodCommand:
    return DeletePodCommand(execution_id=data["execution_id"], pod_name=data["pod_name"], reason=why(ctx))


def definition(executions: Executions, *, name: str = "execution_saga") -> SagaDefinition:
    b = SagaBuilder(name, version=1)
    b.trigger(ExecutionRequested, correlation=lambda e: e.execution_id)
    b.state(ExecutionState)
    b.step("register_execution", executions.register, executions.cancel)
    b.step(
        "create_pod",
        action=send(CreatePodCommand, success=PodCreated, failure=PodCreationFailed, reply_timeout=REPLY_TIMEOUT),
        compensation=send(DeletePodCommand, success=PodDeleted, reply_timeout=REPLY_TIMEOUT, to_command=delete_pod),
        retry=RESEND,
        compensation_retry=RESEND,
    )
    b.step(
        "await_execution",
        action=wait_for(
            ExecutionCompleted,
            failure=(ExecutionFailed, ExecutionTimeout),
            correlation=lambda e: e.execution_id,
            timeout=GRACE,
        ),
    )
    b.on_completed(ExecutionSucceeded)
    b.on_failed(ExecutionAborted)
    return b.build()
