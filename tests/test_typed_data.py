"""Typed data: models, dataclasses, Decimal, datetime, UUID and Enum in and out of sagas; NaN refused by path."""

from __future__ import annotations

import dataclasses
import enum
import math
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
import pytest
from pydantic import BaseModel

from sagakit import (
    DataEncodingError,
    NonRetryableError,
    SagaBuilder,
    SagaEngine,
    SagaStatus,
    StepContext,
    StepStatus,
    wait_for,
)
from sagakit._json import NOT_PLAIN, encode, model_type, plain_copy


class Tier(enum.Enum):
    GOLD = "gold"
    SILVER = "silver"


class Item(BaseModel):
    sku: str
    price: Decimal


class Order(BaseModel):
    order_id: uuid.UUID
    placed_at: datetime
    tier: Tier
    items: list[Item]
    total: Decimal


class Receipt(BaseModel):
    charge_id: str
    amount: Decimal
    at: datetime


@dataclasses.dataclass
class Parcel:
    tracking: str
    weight_kg: Decimal


ORDER = Order(
    order_id=uuid.UUID("12345678-1234-5678-1234-567812345678"),
    placed_at=datetime(2026, 12, 7, 15, 0, tzinfo=UTC),
    tier=Tier.GOLD,
    items=[Item(sku="a", price=Decimal("19.99")), Item(sku="b", price=Decimal("0.01"))],
    total=Decimal("20.00"),
)


def typed_saga(seen: dict[str, Any], fail_last: bool = False) -> Any:
    async def charge(ctx: StepContext) -> Receipt:
        order = ctx.data_as(Order)
        seen["order"] = order
        seen["raw_data"] = ctx.data
        return Receipt(charge_id=f"ch-{order.order_id}", amount=order.total, at=order.placed_at)

    async def refund(ctx: StepContext) -> None:
        seen["refund_of"] = ctx.result

    def ship(ctx: StepContext) -> Parcel:  # a plain def, annotated with a dataclass
        seen["charge_result"] = ctx.results["charge"]
        return Parcel(tracking="t-1", weight_kg=Decimal("1.250"))

    async def confirm(ctx: StepContext) -> dict[str, Any]:
        seen["ship_result"] = ctx.results["ship"]
        if fail_last:
            raise NonRetryableError("confirmation refused")
        return {"ok": True}

    b = SagaBuilder("typed")
    b.step("charge", charge, refund)
    b.step("ship", ship)
    b.step("confirm", confirm)
    return b.build()


async def test_model_input_and_annotated_results_come_back_typed(store_url: str) -> None:
    seen: dict[str, Any] = {}
    async with SagaEngine(store_url) as engine:
        engine.register(typed_saga(seen))
        snap = await engine.wait(await engine.start("typed", ORDER), timeout=20)
    assert snap.status is SagaStatus.COMPLETED
    # Stored in JSON form: exact decimals as strings, times as ISO 8601, the enum as its value.
    assert snap.data["total"] == "20.00" and snap.data["items"][0]["price"] == "19.99"
    assert snap.data["order_id"] == str(ORDER.order_id) and snap.data["tier"] == "gold"
    assert seen["raw_data"] == snap.data  # ctx.data is still the stored dict
    # Read typed: the same values and types as went in.
    assert seen["order"] == ORDER and isinstance(seen["order"].total, Decimal)
    assert isinstance(seen["charge_result"], Receipt) and seen["charge_result"].amount == Decimal("20.00")
    assert seen["charge_result"].at == ORDER.placed_at
    assert seen["ship_result"] == Parcel(tracking="t-1", weight_kg=Decimal("1.250"))
    assert snap.steps["charge"].result == {"charge_id": f"ch-{ORDER.order_id}", "amount": "20.00",
                                           "at": "2026-12-07T15:00:00Z"}  # fmt: skip
    assert snap.data_as(Order) == ORDER
    assert snap.steps["ship"].result_as(Parcel).weight_kg == Decimal("1.250")


async def test_a_compensation_gets_its_step_result_as_the_annotated_model(store_url: str) -> None:
    seen: dict[str, Any] = {}
    async with SagaEngine(store_url) as engine:
        engine.register(typed_saga(seen, fail_last=True))
        snap = await engine.wait(await engine.start("typed", ORDER), timeout=20)
    assert snap.status is SagaStatus.COMPENSATED
    assert isinstance(seen["refund_of"], Receipt) and seen["refund_of"].amount == Decimal("20.00")


async def test_a_skip_result_given_as_a_model_reaches_later_steps_typed(store_url: str) -> None:
    seen: dict[str, Any] = {}

    async def charge(ctx: StepContext) -> Receipt:
        raise RuntimeError("gateway down")

    async def after(ctx: StepContext) -> None:
        seen["charge"] = ctx.results["charge"]

    from sagakit import RetryPolicy

    b = SagaBuilder("skippy")
    b.step("charge", charge, retry=RetryPolicy(max_attempts=50, initial_delay=5.0, jitter=0))
    b.step("after", after)
    receipt = Receipt(charge_id="manual", amount=Decimal("7.10"), at=datetime(2026, 1, 1, tzinfo=UTC))
    async with SagaEngine(store_url) as engine:
        engine.register(b.build())
        sid = await engine.start("skippy")
        await _until(engine, sid, lambda s: s.steps["charge"].attempts >= 1 and s.steps["charge"].error is not None)
        await engine.skip(sid, "charge", result=receipt, reason="charged by hand")
        snap = await engine.wait(sid, timeout=20)
    assert snap.status is SagaStatus.COMPLETED
    assert seen["charge"] == receipt


async def test_nan_in_the_input_is_refused_naming_its_path_and_nothing_is_stored(store_url: str) -> None:
    async with SagaEngine(store_url) as engine:
        engine.register(typed_saga({}))
        data = {"items": [{"price": 1.0}, {"price": 2.0}, {"price": 3.0}, {"price": float("nan")}]}
        with pytest.raises(DataEncodingError, match=r"data\.items\[3\]\.price is nan"):
            await engine.start("typed", data)
        with pytest.raises(ValueError, match=r"data\.limits\['max rate'\] is inf"):
            await engine.start("typed", {"limits": {"max rate": math.inf}})
        with pytest.raises(TypeError, match=r"data\.total is Decimal\('-Infinity'\)"):
            await engine.start("typed", {"total": Decimal("-Infinity")})
        with pytest.raises(DataEncodingError, match=r"data\.readings\[1\]\.value is nan"):
            await engine.start("typed", {"readings": [Measured(value=1.0), Measured(value=math.nan)]})
        with pytest.raises(DataEncodingError, match=r"data\.tags is a builtins\.set"):
            await engine.start("typed", {"tags": {"a"}})
        assert await engine.count() == 0


async def test_a_nan_result_fails_the_step_naming_the_path_and_a_nan_update_too(store_url: str) -> None:
    async def score(ctx: StepContext) -> dict[str, Any]:
        return {"scores": [0.5, float("inf")]}

    async def note(ctx: StepContext) -> None:
        ctx.update_data(ratio=float("nan"))

    async def price(ctx: StepContext) -> None:
        ctx.update_data(price=Decimal("9.95"), at=datetime(2026, 5, 1, tzinfo=UTC))

    b = SagaBuilder("scores")
    b.step("score", score)
    c = SagaBuilder("notes")
    c.step("note", note)
    d = SagaBuilder("prices")
    d.step("price", price)
    async with SagaEngine(store_url) as engine:
        engine.register(b.build(), c.build(), d.build())
        s1 = await engine.wait(await engine.start("scores"), timeout=20)
        s2 = await engine.wait(await engine.start("notes", {}), timeout=20)
        s3 = await engine.wait(await engine.start("prices", {"n": None}), timeout=20)
    assert s1.status is SagaStatus.COMPENSATED
    assert s1.steps["score"].attempts == 1  # not retried: the same value would come back
    assert "result.scores[1] is inf" in (s1.steps["score"].error or "")
    assert s1.steps["score"].uncertain  # it ran to its end: its effect may have happened
    assert s2.steps["note"].status is StepStatus.FAILED
    assert "ctx.update_data" in (s2.steps["note"].error or "") and "data.ratio is nan" in (s2.steps["note"].error or "")
    assert s3.status is SagaStatus.COMPLETED
    assert s3.data == {"n": None, "price": "9.95", "at": "2026-05-01T00:00:00+00:00"}


class Measured(BaseModel):
    value: float


async def test_an_event_with_nan_is_refused_by_notify(store_url: str) -> None:
    async def first(ctx: StepContext) -> None:
        return None

    b = SagaBuilder("measure")
    b.step("first", first)
    b.step("measured", action=wait_for(Measured))
    async with SagaEngine(store_url) as engine:
        engine.register(b.build())
        sid = await engine.start("measure")
        await _until(engine, sid, lambda s: s.steps["measured"].status is StepStatus.RUNNING)
        with pytest.raises(DataEncodingError, match=r"event\.value is nan"):
            await engine.notify(sid, Measured(value=math.nan))
        await engine.notify(sid, Measured(value=1.5))
        snap = await engine.wait(sid, timeout=20)
    assert snap.status is SagaStatus.COMPLETED and snap.data["value"] == 1.5


def test_plain_data_with_nulls_is_not_refused_and_paths_name_keys_and_items() -> None:
    assert encode({"a": None, "b": [None, {"c": "null"}]}, "x") == b'{"a":null,"b":[null,{"c":"null"}]}'
    with pytest.raises(DataEncodingError, match=r"data\.a\[1\] has the key 1, which is not a string"):
        encode({"a": [{}, {1: "x"}]}, "x")
    with pytest.raises(DataEncodingError, match=r"data\.big is an integer beyond 64 bits"):
        encode({"big": 2**70}, "x")
    with pytest.raises(DataEncodingError, match=r"data\.parcel\.weight_kg is Decimal\('NaN'\)"):
        encode({"parcel": Parcel("t", Decimal("NaN"))}, "x")


def test_the_result_model_is_read_from_the_return_annotation() -> None:
    async def a(ctx: StepContext) -> Receipt: ...
    def b(ctx: StepContext) -> Parcel | None: ...
    def c(ctx: StepContext) -> dict[str, Any]: ...
    def d(ctx):  # type: ignore[no-untyped-def]
        ...

    assert model_type(a) is Receipt
    assert model_type(b) is Parcel
    assert model_type(c) is None and model_type(d) is None


async def _until(engine: SagaEngine, sid: str, cond: Any, timeout: float = 20.0) -> None:
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if cond(await engine.get(sid)):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"saga {sid} never reached the expected state: {(await engine.get(sid)).steps}")


def test_plain_copy_equals_the_parsed_json_and_declines_what_json_would_change() -> None:
    """Large data is copied instead of parsed back: the copy must be what parsing gives, or nothing."""
    plain = {"a": [1, -0.0, 1e16, True, None, "x" * 5000], "b": {"c": {"d": [[], {}]}}, "é": "ü"}
    copy = plain_copy(plain, 100)
    assert copy == orjson.loads(encode(plain, "x")) and copy is not plain
    assert copy["b"]["c"] is not plain["b"]["c"] and copy["a"] is not plain["a"]  # containers are the copy's own
    assert [type(v) for v in copy["a"]] == [type(v) for v in orjson.loads(encode(plain, "x"))["a"]]
    for different in (
        {"k": (1, 2)},  # a tuple is a list in JSON
        {"k": Decimal("1.5")},  # a string in JSON
        {"k": Tier.GOLD},  # its value in JSON
        {"k": True, "n": Tier.GOLD.value, "s": type("S", (str,), {})("sub")},  # a str subclass
        {"k": ORDER},  # a model
        {"k": Parcel("t", Decimal("1"))},  # a dataclass
        {Tier.GOLD.value: 1, 2: 3},  # a key that is not a string (encode refuses it first anyway)
    ):
        assert plain_copy(different, 100) is NOT_PLAIN
    assert plain_copy({"many": list(range(50))}, 50) is NOT_PLAIN  # over the budget: parsed instead
    assert plain_copy({"many": list(range(50))}, 52) == {"many": list(range(50))}


async def test_large_input_is_stored_as_given_and_later_changes_to_it_do_not_reach_the_saga(store_url: str) -> None:
    """Data over the parsing threshold goes the copy-and-stored-text way; plain and typed data alike."""
    seen: dict[str, Any] = {}

    async def look(ctx: StepContext) -> None:
        seen[ctx.saga_id] = ctx.data

    b = SagaBuilder("big")
    b.step("look", look)
    big = {"doc": "x" * 20_000, "lines": [{"n": i, "text": "y" * 100} for i in range(20)], "nested": {"a": [1, 2.5]}}
    typed = {**big, "total": Decimal("9.99"), "tags": ("a", "b")}
    async with SagaEngine(store_url) as engine:
        engine.register(b.build())
        first = await engine.start("big", big)
        second = await engine.start("big", typed)
        big["doc"] = "changed"
        big["lines"][0]["n"] = -1
        snaps = [await engine.wait(sid, timeout=20) for sid in (first, second)]
        stored = [await engine.get(sid) for sid in (first, second)]  # read back from the store
    expected = {
        "doc": "x" * 20_000,
        "lines": [{"n": i, "text": "y" * 100} for i in range(20)],
        "nested": {"a": [1, 2.5]},
    }
    assert snaps[0].data == stored[0].data == seen[first] == expected
    assert snaps[1].data == stored[1].data == seen[second] == {**expected, "total": "9.99", "tags": ["a", "b"]}
