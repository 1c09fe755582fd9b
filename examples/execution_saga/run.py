"""Run the execution saga end to end over a broker (Kafka by default) and check every execution.

    python -m examples.execution_saga.run --transport kafka://127.0.0.1:9092 --store sqlite:///executions.db

The orchestrator (a ``SagaEngine`` with the saga registered), the Kubernetes
worker and the API's listener for outcome events run in this process, each
on its own connections to the broker. The run submits ``--executions``
scripts, as many of each kind (see ``worker.py``): one that completes, one
that exits with code 3, one that runs past its timeout, one whose image does
not exist, and one that waits for input, which the user cancels once its pod
runs. It waits for every saga and checks its status, the pods, the
orchestrator's records and the outcome events against what each kind must
give; it prints a report and exits non-zero on any difference.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
import uuid
from collections import Counter
from typing import Any

from sagakit import SagaEngine, SagaStatus
from sagakit.participant import Envelope, message_type_name
from sagakit.transports import Delivery, transport_from_url

from .messages import ExecutionAborted, ExecutionFailed, ExecutionRequested, ExecutionSucceeded, ExecutionTimeout
from .saga import Executions, definition
from .worker import K8sWorker

KINDS = {
    # kind: (script, saga status, pod deleted?, the reason the compensations see)
    "completes": ("print('ok')", SagaStatus.COMPLETED, False, None),
    "fails": ("exit(3)", SagaStatus.COMPENSATED, True, "exited with code 3"),
    "times out": ("while True: pass", SagaStatus.COMPENSATED, True, "timed out after 2s"),
    "no image": ("image:missing python:3.99", SagaStatus.COMPENSATED, False, "image pull failed: image:missing"),
    "cancelled": ("input()", SagaStatus.COMPENSATED, True, "cancelled"),
}
FAILURE_EVENT = {"fails": ExecutionFailed, "times out": ExecutionTimeout}


class Outcomes:
    """The API's side: it listens for the sagas' outcome events."""

    def __init__(self, url: str) -> None:
        self.transport = transport_from_url(url)
        self.events: dict[str, Envelope] = {}  # execution id -> outcome event
        self.count: Counter[str] = Counter()
        self.arrived = asyncio.Event()

    async def _on(self, d: Delivery) -> None:
        env = Envelope.from_bytes(d.body)
        self.events[env.payload["execution_id"]] = env
        self.count[env.type_name] += 1
        self.arrived.set()

    async def wait(self, n: int, timeout: float) -> None:
        """Wait until the outcomes of *n* executions arrived, or *timeout* seconds passed."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while len(self.events) < n:
                    self.arrived.clear()
                    await self.arrived.wait()

    async def __aenter__(self) -> Outcomes:
        await self.transport.start()
        names = [message_type_name(ExecutionSucceeded), message_type_name(ExecutionAborted)]
        await self.transport.subscribe(names, "api", self._on)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.transport.close()


async def saga_of(engine: SagaEngine, execution_id: str, timeout: float) -> str:
    """The id of the saga the ExecutionRequested of *execution_id* started."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not (found := await engine.list(correlation_id=execution_id, limit=1)):
        if loop.time() > end:
            raise TimeoutError(f"no saga started for execution {execution_id}")
        await asyncio.sleep(0.05)
    return found[0].id


async def cancel_when_running(engine: SagaEngine, worker: K8sWorker, sid: str, pod: str, timeout: float) -> None:
    """The user's cancel: once the pod runs and the saga waits for the execution's outcome."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        snap = await engine.get(sid)
        waiting = snap.steps["await_execution"].status.value in ("running", "waiting")
        if worker.pods.get(pod) == "running" and waiting:
            break
        if loop.time() > end:
            raise TimeoutError(f"the pod of {sid} never ran")
        await asyncio.sleep(0.05)
    await engine.compensate(sid, reason="cancelled by user", actor="user")


def check(kind: str, eid: str, snap: Any, worker: K8sWorker, executions: Executions, outcomes: Outcomes) -> list[str]:
    """What differs between the execution *eid* of *kind* and what that kind must give."""
    _, status, deleted, reason = KINDS[kind]
    pod = f"executor-{eid}"
    wrong = []

    def expect(what: str, got: Any, want: Any) -> None:
        if got != want:
            wrong.append(f"{kind} {eid}: {what} is {got!r}, expected {want!r}")

    expect("saga status", snap.status, status)
    expect("pods created", worker.created[pod], 0 if kind == "no image" else 1)
    expect("pods deleted", worker.deleted[pod], 1 if deleted else 0)
    event = outcomes.events.get(eid)
    if status is SagaStatus.COMPLETED:
        expect("pod", worker.pods.get(pod), "succeeded")
        expect("record", executions.rows.get(eid), "registered")
        expect("outcome", event and event.type_name, message_type_name(ExecutionSucceeded))
        expect("stdout", event and event.payload.get("stdout"), "ok\n")
        return wrong
    expect("record", executions.rows.get(eid), "cancelled")
    expect("reason seen by the compensation", executions.cancel_reasons.get(eid), reason)
    if deleted:
        expect("reason of the pod's deletion", worker.delete_reasons.get(pod), reason)
    expect("outcome", event and event.type_name, message_type_name(ExecutionAborted))
    if kind in FAILURE_EVENT:
        step = snap.steps["await_execution"]
        expect("await_execution", step.status.value, "failed")
        expect("failure event", event and event.payload.get("failure_event"), message_type_name(FAILURE_EVENT[kind]))
        if reason not in (step.error or ""):
            wrong.append(f"{kind} {eid}: the step's error {step.error!r} does not give the reason {reason!r}")
    return wrong


async def main(args: argparse.Namespace) -> int:
    executions = Executions()
    engine = SagaEngine(args.store, transport=args.transport)
    engine.register(definition(executions))
    worker = K8sWorker(transport_from_url(args.transport), transport_from_url(args.transport))
    plan = {uuid.uuid4().hex[:12]: kind for _ in range(args.executions // len(KINDS)) for kind in KINDS}
    async with Outcomes(args.transport) as outcomes, worker, engine:
        for eid, kind in plan.items():
            script = KINDS[kind][0]
            await engine.publish(ExecutionRequested(execution_id=eid, script=script, timeout_seconds=2))
        sagas = {eid: await saga_of(engine, eid, args.timeout) for eid in plan}
        await asyncio.gather(*(
            cancel_when_running(engine, worker, sagas[eid], f"executor-{eid}", args.timeout)
            for eid, kind in plan.items() if kind == "cancelled"
        ))  # fmt: skip
        snaps = {eid: await engine.wait(sid, timeout=args.timeout) for eid, sid in sagas.items()}
        await outcomes.wait(len(plan), 30)
    wrong = [w for eid, kind in plan.items() for w in check(kind, eid, snaps[eid], worker, executions, outcomes)]
    rows = {kind: dict(Counter(snaps[eid].status.value for eid, k in plan.items() if k == kind)) for kind in KINDS}
    report = {
        "ok": not wrong,
        "executions": len(plan),
        "status": rows,
        "pods": {"created": sum(worker.created.values()), "deleted": sum(worker.deleted.values())},
        "outcome_events": dict(outcomes.count),
        "wrong": wrong,
    }
    if args.json:
        print(json.dumps(report))
    else:
        for kind, counts in rows.items():
            print(f"{kind:>10}: {counts}")
        print(f"pods created {report['pods']['created']}, deleted {report['pods']['deleted']}")
        print("as planned" if not wrong else "\n".join(["NOT as planned:", *wrong]))
    return 0 if not wrong else 1


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--transport", default="kafka://127.0.0.1:9092", help="kafka://…, or any sagakit transport URL")
    p.add_argument("--store", default="sqlite:///execution_saga.db", help="sqlite:///… or postgresql://…")
    p.add_argument("--executions", type=int, default=20, help="scripts to run, as many of each kind")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the sagas")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--log-level", default="WARNING")
    args = p.parse_args()
    logging.basicConfig(level=args.log_level, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    sys.exit(asyncio.run(main(args)))
