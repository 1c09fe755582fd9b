"""Running attempts: step functions as asyncio tasks (plain ``def`` on a bounded thread pool), each under its timeout.

An attempt starts only once the transition that dispatched it is committed,
and is cancelled when the machine says so; a thread that cannot be stopped is
abandoned, and what it returns late is recorded as stale.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import orjson

from .._context import ItemContext, StepContext
from .._errors import DataEncodingError, NonRetryableError
from .._json import encode, to_json
from .._messages import MessageMappingError, validate_state
from .._observe import AttemptInput, AttemptStart, TraceScope, format_traceback, open_scope
from ..machine import KEEP, CancelAttempt, Event, HistoryEntry, RunStep, StepFailed, StepSucceeded
from ._base import Held, RuntimeBase, log

_NOT_RUN = object()  # what a thread returns for an attempt cancelled before it started
# StepSucceeded((step, token, result, size, data, item)) without the named tuple's generated __new__.
_succeeded = functools.partial(tuple.__new__, StepSucceeded)


class Attempts(RuntimeBase):
    """Runs the attempts the committed transitions dispatched, and cancels them."""

    def _cancel_attempt(self, held: Held, eff: CancelAttempt) -> None:
        """Stop a local attempt the machine has cancelled; a thread running it is abandoned."""
        task = held.inflight.pop(eff.token, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    def _dispatch(self, held: Held, eff: RunStep) -> None:
        task = asyncio.create_task(self._run_attempt(held, eff))
        held.inflight[eff.token] = task

    async def _run_attempt(self, held: Held, eff: RunStep) -> None:
        """Run one attempt and apply its outcome, unless the saga moved on meanwhile."""
        event = await self._run_step(held, eff)
        if held.inflight.pop(eff.token, None) is None or self._held.get(held.state.id) is not held:
            return  # cancelled, or the saga was aborted, finished or taken over meanwhile
        if isinstance(event, StepSucceeded) and isinstance(event.data, DataUpdate):
            event = _with_update(held, event, event.data)
        self._apply(held, event)

    async def _run_step(self, held: Held, eff: RunStep) -> Event:
        st = held.state
        defn = held.definition
        name = eff.step
        key = (defn.name, defn.version, name, eff.compensation)
        entry = self._fns.get(key)
        direction = "compensation" if eff.compensation else "action"
        event: Event
        slots = self._slots
        assert slots is not None
        started = self.clock() if self._observers else 0.0
        scope = None
        if self._tracers:
            scope = open_scope(
                self._tracers,
                "attempt_scope",
                AttemptStart(st.id, st.name, name, eff.attempt, eff.compensation, started, st.correlation_id, eff.item),
            )
        error: BaseException | None = None
        is_async = False
        try:
            if entry is None:
                raise NonRetryableError(f"step {name!r} has no local {direction}: message steps need a transport")
            fn, is_async, types = entry
            if eff.item is None:
                ctx = StepContext._of(st, name, eff.attempt, eff.compensation, self.worker_id, types)
            else:
                ctx = ItemContext._of_item(st, name, eff.item, eff.attempt, eff.compensation, self.worker_id, types)
            if slots.free and not slots.waiters:
                slots.free -= 1
            else:
                await slots.wait()
            if time.monotonic() > held.lease_mono:
                # The lease is no longer proven (this process was paused, or waited too long for
                # a slot): start nothing. The attempt stays recorded as running; whoever holds
                # the saga next runs it again.
                slots.release()
                self._let_go(held, f"its lease is not proven any more; step {name!r} was not started")
                raise asyncio.CancelledError
            try:
                if not is_async:
                    late = functools.partial(self._late, held, eff)
                    result = await self._call_in_thread(fn, ctx, eff.timeout, late, scope)
                elif scope is not None:
                    with scope:  # the attempt's span is current in the step's task
                        if eff.timeout is None:
                            result = await fn(ctx)
                        else:
                            async with asyncio.timeout(eff.timeout):
                                result = await fn(ctx)
                elif eff.timeout is None:
                    result = await fn(ctx)
                else:
                    async with asyncio.timeout(eff.timeout):
                        result = await fn(ctx)
            finally:
                slots.release()
            try:
                data = KEEP if ctx._updates is None else DataUpdate(to_json(ctx._updates, "ctx.update_data"))
                blob = (
                    None
                    if result is None
                    else encode(result, "{} of step {!r} returned a value that", direction, name, root="result")
                )
            except DataEncodingError as e:
                # The function ran to its end: its effect happened, only its result is lost.
                event = StepFailed(name, eff.token, str(e), False, True, None, eff.item)
            else:
                if blob is None:
                    event = _succeeded((name, eff.token, None, 4, data, eff.item))
                else:
                    event = _succeeded((name, eff.token, orjson.loads(blob), len(blob), data, eff.item))
        except TimeoutError as e:
            # The attempt was cut off mid-way: it may have had its effect. An async step's
            # traceback shows where it was waiting when it was cut off.
            error = e
            event = StepFailed(
                name,
                eff.token,
                f"attempt {eff.attempt} timed out after {eff.timeout}s",
                True,
                True,
                format_traceback(e) if is_async else None,
                eff.item,
            )
        except asyncio.CancelledError:
            held.inflight.pop(eff.token, None)
            if scope is not None:
                scope.end("cancelled", at=self.clock())
            raise
        except (NonRetryableError, DataEncodingError) as e:
            # Stored data that does not fit its model will not fit on the next attempt either.
            error = e
            event = StepFailed(name, eff.token, _describe(e), False, False, format_traceback(e), eff.item)
        except Exception as e:
            error = e
            sdef = defn.by_name[name]
            policy = sdef.compensation_retry if eff.compensation else sdef.retry
            event = StepFailed(
                name, eff.token, _describe(e), policy.is_retryable(e), False, format_traceback(e), eff.item
            )
        if self._observers:
            message = tb = None
            outcome = "succeeded"
            if isinstance(event, StepFailed):
                message, tb = event.error, event.traceback
                outcome = "timed_out" if isinstance(error, TimeoutError) else "failed"
            ended = self.clock()
            if scope is not None:
                scope.end(outcome, error=message, exception=error, at=ended)
            self._report(
                "on_attempt",
                AttemptInput(
                    st.id, st.name, name, eff.attempt, eff.compensation, started, ended, outcome, message,
                    st.correlation_id, tb, eff.item,
                ),
            )  # fmt: skip
        return event

    async def _call_in_thread(
        self,
        fn: Callable[..., Any],
        ctx: StepContext,
        timeout: float | None,
        late: Callable[[asyncio.Future[Any]], None],
        scope: TraceScope | None = None,
    ) -> Any:
        """Run a plain function on the thread pool; its timeout counts from when a thread starts it.

        The function runs in a copy of the caller's context (its context
        variables, and the attempt's span when *scope* is given). On timeout or
        cancellation the thread cannot be stopped: it is abandoned, and *late*
        is told when it ends; what it returns is never applied.
        """
        executor = self._executor
        assert executor is not None
        loop = self._loop_()
        started: asyncio.Future[None] = loop.create_future()
        abandoned = False
        if scope is None:
            context = contextvars.copy_context()
        else:
            with scope:
                context = contextvars.copy_context()

        def run() -> Any:
            if abandoned:
                return _NOT_RUN  # cancelled while it waited for a thread: it never starts
            loop.call_soon_threadsafe(_set_done, started)
            return context.run(fn, ctx)

        done = loop.run_in_executor(executor, run)
        try:
            if timeout is None:
                result = await asyncio.shield(done)
            else:
                await asyncio.wait({started, done}, return_when=asyncio.FIRST_COMPLETED)
                async with asyncio.timeout(timeout):
                    result = await asyncio.shield(done)
        except BaseException:
            if not done.done():
                # Cut off while the thread runs (or waits for one): it is abandoned. A function
                # that raised has simply failed, and there is nothing late to record.
                abandoned = True
                done.add_done_callback(late)
            raise
        if inspect.isawaitable(result):
            if scope is None:
                return await result
            with scope:
                return await result
        return result

    def _let_go(self, held: Held, why: str) -> None:
        """Stop holding a saga whose lease may be gone: its attempts stop, nothing more is committed."""
        sid = held.state.id
        if self._held.get(sid) is held:
            del self._held[sid]
        if held.timer is not None:
            held.timer.cancel()
            held.timer = None
        current = asyncio.current_task()
        for task in held.inflight.values():
            if task is not current:
                task.cancel()
        held.inflight.clear()
        log.warning("sagakit: let go of saga %s: %s", sid, why)

    def _late(self, held: Held, eff: RunStep, fut: asyncio.Future[Any]) -> None:
        """An abandoned thread finished: record that its outcome came too late and is not applied."""
        if fut.cancelled() or not self._opened:
            return
        exc = fut.exception()
        if exc is None and fut.result() is _NOT_RUN:
            return
        how = f"raised {_describe(exc)}" if exc is not None else "returned"
        what = "compensation of step" if eff.compensation else "step"
        item = "" if eff.item is None else f" item {eff.item}"
        entry = HistoryEntry(
            self.clock(),
            "stale_rejected",
            f"{what} {eff.step!r}{item} attempt {eff.attempt} {how} after it was abandoned; its result is not applied",
            eff.step,
            eff.attempt,
        )
        self._in_background(self.store.append_history(held.state.id, held.state.revision, [entry]))


class DataUpdate(NamedTuple):
    """Fields a step changed with ``ctx.update_data``, merged into the saga's data when its success is applied."""

    changes: dict[str, Any]


def _with_update(held: Held, event: StepSucceeded, update: DataUpdate) -> Event:
    """The success with the saga's data as it is now plus the step's changes, validated against the state model.

    Merged when the outcome is applied (not when the step began), so changes
    that other steps made meanwhile are kept.
    """
    current = held.state.data
    merged = {**(current if isinstance(current, Mapping) else {}), **update.changes}
    model = held.definition.state_model
    if model is not None:
        try:
            merged = validate_state(model, merged)
        except MessageMappingError as e:
            # The step ran to its end: its effect happened, only its data change is refused.
            return StepFailed(
                event.step,
                event.token,
                f"ctx.update_data: the new saga data is invalid: {e}",
                False,
                True,
                format_traceback(e),
                event.item,
            )
    return event._replace(data=merged)


def _set_done(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _describe(e: BaseException) -> str:
    text = str(e)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
