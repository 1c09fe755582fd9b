"""SagaBuilder defaults, build() validation and RetryPolicy delays."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest

from sagakit import DefinitionError, RetryPolicy, SagaBuilder, SagaDefinition


def act(ctx: Any) -> None:
    return None


def undo(ctx: Any) -> None:
    return None


def raises(message: str) -> Any:
    """pytest.raises for a DefinitionError whose message contains *message* verbatim."""
    return pytest.raises(DefinitionError, match=re.escape(message))


# ---------------------------------------------------------------- builder defaults


def test_builder_defaults_to_version_1() -> None:
    defn = SagaBuilder("orders").step("a", act).build()
    assert isinstance(defn, SagaDefinition)
    assert defn.name == "orders"
    assert defn.version == 1
    assert defn.key == ("orders", 1)
    assert SagaBuilder("orders", version=3).step("a", act).build().version == 3


def test_after_defaults_to_the_previous_step_and_first_step_is_a_root() -> None:
    b = SagaBuilder("orders")
    b.step("reserve", act, undo).step("charge", act, undo).step("ship", act)
    defn = b.build()
    assert [s.after for s in defn.steps] == [(), ("reserve",), ("charge",)]
    assert defn.order == ("reserve", "charge", "ship")


def test_after_empty_list_makes_a_root_and_a_string_is_one_dependency() -> None:
    b = SagaBuilder("orders")
    b.step("reserve", act)
    b.step("audit", act, after=[])
    b.step("charge", act, after="reserve")
    b.step("notify", act, after=["reserve", "audit"])
    defn = b.build()
    assert defn.step("audit").after == ()
    assert defn.step("charge").after == ("reserve",)
    assert defn.step("notify").after == ("reserve", "audit")


def test_step_defaults() -> None:
    s = SagaBuilder("orders").step("a", act).build().step("a")
    assert s.compensation is None
    assert s.retry == RetryPolicy()
    assert s.compensation_retry.max_attempts == 10
    assert s.timeout is None
    assert s.compensation_timeout is None
    assert s.pivot is False
    assert s.local and s.compensation_local


def test_derived_lookups_of_a_diamond() -> None:
    b = SagaBuilder("diamond")
    b.step("a", act)
    b.step("b", act, after=["a"])
    b.step("c", act, after=["a"])
    b.step("d", act, after=["b", "c"])
    defn = b.build()
    assert defn.order == ("a", "b", "c", "d")
    assert defn.dependents == {"a": ("b", "c"), "b": ("d",), "c": ("d",), "d": ()}
    assert defn.descendants == {
        "a": frozenset("bcd"),
        "b": frozenset("d"),
        "c": frozenset("d"),
        "d": frozenset(),
    }
    assert defn.ancestors["d"] == frozenset("abc")
    assert defn.ancestors["a"] == frozenset()
    assert defn.by_name["c"].name == "c"


def test_topological_order_puts_dependencies_first_even_if_declared_later() -> None:
    b = SagaBuilder("late")
    b.step("ship", act, after=["pay"])
    b.step("pay", act, after=[])
    defn = b.build()
    assert defn.order == ("pay", "ship")


def test_definition_is_immutable() -> None:
    defn = SagaBuilder("orders").step("a", act).build()
    with pytest.raises(dataclasses.FrozenInstanceError):
        defn.version = 2  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        defn.steps[0].after = ("x",)  # type: ignore[misc]


def test_builder_options_reach_the_definition() -> None:
    b = SagaBuilder("orders", deadline=60.0, max_payload_bytes=2048, description="d")
    b.step("a", act, undo, timeout=2.5, compensation_timeout=4.0, pivot=True)
    defn = b.build()
    assert defn.deadline == 60.0
    assert defn.max_payload_bytes == 2048
    assert defn.description == "d"
    s = defn.step("a")
    assert (s.timeout, s.compensation_timeout, s.pivot, s.compensation) == (2.5, 4.0, True, undo)


def test_definition_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        SagaBuilder("orders").build()


# ---------------------------------------------------------------- validation


def test_no_steps() -> None:
    with raises("saga 'orders' has no steps"):
        SagaBuilder("orders").build()


def test_duplicate_step() -> None:
    b = SagaBuilder("orders").step("charge", act).step("charge", act)
    with raises("saga 'orders': duplicate step name 'charge'"):
        b.build()


def test_unknown_dependency_with_did_you_mean_hint() -> None:
    b = SagaBuilder("orders").step("reserve", act).step("charge", act, after=["reserv"])
    with raises("step 'charge' depends on unknown step 'reserv' (did you mean 'reserve'?)"):
        b.build()


def test_unknown_dependency_without_a_close_match_has_no_hint() -> None:
    b = SagaBuilder("orders").step("reserve", act).step("charge", act, after=["zzz"])
    with pytest.raises(DefinitionError) as info:
        b.build()
    assert str(info.value) == "step 'charge' depends on unknown step 'zzz'"


def test_self_dependency() -> None:
    b = SagaBuilder("orders").step("reserve", act, after=["reserve"])
    with raises("step 'reserve' depends on itself"):
        b.build()


def test_dependency_listed_twice() -> None:
    b = SagaBuilder("orders").step("a", act).step("b", act, after=["a", "a"])
    with raises("step 'b' lists a dependency twice"):
        b.build()


def test_two_step_cycle_message_shows_the_path() -> None:
    b = SagaBuilder("orders")
    b.step("a", act, after=["b"])
    b.step("b", act, after=["a"])
    with pytest.raises(DefinitionError) as info:
        b.build()
    msg = str(info.value)
    assert msg.startswith("steps form a dependency cycle: ")
    path = msg.removeprefix("steps form a dependency cycle: ")
    assert path in ("'a' -> 'b' -> 'a'", "'b' -> 'a' -> 'b'")


def test_longer_cycle_behind_a_root_shows_only_the_cycle() -> None:
    b = SagaBuilder("orders")
    b.step("root", act, after=[])
    b.step("x", act, after=["root", "z"])
    b.step("y", act, after=["x"])
    b.step("z", act, after=["y"])
    b.step("tail", act, after=["z"])  # downstream of the cycle, not part of it
    with pytest.raises(DefinitionError) as info:
        b.build()
    path = str(info.value).removeprefix("steps form a dependency cycle: ")
    nodes = [n.strip("'") for n in path.split(" -> ")]
    assert nodes[0] == nodes[-1], path
    assert sorted(nodes[:-1]) == ["x", "y", "z"], path
    # each arrow follows a real dependency edge
    deps = {"x": {"root", "z"}, "y": {"x"}, "z": {"y"}}
    for a, c in zip(nodes, nodes[1:], strict=False):
        assert c in deps[a], path


@pytest.mark.parametrize(
    ("policy", "problem"),
    [
        (RetryPolicy(max_attempts=0), "max_attempts must be an integer >= 1, got 0"),
        (RetryPolicy(max_attempts=2.5), "max_attempts must be an integer >= 1, got 2.5"),  # type: ignore[arg-type]
        (RetryPolicy(initial_delay=-1.0), "initial_delay must be >= 0, got -1.0"),
        (RetryPolicy(multiplier=0.5), "multiplier must be >= 1, got 0.5"),
        (
            RetryPolicy(initial_delay=5.0, max_delay=1.0),
            "max_delay (1.0) must be >= initial_delay (5.0)",
        ),
        (RetryPolicy(jitter=1.5), "jitter must be between 0 and 1, got 1.5"),
        (RetryPolicy(jitter=-0.1), "jitter must be between 0 and 1, got -0.1"),
        (
            RetryPolicy(non_retryable=(ValueError, "KeyError")),  # type: ignore[arg-type]
            "non_retryable must hold exception types, got 'KeyError'",
        ),
        (
            RetryPolicy(non_retryable=(int,)),  # type: ignore[arg-type]
            "non_retryable must hold exception types, got <class 'int'>",
        ),
    ],
)
@pytest.mark.parametrize("field", ["retry", "compensation_retry"])
def test_bad_retry_policy_names_the_step_field_and_value(policy: RetryPolicy, problem: str, field: str) -> None:
    b = SagaBuilder("orders").step("reserve", act).step("charge", act, undo, **{field: policy})
    with raises(f"step 'charge': {field}: {problem}"):
        b.build()


def test_valid_edge_policies_are_accepted() -> None:
    ok = RetryPolicy(max_attempts=1, initial_delay=0.0, multiplier=1.0, max_delay=0.0, jitter=0.0)
    SagaBuilder("orders").step("a", act, undo, retry=ok, compensation_retry=ok).build()
    full = RetryPolicy(jitter=1.0, non_retryable=(KeyError, KeyboardInterrupt))
    SagaBuilder("orders").step("a", act, retry=full).build()


@pytest.mark.parametrize("field", ["timeout", "compensation_timeout"])
@pytest.mark.parametrize("value", [0, -1.0, float("nan")])
def test_bad_timeout(field: str, value: float) -> None:
    b = SagaBuilder("orders").step("charge", act, undo, **{field: value})
    with raises(f"step 'charge': {field} must be > 0 seconds, got {value!r}"):
        b.build()


def test_bad_deadline_and_payload_limit() -> None:
    with raises("saga 'orders': deadline must be > 0 seconds, got 0"):
        SagaBuilder("orders", deadline=0).step("a", act).build()
    with raises("saga 'orders': max_payload_bytes must be a positive integer, got 0"):
        SagaBuilder("orders", max_payload_bytes=0).step("a", act).build()


def test_compensation_after_a_pivot_step() -> None:
    b = SagaBuilder("orders")
    b.step("reserve", act, undo)
    b.step("charge", act, undo, pivot=True)
    b.step("pack", act)
    b.step("ship", act, undo)  # transitively after the pivot
    with raises(
        "step 'ship' has a compensation but runs after pivot step 'charge': "
        "steps after a pivot cannot be rolled back; remove the compensation"
    ):
        b.build()


def test_pivot_allows_compensation_before_it_and_on_parallel_branches() -> None:
    b = SagaBuilder("orders")
    b.step("reserve", act, undo)
    b.step("charge", act, undo, pivot=True)
    b.step("ship", act)
    b.step("audit", act, undo, after=["reserve"])  # parallel to the pivot, not after it
    defn = b.build()
    assert defn.step("charge").pivot


@pytest.mark.parametrize("bad", ["", "has space", "1starts_with_digit", "semi;colon", "ü"])
def test_invalid_saga_name(bad: str) -> None:
    with raises(f"saga name {bad!r} is invalid"):
        SagaBuilder(bad).step("a", act).build()


@pytest.mark.parametrize("bad", ["", "has space", "9lives", "a/b"])
def test_invalid_step_name(bad: str) -> None:
    with raises(f"saga 'orders': step name {bad!r} is invalid"):
        SagaBuilder("orders").step(bad, act).build()


def test_valid_names_with_dots_and_dashes() -> None:
    defn = SagaBuilder("billing.order-v2").step("_reserve.stock-1", act).build()
    assert defn.order == ("_reserve.stock-1",)


@pytest.mark.parametrize("bad", [0, -1, True, "1", 1.0])
def test_invalid_version(bad: Any) -> None:
    with raises(f"saga 'orders': version must be an integer >= 1, got {bad!r}"):
        SagaBuilder("orders", version=bad).step("a", act).build()


def test_action_must_be_callable_with_one_argument() -> None:
    with raises("step 'a': action must be a function or a message action, got 42"):
        SagaBuilder("orders").step("a", 42).build()  # type: ignore[arg-type]

    def two(ctx: Any, extra: Any) -> None:
        return None

    with raises("step 'a': compensation must accept one argument (the StepContext)"):
        SagaBuilder("orders").step("a", act, two).build()

    def none() -> None:
        return None

    with raises("step 'a': action must accept one argument (the StepContext)"):
        SagaBuilder("orders").step("a", none).build()

    async def ok_async(ctx: Any, *, flag: bool = False) -> None:
        return None

    SagaBuilder("orders").step("a", ok_async, lambda ctx: None).build()


# ---------------------------------------------------------------- RetryPolicy.delay


def test_delay_is_exponential_without_jitter() -> None:
    p = RetryPolicy(initial_delay=0.5, multiplier=3.0, max_delay=1000.0, jitter=0.0)
    assert [p.delay(n, "k") for n in (1, 2, 3, 4)] == [0.5, 1.5, 4.5, 13.5]


def test_delay_is_capped_by_max_delay() -> None:
    p = RetryPolicy(initial_delay=1.0, multiplier=2.0, max_delay=5.0, jitter=0.0)
    assert [p.delay(n, "k") for n in range(1, 7)] == [1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
    assert p.delay(200, "k") == 5.0  # no overflow for large attempt numbers


def test_jitter_zero_is_exact_for_any_key() -> None:
    p = RetryPolicy(initial_delay=0.25, multiplier=2.0, max_delay=30.0, jitter=0.0)
    assert {p.delay(3, f"saga-{i}:step") for i in range(50)} == {1.0}


def test_jitter_stays_within_the_fraction_and_spreads_keys() -> None:
    p = RetryPolicy(initial_delay=1.0, multiplier=2.0, max_delay=100.0, jitter=0.2)
    for attempt in (1, 2, 3):
        base = 2.0 ** (attempt - 1)
        values = [p.delay(attempt, f"saga-{i}:charge") for i in range(200)]
        assert all(base * 0.8 <= v <= base * 1.2 for v in values), (attempt, min(values), max(values))
        # different sagas spread out over the band, on both sides of the base
        assert len(set(values)) > 150
        assert min(values) < base * 0.95
        assert max(values) > base * 1.05


def test_jitter_applies_after_the_cap() -> None:
    p = RetryPolicy(initial_delay=1.0, multiplier=10.0, max_delay=5.0, jitter=0.1)
    values = [p.delay(4, f"k{i}") for i in range(100)]
    assert all(4.5 <= v <= 5.5 for v in values)


def test_delay_is_deterministic_for_the_same_key_and_attempt() -> None:
    p = RetryPolicy(jitter=0.5)
    assert p.delay(2, "saga-1:charge") == p.delay(2, "saga-1:charge")
    assert RetryPolicy(jitter=0.5).delay(2, "saga-1:charge") == p.delay(2, "saga-1:charge")
    assert p.delay(2, "saga-1:charge") != p.delay(2, "saga-2:charge")


def test_zero_initial_delay_means_no_wait() -> None:
    p = RetryPolicy(initial_delay=0.0, max_delay=0.0, jitter=0.5)
    assert p.delay(1, "k") == 0.0


def test_is_retryable() -> None:
    p = RetryPolicy(non_retryable=(KeyError,))
    assert not p.is_retryable(KeyError("x"))
    assert p.is_retryable(ValueError("x"))
