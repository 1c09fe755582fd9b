"""State migration: sagas started under one shape of data finish under the next, through upcasters."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from sagakit import DefinitionError, SagaBuilder, SagaEngine, SagaStatus, StepContext, StepStatus
from sagakit.machine import STATE_VERSION, Resume, decide, new_saga


class OrderV1(BaseModel):
    order_id: str
    amount: float


class OrderV2(BaseModel):
    order_id: str
    amount_cents: int  # renamed and rescaled
    currency: str  # new and required


seen: list[Any] = []


def definition(model: type, version: int = 1, upcasters: Any = None, *, hold: bool = False) -> Any:
    async def reserve(ctx: StepContext) -> None:
        return None

    async def charge(ctx: StepContext) -> dict[str, Any]:
        if hold:
            raise RuntimeError("payment provider down")  # retried later: the saga waits with a wake time
        seen.append(dict(ctx.data))
        return {}

    from sagakit import RetryPolicy

    b = SagaBuilder("order_migrating")
    b.state(model, version=version, upcasters=upcasters)
    b.step("reserve", reserve)
    b.step("charge", charge, retry=RetryPolicy(max_attempts=5, initial_delay=0.3, max_delay=0.3))
    return b.build()


def to_v2(d: dict[str, Any]) -> dict[str, Any]:
    return {"order_id": d["order_id"], "amount_cents": round(d.pop("amount") * 100), "currency": "EUR"}


async def test_sagas_started_on_the_old_shape_finish_on_the_new_one(store_url: str) -> None:
    seen.clear()
    async with SagaEngine(store_url) as old:
        old.register(definition(OrderV1, hold=True))
        ids = [await old.start("order_migrating", {"order_id": f"o{i}", "amount": 12.5 + i}) for i in range(5)]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while loop.time() < deadline:
            snaps = [await old.get(i) for i in ids]
            if all(s.steps["charge"].attempts >= 1 for s in snaps):
                break
            await asyncio.sleep(0.02)
    # A new release: the state model changed shape; the definition version stays 1.
    async with SagaEngine(store_url) as new:
        new.register(definition(OrderV2, version=2, upcasters={1: to_v2}))
        snaps = [await new.wait(i, timeout=20) for i in ids]
    assert [s.status for s in snaps] == [SagaStatus.COMPLETED] * 5
    assert snaps[0].data == {"order_id": "o0", "amount_cents": 1250, "currency": "EUR"}
    assert sorted(d["amount_cents"] for d in seen) == [1250, 1350, 1450, 1550, 1650]
    assert all(any(h.kind == "state_migrated" for h in s.history) for s in snaps)


async def test_new_sagas_start_on_the_current_shape(store_url: str) -> None:
    async with SagaEngine(store_url) as engine:
        engine.register(definition(OrderV2, version=2, upcasters={1: to_v2}))
        sid = await engine.start("order_migrating", {"order_id": "n1", "amount_cents": 5, "currency": "USD"})
        snap = await engine.wait(sid, timeout=20)
    assert snap.status is SagaStatus.COMPLETED
    assert not any(h.kind == "state_migrated" for h in snap.history)


async def test_an_upcaster_that_raises_fails_the_saga_for_an_operator(store_url: str) -> None:
    async with SagaEngine(store_url) as old:
        old.register(definition(OrderV1, hold=True))
        sid = await old.start("order_migrating", {"order_id": "x", "amount": 1.0})

    def broken(d: dict[str, Any]) -> dict[str, Any]:
        raise KeyError("currency_table")

    async with SagaEngine(store_url) as new:
        new.register(definition(OrderV2, version=2, upcasters={1: broken}))
        snap = await new.wait(sid, timeout=20)
    assert snap.status is SagaStatus.FAILED
    assert "upcaster from state version 1 raised KeyError" in (snap.error or "")
    assert snap.data == {"order_id": "x", "amount": 1.0}  # left as it was, for the operator


def test_the_machine_upcasts_once_and_validates() -> None:
    v1 = definition(OrderV1)
    st = new_saga(v1, "s1", {"order_id": "a", "amount": 2.0}, 0.0, begin=False).state
    assert STATE_VERSION not in st.meta
    v3 = definition(
        OrderV2, version=3, upcasters={1: lambda d: {**d, "currency": "EUR"}, 2: lambda d: {
            "order_id": d["order_id"], "amount_cents": int(d["amount"] * 100), "currency": d["currency"]}}
    )  # fmt: skip
    d = decide(v3, st, Resume(), 1.0)
    assert d.state.data == {"order_id": "a", "amount_cents": 200, "currency": "EUR"}
    assert d.state.meta[STATE_VERSION] == 3
    assert st.data == {"order_id": "a", "amount": 2.0}  # the input state is not changed
    again = decide(v3, d.state, Resume(), 2.0)
    assert not any(h.kind == "state_migrated" for h in again.history)
    bad = decide(definition(OrderV2, version=2, upcasters={1: lambda d: d}), st, Resume(), 1.0)
    assert bad.state.status is SagaStatus.FAILED
    assert "does not validate" in (bad.state.error or "") and "currency" in (bad.state.error or "")
    assert bad.state.steps["reserve"].status is StepStatus.PENDING


@pytest.mark.parametrize(
    ("version", "upcasters", "message"),
    [
        (2, {}, None),
        (3, {2: lambda d: d}, None),
        (3, {1: lambda d: d}, "no upcaster from state version(s) [2]"),
        (2, {2: lambda d: d}, "must be an older state version"),
        (2, {1: "not callable"}, "must be callable"),
        (0, {}, "state version must be an integer >= 1"),
    ],
)
def test_upcasters_are_checked_when_the_definition_is_built(version: int, upcasters: Any, message: str | None) -> None:
    if message is None:
        definition(OrderV2, version=version, upcasters=upcasters)
        return
    with pytest.raises(DefinitionError, match=re.escape(message)):
        definition(OrderV2, version=version, upcasters=upcasters)


@given(
    target=st.integers(min_value=2, max_value=6),
    start=st.integers(min_value=1, max_value=6),
    raises_at=st.one_of(st.none(), st.integers(min_value=1, max_value=5)),
)
def test_property_upcasting_runs_each_step_once_in_order_or_fails_the_saga(
    target: int, start: int, raises_at: int | None
) -> None:
    start = min(start, target)

    def step(v: int) -> Any:
        def up(d: dict[str, Any]) -> dict[str, Any]:
            if v == raises_at:
                raise ValueError(f"cannot upcast {v}")
            return {**d, "trail": [*d.get("trail", []), v]}

        return up

    defn = definition(None, version=target, upcasters={v: step(v) for v in range(1, target)})
    base = new_saga(defn, "s", {"order_id": "o"}, 0.0, begin=False).state
    base.meta = {STATE_VERSION: start}
    d = decide(defn, base, Resume(), 1.0)
    expected = list(range(start, target))
    if raises_at is not None and raises_at in expected:
        assert d.state.status is SagaStatus.FAILED
        assert f"upcaster from state version {raises_at} raised" in (d.state.error or "")
        assert d.state.data == {"order_id": "o"}
    else:
        assert d.state.data.get("trail", []) == expected
        assert d.state.meta[STATE_VERSION] == target
        assert decide(defn, d.state, Resume(), 2.0).state.data == d.state.data  # once only
    assert base.data == {"order_id": "o"} and base.meta == {STATE_VERSION: start}
