"""A stand-in for the Kubernetes worker: creates and deletes pods, and reports how each execution ended.

What a script does is read from its text, so that a run can mix outcomes:

| script | pod | execution event |
| --- | --- | --- |
| ``image:missing …`` | not created: ``PodCreationFailed`` | — |
| ``exit(N)`` with N ≠ 0 | created | ``ExecutionFailed`` (exit code N) |
| ``while True: …`` | created | ``ExecutionTimeout`` (it ran past its timeout) |
| ``input()`` | created | none: it waits for input until the user cancels |
| anything else | created | ``ExecutionCompleted`` (exit code 0) |

Commands arrive through a ``sagakit.participant.Participant`` (de-duplicated
by message id, replies correlated to their saga); the execution events are
published on the broker as the pod would, with no saga headers: the saga
finds its execution by the event's ``execution_id``.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections import Counter
from typing import Any

from sagakit.participant import Envelope, Participant
from sagakit.transports import Transport

from .messages import (
    CreatePodCommand,
    DeletePodCommand,
    ExecutionCompleted,
    ExecutionFailed,
    ExecutionTimeout,
    PodCreated,
    PodCreationFailed,
    PodDeleted,
)

RUN_TIME = 1.0  # seconds a pod "runs" before its execution event


def outcome(cmd: CreatePodCommand) -> Any:
    """The execution event of *cmd*'s script, or None for a script that waits for input."""
    if "input()" in cmd.script:
        return None
    if cmd.script.startswith("while True"):
        return ExecutionTimeout(
            execution_id=cmd.execution_id,
            timeout_seconds=cmd.timeout_seconds,
            reason=f"timed out after {cmd.timeout_seconds:g}s",
        )
    m = re.search(r"exit\((\d+)\)", cmd.script)
    if m and int(m.group(1)) != 0:
        code = int(m.group(1))
        return ExecutionFailed(execution_id=cmd.execution_id, exit_code=code, reason=f"exited with code {code}")
    return ExecutionCompleted(execution_id=cmd.execution_id, exit_code=0, stdout="ok\n")


class K8sWorker:
    """Pods (a dict here), the commands that create and delete them, and the events their executions send."""

    def __init__(self, commands: Transport, events: Transport) -> None:
        self.participant = Participant(commands, name="k8s-worker")
        self.events = events
        self.pods: dict[str, str] = {}  # pod name -> "running" | "succeeded" | "failed" | "timed out"
        self.created: Counter[str] = Counter()
        self.deleted: Counter[str] = Counter()
        self.delete_reasons: dict[str, str] = {}
        self._runs: set[asyncio.Task[None]] = set()

        @self.participant.handles(CreatePodCommand)
        async def create(cmd: CreatePodCommand) -> PodCreated | PodCreationFailed:
            if cmd.script.startswith("image:missing"):
                return PodCreationFailed(execution_id=cmd.execution_id, reason="image pull failed: image:missing")
            self.pods[cmd.pod_name] = "running"
            self.created[cmd.pod_name] += 1
            run = asyncio.create_task(self._run(cmd))
            self._runs.add(run)
            run.add_done_callback(self._runs.discard)
            return PodCreated(execution_id=cmd.execution_id, node="node-1")

        @self.participant.handles(DeletePodCommand)
        async def delete(cmd: DeletePodCommand) -> PodDeleted:
            if self.pods.pop(cmd.pod_name, None) is not None:  # deleting a pod that is gone changes nothing
                self.deleted[cmd.pod_name] += 1
                self.delete_reasons[cmd.pod_name] = cmd.reason
            return PodDeleted(execution_id=cmd.execution_id)

    async def _run(self, cmd: CreatePodCommand) -> None:
        await asyncio.sleep(RUN_TIME)
        event = outcome(cmd)
        if event is None or cmd.pod_name not in self.pods:
            return  # waits for input (until the pod is deleted), or was deleted meanwhile
        self.pods[cmd.pod_name] = {
            ExecutionCompleted: "succeeded",
            ExecutionFailed: "failed",
            ExecutionTimeout: "timed out",
        }[type(event)]
        await self.publish(event)

    async def publish(self, event: object) -> None:
        """Publish *event* as the pod's sidecar would: a plain event, no saga headers."""
        mid = uuid.uuid4().hex
        env = Envelope.wrap(event, message_id=mid, timestamp=time.time())
        while True:
            try:
                await self.events.publish(env.type_name, env.to_bytes(), message_id=mid, headers={"message_id": mid})
                return
            except Exception:  # the broker is away: try again, as a sidecar would
                await asyncio.sleep(0.5)

    async def __aenter__(self) -> K8sWorker:
        await self.events.start()
        await self.participant.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for run in list(self._runs):
            run.cancel()
        await asyncio.gather(*self._runs, return_exceptions=True)
        await self.participant.close()
        await self.events.close()
