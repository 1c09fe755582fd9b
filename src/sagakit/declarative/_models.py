"""Pydantic models of the declarative saga-orchestrator format (seed 000), field for field.

The JSON schema these models produce is the one in
``shared/spec/saga_orchestrator.schema.json`` (a test pins it), plus
``additionalProperties: false``: a misspelt field is an error, not ignored.
Beyond the schema, the models check what the schema cannot say: a ``*_name``
and its ``*_module`` come together, and the success event modules line up
with the success event names.
"""

from __future__ import annotations

import math
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationInfo, field_validator

__all__ = [
    "EXTENSION",
    "ImportDefinitionDTO",
    "KnownEvent",
    "RetryOptions",
    "SagaOptions",
    "SagaOrchestratorInputDTO",
    "SagaStepInputDTO",
    "StepOptions",
    "TriggerEventConfigInputDTO",
    "success_events",
]

_CONFIG = ConfigDict(extra="forbid", strict=True, frozen=True)
_NAMESPACE = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")

_STEP_EXAMPLE: dict[str, JsonValue] = {
    "command_module": "app_root_name.application.payments.commands",
    "command_name": "ProcessPaymentCommand",
    "compensation_command_module": "app_root_name.application.payments.commands",
    "compensation_command_name": "RefundPaymentCommand",
    "failure_event_module": "app_root_name.domain.payments.events",
    "failure_event_name": "PaymentFailedEvent",
    "step_name": "ProcessPayment",
    "success_event_module": "app_root_name.domain.payments.events",
    "success_event_name": "PaymentProcessedEvent",
}

_ORCHESTRATOR_EXAMPLE: dict[str, JsonValue] = {
    "completion_event_module": "app_root_name.domain.ordering.events.order_events",
    "completion_event_name": "OrderProcessingCompletedEvent",
    "failure_event_module": "app_root_name.domain.ordering.events.order_events",
    "failure_event_name": "OrderProcessingFailedEvent",
    "name": "OrderProcessingSagaOrchestrator",
    "saga_type": "OrderProcessingSaga",
    "state_dto_module": "app_root_name.domain.ordering.sagas.order_processing_saga_state",
    "state_dto_name": "OrderProcessingSagaState",
    "state_repository_module": (
        "app_root_name.infrastructure.persistence.ordering.repositories.order_processing_saga_state_repository"
    ),
    "state_repository_name": "OrderProcessingSagaStateRepository",
    "steps": [
        {
            "command_module": "app_root_name.application.payments.commands",
            "command_name": "ProcessPaymentCommand",
            "step_name": "ProcessPayment",
            "success_event_module": "app_root_name.domain.payments.events",
            "success_event_name": "PaymentProcessedEvent",
        },
        {
            "command_module": "app_root_name.application.shipping.commands",
            "command_name": "ShipOrderCommand",
            "compensation_command_module": "app_root_name.application.shipping.commands",
            "compensation_command_name": "CancelShipmentCommand",
            "step_name": "ShipOrder",
            "success_event_module": "app_root_name.domain.shipping.events",
            "success_event_name": "OrderShippedEvent",
        },
    ],
    "triggering_events": [
        {
            "correlation_id_provider_str": "lambda event: str(event.order_id)",
            "event_module": "app_root_name.domain.ordering.events.order_events",
            "event_name": "OrderCreatedEvent",
        }
    ],
}


def _pair(name_field: str, module: str | None, info: ValidationInfo) -> str | None:
    """A ``*_module`` comes with its ``*_name``: both or neither."""
    if name_field not in info.data:
        # The name itself failed validation; that error is reported already.
        return module
    name = info.data.get(name_field)
    if name is not None and module is None:
        raise ValueError(f"required when {name_field} is set (the module that defines {name!r})")
    if name is None and module is not None:
        raise ValueError(f"set without {name_field}: name the class to import from {module!r}")
    return module


# ---------------------------------------------------------------- the x-sagakit extension
#
# The seed schema does not forbid other fields (it sets no additionalProperties),
# so a definition may carry sagakit's own settings under the key "x-sagakit", at
# the top level and in each step, and still validate against the seed schema.

EXTENSION = "x-sagakit"
"""The key of sagakit's extension block, in a step and at the top level of a definition."""

_MAX_ATTEMPTS = 1_000_000
_MAX_SECONDS = 10 * 365 * 24 * 3600.0  # ten years: anything longer is a mistake


def _seconds(value: object, *, zero: bool = False, limit: float = _MAX_SECONDS) -> float:
    """A number of seconds: a finite number > 0 (>= 0 with *zero*) and at most *limit*."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"must be a number of seconds, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"must be a finite number of seconds, got {value!r}")
    if value < 0 or (value == 0 and not zero):
        raise ValueError(f"must be a number of seconds {'>= 0' if zero else '> 0'}, got {value!r}")
    if value > limit:
        raise ValueError(f"must be at most {limit:g} seconds, got {value!r}")
    return float(value)


class RetryOptions(BaseModel):
    """How often and how fast a step (or its compensation) is tried: sagakit's ``RetryPolicy``.

    A field left out keeps ``RetryPolicy``'s default for the step (3 attempts,
    0.1 s doubling up to 30 s) or for the compensation (10 attempts, 0.1 s
    doubling up to 60 s).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_attempts: int | None = Field(default=None, description="Attempts in all, the first one included (1: no retry).")
    initial_delay: float | None = Field(default=None, description="Seconds before the second attempt.")
    multiplier: float | None = Field(default=None, description="Each further delay is the previous one times this.")
    max_delay: float | None = Field(default=None, description="Upper bound of one delay, in seconds.")
    jitter: float | None = Field(default=None, description="Fraction of each delay added or removed at random (0-1).")

    @field_validator("max_attempts", mode="before")
    @classmethod
    def _attempts(cls, value: object) -> object:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be a whole number of attempts (the first one included), got {value!r}")
        if not 1 <= value <= _MAX_ATTEMPTS:
            raise ValueError(
                f"must be between 1 and {_MAX_ATTEMPTS:,} (attempts in all, the first one included; "
                f"1 means no retry), got {value!r}"
            )
        return value

    @field_validator("initial_delay", "max_delay", mode="before")
    @classmethod
    def _delay(cls, value: object) -> object:
        return _seconds(value, zero=True)

    @field_validator("multiplier", mode="before")
    @classmethod
    def _multiplier(cls, value: object) -> object:
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            raise ValueError(f"must be a number >= 1 (each delay is the previous one times this), got {value!r}")
        if not 1 <= value <= 1000:
            raise ValueError(f"must be between 1 and 1000 (each delay is the previous one times this), got {value!r}")
        return float(value)

    @field_validator("jitter", mode="before")
    @classmethod
    def _jitter(cls, value: object) -> object:
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
            raise ValueError(
                f"must be a number between 0 and 1 (the fraction of each delay added or removed at random), "
                f"got {value!r}"
            )
        return float(value)


class StepOptions(BaseModel):
    """A step's ``x-sagakit`` block: its retries and how long an attempt may wait for its reply."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    retry: RetryOptions | None = Field(default=None, description="Retries of the step's command.")
    timeout: float | None = Field(
        default=None, description="Seconds one attempt of the step may take (for these message steps: the reply wait)."
    )
    reply_timeout: float | None = Field(
        default=None, description="Seconds one attempt waits for the success or failure event, then fails (retried)."
    )
    compensation_retry: RetryOptions | None = Field(default=None, description="Retries of the compensation command.")
    compensation_timeout: float | None = Field(default=None, description="Seconds one compensation attempt may take.")
    compensation_reply_timeout: float | None = Field(
        default=None, description="Seconds one compensation attempt waits for its reply."
    )

    @field_validator("timeout", "reply_timeout", "compensation_timeout", "compensation_reply_timeout", mode="before")
    @classmethod
    def _timeout(cls, value: object) -> object:
        return None if value is None else _seconds(value)

    @field_validator("reply_timeout", "compensation_reply_timeout")
    @classmethod
    def _one_timeout(cls, value: float | None, info: ValidationInfo) -> float | None:
        other = "timeout" if info.field_name == "reply_timeout" else "compensation_timeout"
        if value is not None and info.data.get(other) is not None:
            raise ValueError(
                f"set together with {other}: a message step's attempt ends when its reply comes, so both "
                f"bound the same wait: give one of them, got {other} {info.data[other]!r} and "
                f"{info.field_name} {value!r}"
            )
        return value


class KnownEvent(BaseModel):
    """An event the saga knows, though no step declares it (consumed, and dead-lettered with the reason)."""

    model_config = _CONFIG

    event_name: str
    event_module: str


class SagaOptions(BaseModel):
    """The top-level ``x-sagakit`` block: settings of the whole saga."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    deadline: float | None = Field(
        default=None, description="Seconds the saga may run in all before it is rolled back."
    )
    message_names: Literal["python", "definition"] | None = Field(
        default=None,
        description=(
            "The wire names of the definition's commands and events: 'python' (module.ClassName, the default) "
            "or 'definition' (the class name the definition gives, behind message_namespace if set)."
        ),
    )
    message_namespace: str | None = Field(
        default=None, description="A prefix for the wire names: 'shop' names ProcessPayment 'shop.ProcessPayment'."
    )
    known_events: list[KnownEvent] = Field(
        default_factory=list,
        description="Events no step declares that the saga still consumes, to dead-letter them with the reason.",
    )
    scan_event_modules: bool = Field(
        default=True,
        strict=True,
        description=(
            "Also count as known every event class defined in the modules of the steps' events (the participants' "
            "events), so that an undeclared one is dead-lettered rather than left unconsumed."
        ),
    )

    @field_validator("deadline", mode="before")
    @classmethod
    def _deadline(cls, value: object) -> object:
        return None if value is None else _seconds(value)

    @field_validator("message_names", mode="before")
    @classmethod
    def _names(cls, value: object) -> object:
        if value is not None and value not in ("python", "definition"):
            raise ValueError(
                "must be 'python' (wire names are module.ClassName) or 'definition' (the class names the "
                f"definition gives), got {value!r}"
            )
        return value

    @field_validator("message_namespace", mode="before")
    @classmethod
    def _namespace(cls, value: object) -> object:
        if value is None:
            return None
        if not isinstance(value, str) or not _NAMESPACE.match(value):
            raise ValueError(
                f"must be dotted words of letters, digits, '_' or '-' (e.g. 'shop' or 'acme.orders'), got {value!r}"
            )
        return value

    @field_validator("message_namespace")
    @classmethod
    def _namespace_needs_names(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("message_names") == "python":
            raise ValueError(
                f"set with message_names 'python': the namespace prefixes the definition's names; set "
                f"message_names to 'definition' or drop message_namespace, got {value!r}"
            )
        return value

    @property
    def names_from_definition(self) -> bool:
        """True when the wire names are the definition's class names (``message_names: definition``)."""
        return self.message_names == "definition" or (self.message_names is None and self.message_namespace is not None)

    def wire_name(self, class_name: str) -> str:
        """The wire name the definition gives a class named *class_name*."""
        return f"{self.message_namespace}.{class_name}" if self.message_namespace else class_name


class ImportDefinitionDTO(BaseModel):
    """Defines a custom import statement."""

    model_config = _CONFIG

    module: str
    names: list[str]


class SagaStepInputDTO(BaseModel):
    """Defines a single step within a Saga."""

    model_config = ConfigDict(
        extra="forbid", strict=True, frozen=True, serialize_by_alias=True, json_schema_extra={"example": _STEP_EXAMPLE}
    )

    step_name: str = Field(description="Descriptive name for this saga step (e.g., 'ProcessPaymentStep')")
    command_name: str = Field(
        description="Name of the Command to execute for this step (e.g., 'ProcessPaymentCommand')"
    )
    command_module: str = Field(
        description=("Module path for the command_name (e.g., 'app_root_name.application.payments.commands')")
    )
    success_event_name: str | list[str] = Field(
        description=(
            "Name(s) of the Event(s) indicating successful completion of this step "
            "(e.g., 'PaymentProcessedEvent' or ['EventA', 'EventB'])"
        )
    )
    success_event_module: str | list[str] = Field(
        description=(
            "Module path(s) for the success_event_name(s) "
            "(e.g., 'app_root_name.domain.payments.events' or ['module.a', 'module.b'])"
        )
    )
    failure_event_name: str | None = Field(
        default=None,
        description="Name of the Event indicating failure of this step (e.g., 'PaymentFailedEvent')",
    )
    failure_event_module: str | None = Field(
        default=None, description="Module path for the failure_event_name", validate_default=True
    )
    compensation_command_name: str | None = Field(
        default=None,
        description=("Name of the Command to execute for compensating this step (e.g., 'RefundPaymentCommand')"),
    )
    compensation_command_module: str | None = Field(
        default=None,
        description="Module path for the compensation_command_name",
        validate_default=True,
    )
    is_compensating_transaction: bool = Field(
        default=False, description="Indicates if this step itself is a compensating transaction."
    )
    compensation_success_event_name: str | None = Field(
        default=None, description="Event for successful compensation.", validate_default=True
    )
    compensation_failure_event_name: str | None = Field(
        default=None, description="Event for failed compensation.", validate_default=True
    )
    sagakit: StepOptions | None = Field(
        default=None,
        alias="x-sagakit",
        description="sagakit's settings of the step (retries, timeouts); the seed schema allows extra fields.",
    )

    @field_validator("success_event_name", mode="before")
    @classmethod
    def _names_shape(cls, value: object) -> object:
        return _string_or_strings(value, "event class name")

    @field_validator("success_event_module", mode="before")
    @classmethod
    def _modules_shape(cls, value: object) -> object:
        return _string_or_strings(value, "module path")

    @field_validator("success_event_module")
    @classmethod
    def _modules_align(cls, value: str | list[str], info: ValidationInfo) -> str | list[str]:
        names = info.data.get("success_event_name")
        if names is None or isinstance(value, str) or len(value) == 1:
            return value
        n_names = 1 if isinstance(names, str) else len(names)
        if len(value) != n_names:
            raise ValueError(
                f"{len(value)} module(s) for {n_names} success_event_name(s): give one module per "
                "event name, in the same order, or a single module string for all of them"
            )
        return value

    @field_validator("failure_event_module")
    @classmethod
    def _failure_pair(cls, value: str | None, info: ValidationInfo) -> str | None:
        return _pair("failure_event_name", value, info)

    @field_validator("compensation_command_module")
    @classmethod
    def _compensation_pair(cls, value: str | None, info: ValidationInfo) -> str | None:
        return _pair("compensation_command_name", value, info)

    @field_validator("compensation_success_event_name", "compensation_failure_event_name")
    @classmethod
    def _needs_compensation(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("compensation_command_name") is None:
            if "compensation_command_name" not in info.data:
                return value
            raise ValueError(
                "set without compensation_command_name: a compensation event answers the "
                "compensation command; add compensation_command_name/_module or drop this field"
            )
        if (
            info.field_name == "compensation_failure_event_name"
            and value is not None
            and info.data.get("compensation_success_event_name") is None
            and "compensation_success_event_name" in info.data
        ):
            raise ValueError(
                "set without compensation_success_event_name: the compensation could never "
                "complete; add compensation_success_event_name"
            )
        return value


class TriggerEventConfigInputDTO(BaseModel):
    """Defines how a saga is triggered by an event."""

    model_config = _CONFIG

    event_name: str
    event_module: str
    correlation_id_provider_str: str = Field(
        description="Lambda string to extract correlation ID, e.g., 'lambda event: str(event.order_id)'"
    )


class SagaOrchestratorInputDTO(BaseModel):
    """DTO for defining a Saga Orchestrator class."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        frozen=True,
        serialize_by_alias=True,
        json_schema_extra={"example": _ORCHESTRATOR_EXAMPLE},
    )

    name: str = Field(description="Name of the Saga Orchestrator class (e.g., 'OrderProcessingOrchestrator')")
    saga_type: str = Field(description="Unique type identifier for this saga (e.g., 'OrderProcessingSaga')")
    state_dto_name: str = Field(description="Name of the in-memory Saga State DTO (e.g., 'OrderProcessingSagaState')")
    state_dto_module: str = Field(description="Module path for the state_dto_name")
    state_repository_name: str = Field(
        description="Name of the Saga State Repository (e.g., 'OrderProcessingSagaStateRepository')"
    )
    state_repository_module: str = Field(description="Module path for the state_repository_name")
    triggering_events: list[TriggerEventConfigInputDTO] = Field(
        default_factory=list, description="List of events that can initiate this Saga."
    )
    steps: list[SagaStepInputDTO] = Field(description="List of steps defining the Saga's workflow.")
    completion_event_name: str | None = Field(
        default=None,
        description="Name of the Event indicating successful completion of the entire Saga.",
    )
    completion_event_module: str | None = Field(
        default=None,
        description="Module path for the completion_event_name.",
        validate_default=True,
    )
    failure_event_name: str | None = Field(
        default=None,
        description="Name of the Event indicating failure of the entire Saga (after compensations).",
    )
    failure_event_module: str | None = Field(
        default=None, description="Module path for the failure_event_name.", validate_default=True
    )
    imports: list[ImportDefinitionDTO] = Field(
        default_factory=list, description="Custom imports needed for the orchestrator."
    )
    description: str | None = Field(default=None, description="Optional description for the saga orchestrator.")
    sagakit: SagaOptions | None = Field(
        default=None,
        alias="x-sagakit",
        description="sagakit's settings of the saga (deadline, wire names, known events); the seed schema allows them.",
    )

    @field_validator("completion_event_module")
    @classmethod
    def _completion_pair(cls, value: str | None, info: ValidationInfo) -> str | None:
        return _pair("completion_event_name", value, info)

    @field_validator("failure_event_module")
    @classmethod
    def _failure_pair(cls, value: str | None, info: ValidationInfo) -> str | None:
        return _pair("failure_event_name", value, info)


def _string_or_strings(value: object, what: str) -> object:
    # One clear error instead of pydantic's two (one per branch of the union).
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        if not value:
            raise ValueError(f"an empty list: give at least one {what}")
        return value
    raise ValueError(f"must be a string or a list of strings ({what}s), got {value!r}")


def success_events(step: SagaStepInputDTO) -> list[tuple[str, str]]:
    """The step's success events as (module, name) pairs, modules aligned by position.

    A single module string applies to every name; a list gives one module per name.
    """
    names = [step.success_event_name] if isinstance(step.success_event_name, str) else step.success_event_name
    modules = step.success_event_module
    if isinstance(modules, str):
        return [(modules, n) for n in names]
    if len(modules) == 1:
        return [(modules[0], n) for n in names]
    return list(zip(modules, names, strict=True))
