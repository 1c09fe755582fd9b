"""load_definition: the seed example, every field, and every error path with its field path."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

import sagakit
from sagakit import DefinitionError, SagaDefinition
from sagakit._messages import SendCommand
from sagakit.declarative import InvalidDefinition, load_definition, read_definition
from sagakit.declarative._correlation import CorrelationFunction

from .conftest import SEED

PAY = "app_root_name.domain.payments.events"
SHIP = "app_root_name.domain.shipping.events"
PAY_CMD = "app_root_name.application.payments.commands"
SHIP_CMD = "app_root_name.application.shipping.commands"


def _check_seed(d: SagaDefinition, app: SimpleNamespace) -> None:
    assert isinstance(d, SagaDefinition)
    assert d.name == "OrderProcessingSaga" and d.version == 1
    assert [s.name for s in d.steps] == ["ProcessPayment", "ShipOrder"]
    pay, ship = d.steps
    assert pay.after == () and ship.after == ("ProcessPayment",)
    assert pay.action == SendCommand(app.ProcessPaymentCommand, success=(app.PaymentProcessedEvent,))
    assert pay.compensation is None
    assert ship.action == SendCommand(app.ShipOrderCommand, success=(app.OrderShippedEvent,))
    assert ship.compensation == SendCommand(app.CancelShipmentCommand)
    assert not pay.local and not ship.local and not ship.compensation_local
    assert len(d.triggers) == 1
    event, correlation = d.triggers[0]
    assert event is app.OrderCreatedEvent
    assert isinstance(correlation, CorrelationFunction)
    assert correlation(app.OrderCreatedEvent(order_id="o-1", amount=3, address="a")) == "o-1"
    assert d.state_model is app.OrderProcessingSagaState
    assert d.completion_event is app.OrderProcessingCompletedEvent
    assert d.failure_event is app.OrderProcessingFailedEvent
    assert d.description is None
    assert d.extras == {
        "orchestrator": "OrderProcessingSagaOrchestrator",
        "description": None,
        "state_repository": app.OrderProcessingSagaStateRepository,
        "imports": (),
        "compensating_transactions": (),
    }


def test_the_seed_example_loads_from_json(app: SimpleNamespace) -> None:
    _check_seed(load_definition(SEED), app)
    _check_seed(load_definition(str(SEED)), app)


def test_the_seed_example_loads_from_yaml(tmp_path: Path, seed: dict[str, Any], app: SimpleNamespace) -> None:
    for name in ("saga.yaml", "saga.yml"):
        f = tmp_path / name
        f.write_text(yaml.safe_dump(seed))
        _check_seed(load_definition(f), app)


def test_files_without_a_known_extension_are_sniffed(
    tmp_path: Path, seed: dict[str, Any], app: SimpleNamespace
) -> None:
    (tmp_path / "saga.def").write_text(json.dumps(seed))
    (tmp_path / "saga.txt").write_text(yaml.safe_dump(seed))
    _check_seed(load_definition(tmp_path / "saga.def"), app)
    _check_seed(load_definition(tmp_path / "saga.txt"), app)


def test_the_seed_example_loads_from_a_mapping(seed: dict[str, Any], app: SimpleNamespace) -> None:
    _check_seed(load_definition(seed), app)


def test_the_top_level_export_is_the_same_loader(seed: dict[str, Any], app: SimpleNamespace) -> None:
    _check_seed(sagakit.load_definition(seed), app)
    _check_seed(sagakit.load_definition(SEED, version=1, search_path=None), app)


def test_version(seed: dict[str, Any]) -> None:
    assert load_definition(seed, version=3).version == 3
    with pytest.raises(InvalidDefinition, match="version must be an integer >= 1"):
        load_definition(seed, version=0)


def test_every_field_reaches_the_definition(seed: dict[str, Any], app: SimpleNamespace) -> None:
    seed["description"] = "Processes orders: payment, then shipping."
    seed["imports"] = [{"module": PAY, "names": ["PaymentRefundedEvent"]}]
    seed["steps"][0].update(
        failure_event_name="PaymentFailedEvent",
        failure_event_module=PAY,
        compensation_command_name="RefundPaymentCommand",
        compensation_command_module=PAY_CMD,
        compensation_success_event_name="PaymentRefundedEvent",
    )
    seed["steps"][1].update(
        success_event_name=["OrderShippedEvent", "PaymentProcessedEvent"],
        success_event_module=[SHIP, PAY],
        failure_event_name="ShipmentFailedEvent",
        failure_event_module=SHIP,
        compensation_success_event_name="ShipmentCancelledEvent",
        compensation_failure_event_name=f"{SHIP}.ShipmentCancellationFailedEvent",
    )
    seed["steps"].append(
        {
            "step_name": "RefundOnRequest",
            "command_name": "RefundPaymentCommand",
            "command_module": PAY_CMD,
            "success_event_name": ["PaymentRefundedEvent", "PaymentProcessedEvent"],
            "success_event_module": PAY,
            "is_compensating_transaction": True,
        }
    )
    d = load_definition(seed)
    pay, ship, refund = d.steps
    assert pay.action == SendCommand(app.ProcessPaymentCommand, (app.PaymentProcessedEvent,), (app.PaymentFailedEvent,))
    assert pay.compensation == SendCommand(app.RefundPaymentCommand, (app.PaymentRefundedEvent,))
    assert ship.action == SendCommand(
        app.ShipOrderCommand, (app.OrderShippedEvent, app.PaymentProcessedEvent), (app.ShipmentFailedEvent,)
    )
    assert ship.compensation == SendCommand(
        app.CancelShipmentCommand, (app.ShipmentCancelledEvent,), (app.ShipmentCancellationFailedEvent,)
    )
    assert refund.action == SendCommand(app.RefundPaymentCommand, (app.PaymentRefundedEvent, app.PaymentProcessedEvent))
    assert refund.after == ("ShipOrder",)
    assert d.description == "Processes orders: payment, then shipping."
    assert d.extras["description"] == d.description
    assert d.extras["imports"] == ((PAY, ("PaymentRefundedEvent",)),)
    assert d.extras["compensating_transactions"] == ("RefundOnRequest",)


def test_compensation_events_are_found_through_imports_and_the_step_modules(
    seed: dict[str, Any], app: SimpleNamespace
) -> None:
    step = seed["steps"][0]
    step.update(
        compensation_command_name="RefundPaymentCommand",
        compensation_command_module=PAY_CMD,
        compensation_success_event_name="ShipmentCancelledEvent",  # only via imports
        compensation_failure_event_name="PaymentFailedEvent",  # via the success event module
    )
    seed["imports"] = [{"module": SHIP, "names": ["ShipmentCancelledEvent"]}]
    d = load_definition(seed)
    assert d.steps[0].compensation == SendCommand(
        app.RefundPaymentCommand, (app.ShipmentCancelledEvent,), (app.PaymentFailedEvent,)
    )


def test_search_path_is_used_and_restored(tmp_path: Path, seed: dict[str, Any]) -> None:
    (tmp_path / "elsewhere_pkg").mkdir()
    (tmp_path / "elsewhere_pkg" / "__init__.py").write_text(
        "from pydantic import BaseModel\n\nclass Elsewhere(BaseModel):\n    order_id: str = ''\n"
    )
    seed["completion_event_name"] = "Elsewhere"
    seed["completion_event_module"] = "elsewhere_pkg"
    before = list(sys.path)
    with pytest.raises(InvalidDefinition, match="cannot import module 'elsewhere_pkg'"):
        load_definition(seed)
    d = load_definition(seed, search_path=[tmp_path])
    assert d.completion_event is not None and d.completion_event.__name__ == "Elsewhere"
    assert sys.path == before
    sys.modules.pop("elsewhere_pkg", None)


# ---------------------------------------------------------------- errors


def _problems(source: Any, **kwargs: Any) -> list[str]:
    with pytest.raises(InvalidDefinition) as e:
        load_definition(source, **kwargs)
    err = e.value
    assert isinstance(err, DefinitionError) and isinstance(err, ValueError)
    for line in err.errors:
        assert f"  {line}" in str(err)
    return list(err.errors)


def test_error_message_lists_every_problem_under_a_header(seed: dict[str, Any]) -> None:
    del seed["name"]
    seed["steps"][0]["step_nam"] = "x"
    with pytest.raises(InvalidDefinition) as e:
        load_definition(seed)
    assert str(e.value) == (
        "invalid saga definition: 2 problems\n"
        "  name: required field is missing; add it\n"
        "  steps[0].step_nam: unknown field (did you mean 'step_name'?)"
    )
    with pytest.raises(InvalidDefinition) as e2:
        load_definition(SEED.with_name("nope.json"))
    assert str(e2.value).startswith(f"invalid saga definition in {SEED.with_name('nope.json')}: 1 problem\n")


def test_file_errors(tmp_path: Path) -> None:
    assert _problems(tmp_path / "missing.json") == [
        f"file not found: {str(tmp_path / 'missing.json')!r} (check the path)"
    ]
    assert _problems(tmp_path) == [f"{str(tmp_path)!r} is a directory, not a definition file"]
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00")
    assert _problems(tmp_path / "bin.json")[0].startswith("not UTF-8 text")
    (tmp_path / "bad.json").write_text('{"name": "x",\n  oops}')
    assert _problems(tmp_path / "bad.json") == [
        "invalid JSON at line 2 column 3: Expecting property name enclosed in double quotes"
    ]
    (tmp_path / "bad.yaml").write_text("name: [unclosed\nsteps: 1\n")
    (problem,) = _problems(tmp_path / "bad.yaml")
    assert problem.startswith("invalid YAML at line ")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    assert _problems(tmp_path / "list.yaml") == [
        "expected a mapping (a JSON object / YAML mapping) of definition fields at the top level, got list"
    ]
    (tmp_path / "empty.yml").write_text("")
    assert "got NoneType" in _problems(tmp_path / "empty.yml")[0]
    assert _problems(5) == ["expected a file path or a mapping, got int 5"]


def test_yaml_is_loaded_safely(tmp_path: Path) -> None:
    (tmp_path / "evil.yaml").write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    (problem,) = _problems(tmp_path / "evil.yaml")
    assert problem.startswith("invalid YAML at line 1 column 7: ")
    assert "could not determine a constructor" in problem


def test_validation_errors_name_path_value_and_fix(seed: dict[str, Any]) -> None:
    seed["saga_typ"] = "x"
    seed["steps"][1]["success_event_module"] = 7
    seed["steps"][0]["is_compensating_transaction"] = "yes"
    seed["triggering_events"][0]["event_name"] = None
    seed["imports"] = "app"
    seed["description"] = {"a": 1}
    seed["steps"].append("NotAStep")
    seed["steps"].append(
        {**seed["steps"][1], "success_event_name": ["A", "B"], "success_event_module": ["m1", "m2", "m3"]}
    )
    assert _problems(seed) == [
        "triggering_events[0].event_name: must be a string, got None",
        "steps[0].is_compensating_transaction: must be true or false, got 'yes'",
        "steps[1].success_event_module: must be a string or a list of strings (module paths), got 7",
        "steps[2]: must be a mapping (JSON object) of fields, got 'NotAStep'",
        "steps[3].success_event_module: 3 module(s) for 2 success_event_name(s): give one module per event "
        "name, in the same order, or a single module string for all of them (value: ['m1', 'm2', 'm3'])",
        "imports: must be a list, got 'app'",
        "description: must be a string, got {'a': 1}",
        "saga_typ: unknown field (did you mean 'saga_type'?)",
    ]


def test_unknown_field_without_a_near_name(seed: dict[str, Any]) -> None:
    seed["steps"][0]["zzz"] = 1
    assert _problems(seed) == ["steps[0].zzz: unknown field (remove it or check its spelling)"]


def test_missing_fields(seed: dict[str, Any]) -> None:
    del seed["steps"][1]["command_module"]
    del seed["state_dto_name"]
    assert _problems(seed) == [
        "state_dto_name: required field is missing; add it",
        "steps[1].command_module: required field is missing; add it",
    ]


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        (
            lambda d: d["steps"][1].update(success_event_module="app_root_name.domain.shiping.events"),
            "steps[1].success_event_module: cannot import module "
            "'app_root_name.domain.shiping.events' (no module "
            "named 'app_root_name.domain.shiping'); check the module path, or put its root directory on the "
            "search path (--path DIR or PYTHONPATH)",
        ),
        (
            lambda d: d["steps"][1].update(success_event_name="OrderShipedEvent"),
            f"steps[1].success_event_name: module {SHIP!r} has no 'OrderShipedEvent' (did you mean "
            "'OrderShippedEvent'?)",
        ),
        (
            lambda d: d["steps"][0].update(command_name="Zzz"),
            f"steps[0].command_name: module {PAY_CMD!r} has no 'Zzz' (check the name, or that a command lives there)",
        ),
        (
            lambda d: d["steps"][0].update(command_name="not_a_class", command_module=PAY),
            f"steps[0].command_name: {PAY}.not_a_class is a function, not a class",
        ),
        (
            lambda d: d["steps"][0].update(success_event_name="NotAMessage"),
            f"steps[0].success_event_name: {PAY}.NotAMessage is not a pydantic model or dataclass; "
            "a success event "
            "must be one, so that it can be serialised and validated",
        ),
        (
            lambda d: d.update(state_dto_module="decl_fixtures.raises_on_import"),
            "state_dto_module: module 'decl_fixtures.raises_on_import' failed to import: RuntimeError: boom at import",
        ),
        (
            lambda d: d.update(state_repository_module="decl_fixtures.needs_missing_dependency"),
            "state_repository_module: module 'decl_fixtures.needs_missing_dependency' was found "
            "but failed to "
            "import: it needs 'sagakit_test_dependency_that_does_not_exist', which is not installed",
        ),
        (
            lambda d: d.update(state_dto_module=".relative.state"),
            "state_dto_module: '.relative.state' is relative; write the absolute module path",
        ),
        (
            lambda d: d.update(completion_event_module="app root.events"),
            "completion_event_module: 'app root.events' is not a dotted Python module path like "
            "'app.domain.payments.events'",
        ),
        (
            lambda d: d.update(completion_event_module=""),
            "completion_event_module: empty module path; write a dotted module path like 'app.domain.payments.events'",
        ),
        (
            lambda d: d.update(state_dto_name="Order State"),
            "state_dto_name: 'Order State' is not a Python class name",
        ),
        (
            lambda d: d.update(failure_event_name="class"),
            "failure_event_name: 'class' is not a Python class name",
        ),
        (
            lambda d: d["triggering_events"][0].update(event_module="nowhere_at_all"),
            "triggering_events[0].event_module: cannot import module 'nowhere_at_all' (no module named "
            "'nowhere_at_all'); check the module path, or put its root directory on the search path "
            "(--path DIR or PYTHONPATH)",
        ),
        (
            lambda d: d["triggering_events"][0].update(correlation_id_provider_str="lambda e: e.__class__"),
            "triggering_events[0].correlation_id_provider_str: the attribute '__class__' at column 11 is not "
            "allowed: names starting with '_' (private and special attributes) are off limits "
            "(in 'lambda e: e.__class__')",
        ),
        (
            lambda d: d["triggering_events"].append(dict(d["triggering_events"][0])),
            "triggering_events[1].event_name: 'OrderCreatedEvent' already triggers the saga in "
            "triggering_events[0]; list each event once",
        ),
        (
            lambda d: d.update(imports=[{"module": PAY, "names": ["PaymentFailedEvent", "Nope"]}]),
            f"imports[0].names[1]: module {PAY!r} has no 'Nope'",
        ),
        (
            lambda d: d.update(imports=[{"module": "no_such_pkg.x", "names": ["A"]}]),
            "imports[0].module: cannot import module 'no_such_pkg.x' (no module named "
            "'no_such_pkg'); check the "
            "module path, or put its root directory on the search path (--path DIR or PYTHONPATH)",
        ),
        (
            lambda d: d["steps"][1].update(step_name="ProcessPayment"),
            "steps[1].step_name: 'ProcessPayment' is already the name of steps[0]; step names must be unique",
        ),
        (
            lambda d: d["steps"][1].update(step_name="Ship Order"),
            "steps[1].step_name: 'Ship Order' is not a valid step name; use letters, digits, '_', "
            "'-' or '.', "
            "starting with a letter or '_'",
        ),
        (
            lambda d: d.update(saga_type="Order Processing"),
            "saga_type: 'Order Processing' is not a valid saga name; use letters, digits, '_', '-' or '.', "
            "starting with a letter or '_'",
        ),
        (lambda d: d.update(steps=[]), "steps: the saga has no steps; add at least one"),
        (
            lambda d: d["steps"][1].update(
                success_event_name=["OrderShippedEvent", "Nope"], success_event_module=[SHIP, PAY]
            ),
            f"steps[1].success_event_name[1]: module {PAY!r} has no 'Nope' (check the name, or "
            "that a success "
            "event lives there)",
        ),
        (
            lambda d: d["steps"][1].update(
                success_event_name=["OrderShippedEvent", "PaymentProcessedEvent"],
                success_event_module=[SHIP, "zz.q"],
            ),
            "steps[1].success_event_module[1]: cannot import module 'zz.q' (no module named 'zz'); "
            "check the module "
            "path, or put its root directory on the search path (--path DIR or PYTHONPATH)",
        ),
        (
            lambda d: d["steps"][1].update(success_event_name=["OrderShippedEvent", "OrderShippedEvent"]),
            "steps[1].success_event_name[1]: 'OrderShippedEvent' from "
            "'app_root_name.domain.shipping.events' is listed twice",
        ),
        (
            lambda d: d["steps"][1].update(failure_event_name="OrderShippedEvent", failure_event_module=SHIP),
            "steps[1].failure_event_name: 'OrderShippedEvent' is also a success event of the step; "
            "a reply must "
            "mean success or failure, not both",
        ),
        (
            lambda d: d["steps"][1].update(compensation_success_event_name="Vanished"),
            "steps[1].compensation_success_event_name: class 'Vanished' not found in "
            f"{SHIP_CMD!r}, {SHIP!r}; the schema gives compensation events no module field, so write it as "
            "'module.ClassName' or list it in an 'imports' entry",
        ),
        (
            lambda d: d["steps"][1].update(compensation_success_event_name=f"{SHIP}.Vanished"),
            f"steps[1].compensation_success_event_name: module {SHIP!r} has no 'Vanished' (check "
            "the name, or "
            "that a compensation event lives there)",
        ),
        (
            lambda d: d["steps"][1].update(compensation_success_event_name="not valid"),
            "steps[1].compensation_success_event_name: 'not valid' is not a Python class name",
        ),
        (
            lambda d: d["steps"][1].update(
                compensation_success_event_name="ShipmentCancelledEvent",
                compensation_failure_event_name="ShipmentCancelledEvent",
            ),
            "steps[1].compensation_failure_event_name: the same event as "
            "compensation_success_event_name; a reply "
            "must mean success or failure, not both",
        ),
    ],
)
def test_resolution_errors(seed: dict[str, Any], patch: Any, expected: str) -> None:
    patch(seed)
    assert _problems(seed) == [expected]


def test_the_state_repository_may_be_any_class(seed: dict[str, Any]) -> None:
    seed["state_repository_module"] = PAY
    seed["state_repository_name"] = "NotAMessage"
    assert load_definition(seed).extras["state_repository"].__name__ == "NotAMessage"
    seed["state_repository_name"] = "not_a_class"
    assert _problems(seed) == [f"state_repository_name: {PAY}.not_a_class is a function, not a class"]


def test_all_resolution_errors_are_reported_together(seed: dict[str, Any]) -> None:
    seed["state_dto_name"] = "Nope"
    seed["steps"][0]["command_module"] = "nope.nope"
    seed["steps"][1]["command_module"] = "nope.nope"  # one failed import, reported per field
    seed["triggering_events"][0]["correlation_id_provider_str"] = "lambda: 1"
    seed["completion_event_name"] = "Nope"
    problems = _problems(seed)
    assert [p.split(":")[0] for p in problems] == [
        "state_dto_name",
        "triggering_events[0].correlation_id_provider_str",
        "steps[0].command_module",
        "steps[1].command_module",
        "completion_event_name",
    ]


def test_read_definition_imports_nothing(seed: dict[str, Any]) -> None:
    seed["steps"][0]["command_module"] = "decl_fixtures.side_effects"
    dto = read_definition(seed)
    assert dto.steps[0].command_module == "decl_fixtures.side_effects"
    assert "decl_fixtures.side_effects" not in sys.modules
