"""The pydantic models mirror saga_orchestrator.schema.json field for field."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from sagakit.declarative import (
    ImportDefinitionDTO,
    SagaOrchestratorInputDTO,
    SagaStepInputDTO,
    TriggerEventConfigInputDTO,
)
from sagakit.declarative._models import success_events

from .conftest import SCHEMA, SEED_DATA

SPEC: dict[str, Any] = json.loads(SCHEMA.read_text())
MODELS = {
    "SagaOrchestratorInputDTO": SagaOrchestratorInputDTO,
    "SagaStepInputDTO": SagaStepInputDTO,
    "TriggerEventConfigInputDTO": TriggerEventConfigInputDTO,
    "ImportDefinitionDTO": ImportDefinitionDTO,
}


def _spec_of(name: str) -> dict[str, Any]:
    return SPEC if name == "SagaOrchestratorInputDTO" else SPEC["$defs"][name]


def _without_additional_properties(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: _without_additional_properties(v) for k, v in schema.items() if k != "additionalProperties"}
    if isinstance(schema, list):
        return [_without_additional_properties(v) for v in schema]
    return schema


EXTENSION_DEFS = {"KnownEvent", "RetryOptions", "SagaOptions", "StepOptions"}


def _without_extension(schema: Any) -> Any:
    """*schema* less sagakit's ``x-sagakit`` blocks (properties the seed schema tolerates) and their definitions."""
    if isinstance(schema, dict):
        return {
            k: _without_extension(v)
            for k, v in schema.items()
            if k != "x-sagakit" and not (isinstance(v, dict) and k in EXTENSION_DEFS)
        }
    if isinstance(schema, list):
        return [_without_extension(v) for v in schema]
    return schema


@pytest.mark.parametrize("name", list(MODELS))
def test_required_fields_and_property_names_match_the_spec(name: str) -> None:
    ours = _without_extension(MODELS[name].model_json_schema())
    spec = _spec_of(name)
    assert sorted(ours.get("required", [])) == sorted(spec["required"])
    assert list(ours["properties"]) == list(spec["properties"])  # same names, same order


@pytest.mark.parametrize("name", list(MODELS))
def test_every_property_matches_the_spec(name: str) -> None:
    ours = MODELS[name].model_json_schema()["properties"]
    spec = _spec_of(name)["properties"]
    for prop, expected in spec.items():
        assert _without_additional_properties(ours[prop]) == expected, prop


def test_the_whole_schema_equals_the_spec_apart_from_forbidding_extra_fields() -> None:
    ours = SagaOrchestratorInputDTO.model_json_schema()
    assert _without_additional_properties(_without_extension(ours)) == SPEC
    assert ours["additionalProperties"] is False
    for d in ours["$defs"].values():
        assert d["additionalProperties"] is False


def test_the_extension_block_is_the_only_addition_and_the_seed_schema_tolerates_it() -> None:
    ours = SagaOrchestratorInputDTO.model_json_schema()
    assert set(ours["properties"]) - set(SPEC["properties"]) == {"x-sagakit"}
    step = ours["$defs"]["SagaStepInputDTO"]["properties"]
    assert set(step) - set(SPEC["$defs"]["SagaStepInputDTO"]["properties"]) == {"x-sagakit"}
    assert set(ours["$defs"]) - set(SPEC["$defs"]) == EXTENSION_DEFS
    # The seed schema sets no additionalProperties, so JSON Schema allows other keys where it has none.
    assert "additionalProperties" not in SPEC
    assert "additionalProperties" not in SPEC["$defs"]["SagaStepInputDTO"]


def test_the_spec_copy_is_the_shared_one() -> None:
    from pathlib import Path

    shared = Path(__file__).parents[3] / "shared" / "spec" / "saga_orchestrator.schema.json"
    if not shared.exists():
        pytest.skip(f"{shared} is not there to compare with")
    assert json.loads(shared.read_text()) == SPEC


MINIMAL_STEP = {
    "step_name": "Pay",
    "command_name": "PayCommand",
    "command_module": "m.commands",
    "success_event_name": "Paid",
    "success_event_module": "m.events",
}
MINIMAL = {
    "name": "PayOrchestrator",
    "saga_type": "Pay",
    "state_dto_name": "State",
    "state_dto_module": "m.state",
    "state_repository_name": "Repo",
    "state_repository_module": "m.repo",
    "steps": [MINIMAL_STEP],
}


def test_defaults_of_the_optional_fields() -> None:
    dto = SagaOrchestratorInputDTO.model_validate(MINIMAL)
    assert dto.triggering_events == []
    assert dto.imports == []
    assert dto.completion_event_name is None and dto.completion_event_module is None
    assert dto.failure_event_name is None and dto.failure_event_module is None
    assert dto.description is None
    step = dto.steps[0]
    assert step.failure_event_name is None and step.failure_event_module is None
    assert step.compensation_command_name is None and step.compensation_command_module is None
    assert step.is_compensating_transaction is False
    assert step.compensation_success_event_name is None
    assert step.compensation_failure_event_name is None


def test_every_field_is_carried() -> None:
    data = {
        **MINIMAL,
        "triggering_events": [
            {
                "event_name": "Created",
                "event_module": "m.events",
                "correlation_id_provider_str": "lambda e: e.id",
            }
        ],
        "steps": [
            {
                **MINIMAL_STEP,
                "failure_event_name": "PayFailed",
                "failure_event_module": "m.events",
                "compensation_command_name": "Refund",
                "compensation_command_module": "m.commands",
                "is_compensating_transaction": True,
                "compensation_success_event_name": "Refunded",
                "compensation_failure_event_name": "RefundFailed",
            }
        ],
        "completion_event_name": "Done",
        "completion_event_module": "m.events",
        "failure_event_name": "Failed",
        "failure_event_module": "m.events",
        "imports": [{"module": "m.extra", "names": ["A", "B"]}],
        "description": "Takes payments.",
    }
    dto = SagaOrchestratorInputDTO.model_validate(data)
    assert dto.model_dump(exclude_unset=True) == data
    assert dto.triggering_events[0].correlation_id_provider_str == "lambda e: e.id"
    assert dto.imports[0] == ImportDefinitionDTO(module="m.extra", names=["A", "B"])


def test_the_seed_example_validates() -> None:
    dto = SagaOrchestratorInputDTO.model_validate(SEED_DATA)
    assert dto.name == "OrderProcessingSagaOrchestrator"
    assert [s.step_name for s in dto.steps] == ["ProcessPayment", "ShipOrder"]
    # and so do the examples embedded in the schema
    SagaOrchestratorInputDTO.model_validate(SPEC["example"])
    SagaStepInputDTO.model_validate(SPEC["$defs"]["SagaStepInputDTO"]["example"])


def _errors(data: dict[str, Any], model: Any = SagaOrchestratorInputDTO) -> list[tuple[tuple[Any, ...], str]]:
    with pytest.raises(ValidationError) as e:
        model.model_validate(data)
    return [(tuple(err["loc"]), err["msg"]) for err in e.value.errors()]


@pytest.mark.parametrize("field", SPEC["required"])
def test_each_required_field_of_the_orchestrator(field: str) -> None:
    data = {k: v for k, v in MINIMAL.items() if k != field}
    assert _errors(data) == [((field,), "Field required")]


@pytest.mark.parametrize("field", SPEC["$defs"]["SagaStepInputDTO"]["required"])
def test_each_required_field_of_a_step(field: str) -> None:
    step = {k: v for k, v in MINIMAL_STEP.items() if k != field}
    assert _errors({**MINIMAL, "steps": [step]}) == [(("steps", 0, field), "Field required")]


@pytest.mark.parametrize("field", SPEC["$defs"]["TriggerEventConfigInputDTO"]["required"])
def test_each_required_field_of_a_trigger(field: str) -> None:
    trigger = {"event_name": "E", "event_module": "m", "correlation_id_provider_str": "lambda e: e.a"}
    del trigger[field]
    assert _errors({**MINIMAL, "triggering_events": [trigger]}) == [(("triggering_events", 0, field), "Field required")]


@pytest.mark.parametrize("field", SPEC["$defs"]["ImportDefinitionDTO"]["required"])
def test_each_required_field_of_an_import(field: str) -> None:
    imp: dict[str, Any] = {"module": "m", "names": ["A"]}
    del imp[field]
    assert _errors({**MINIMAL, "imports": [imp]}) == [(("imports", 0, field), "Field required")]


@pytest.mark.parametrize(
    ("where", "data"),
    [
        (("comand_name",), {**MINIMAL, "comand_name": "x"}),
        (
            ("steps", 0, "sucess_event_name"),
            {**MINIMAL, "steps": [{**MINIMAL_STEP, "sucess_event_name": "x"}]},
        ),
        (
            ("triggering_events", 0, "correlation"),
            {
                **MINIMAL,
                "triggering_events": [
                    {
                        "event_name": "E",
                        "event_module": "m",
                        "correlation_id_provider_str": "x",
                        "correlation": "y",
                    }
                ],
            },
        ),
        (("imports", 0, "alias"), {**MINIMAL, "imports": [{"module": "m", "names": [], "alias": "x"}]}),
    ],
)
def test_unknown_fields_are_errors(where: tuple[Any, ...], data: dict[str, Any]) -> None:
    assert _errors(data) == [(where, "Extra inputs are not permitted")]


@pytest.mark.parametrize(
    ("names", "modules", "expected"),
    [
        ("A", "m", [("m", "A")]),
        (["A", "B"], "m", [("m", "A"), ("m", "B")]),
        (["A", "B"], ["m1", "m2"], [("m1", "A"), ("m2", "B")]),
        (["A", "B", "C"], ["m"], [("m", "A"), ("m", "B"), ("m", "C")]),
        ("A", ["m"], [("m", "A")]),
    ],
)
def test_success_event_modules_align_by_position(names: Any, modules: Any, expected: list[tuple[str, str]]) -> None:
    step = SagaStepInputDTO.model_validate(
        {**MINIMAL_STEP, "success_event_name": names, "success_event_module": modules}
    )
    assert success_events(step) == expected


@pytest.mark.parametrize(
    ("names", "modules", "where", "message"),
    [
        (["A", "B", "C"], ["m1", "m2"], "success_event_module", "2 module(s) for 3 success_event_name(s)"),
        ("A", ["m1", "m2"], "success_event_module", "2 module(s) for 1 success_event_name(s)"),
        ([], "m", "success_event_name", "an empty list: give at least one event class name"),
        ("A", [], "success_event_module", "an empty list: give at least one module path"),
        (5, "m", "success_event_name", "must be a string or a list of strings (event class names), got 5"),
        (["A", 5], "m", "success_event_name", "must be a string or a list of strings"),
        ("A", {"m": 1}, "success_event_module", "must be a string or a list of strings (module paths)"),
    ],
)
def test_success_event_shape_errors_name_the_field(names: Any, modules: Any, where: str, message: str) -> None:
    errors = _errors({**MINIMAL_STEP, "success_event_name": names, "success_event_module": modules}, SagaStepInputDTO)
    assert len(errors) == 1
    (loc, msg) = errors[0]
    assert loc == (where,)
    assert message in msg


@pytest.mark.parametrize(
    ("extra", "where", "message"),
    [
        ({"failure_event_name": "F"}, "failure_event_module", "required when failure_event_name is set"),
        ({"failure_event_module": "m"}, "failure_event_module", "set without failure_event_name"),
        (
            {"compensation_command_name": "C"},
            "compensation_command_module",
            "required when compensation_command_name",
        ),
        (
            {"compensation_command_module": "m"},
            "compensation_command_module",
            "set without compensation_command_name",
        ),
        (
            {"compensation_success_event_name": "S"},
            "compensation_success_event_name",
            "set without compensation_command_name",
        ),
        (
            {"compensation_failure_event_name": "F"},
            "compensation_failure_event_name",
            "set without compensation_command_name",
        ),
        (
            {
                "compensation_command_name": "C",
                "compensation_command_module": "m",
                "compensation_failure_event_name": "F",
            },
            "compensation_failure_event_name",
            "set without compensation_success_event_name",
        ),
    ],
)
def test_step_pairs(extra: dict[str, Any], where: str, message: str) -> None:
    errors = _errors({**MINIMAL_STEP, **extra}, SagaStepInputDTO)
    assert [loc for loc, _ in errors] == [(where,)]
    assert message in errors[0][1]


@pytest.mark.parametrize(
    ("extra", "where", "message"),
    [
        (
            {"completion_event_name": "Done"},
            "completion_event_module",
            "required when completion_event_name is set",
        ),
        ({"completion_event_module": "m"}, "completion_event_module", "set without completion_event_name"),
        ({"failure_event_name": "F"}, "failure_event_module", "required when failure_event_name is set"),
        ({"failure_event_module": "m"}, "failure_event_module", "set without failure_event_name"),
    ],
)
def test_orchestrator_pairs(extra: dict[str, Any], where: str, message: str) -> None:
    errors = _errors({**MINIMAL, **extra})
    assert [loc for loc, _ in errors] == [(where,)]
    assert message in errors[0][1]


@pytest.mark.parametrize(
    ("patch", "loc"),
    [
        ({"name": 5}, ("name",)),
        ({"steps": "ProcessPayment"}, ("steps",)),
        (
            {"steps": [{**MINIMAL_STEP, "is_compensating_transaction": "yes"}]},
            ("steps", 0, "is_compensating_transaction"),
        ),
        (
            {"steps": [{**MINIMAL_STEP, "is_compensating_transaction": 1}]},
            ("steps", 0, "is_compensating_transaction"),
        ),
        ({"imports": [{"module": "m", "names": "A"}]}, ("imports", 0, "names")),
        ({"description": ["x"]}, ("description",)),
        ({"triggering_events": {"event_name": "E"}}, ("triggering_events",)),
    ],
)
def test_wrong_types_are_errors_not_coerced(patch: dict[str, Any], loc: tuple[Any, ...]) -> None:
    assert [where for where, _ in _errors({**MINIMAL, **patch})] == [loc]


def test_models_are_frozen() -> None:
    dto = SagaOrchestratorInputDTO.model_validate(MINIMAL)
    with pytest.raises(ValidationError):
        dto.name = "Other"  # type: ignore[misc]
