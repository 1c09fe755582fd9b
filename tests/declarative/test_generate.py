"""generate/render: naming and location rules, determinism, output that compiles, lints and type-checks."""

from __future__ import annotations

import ast
import difflib
import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sagakit import SagaDefinition
from sagakit._messages import message_type_name
from sagakit.declarative import (
    GeneratedFileEdited,
    InvalidDefinition,
    generate,
    load_definition,
    module_path,
    read_definition,
    render,
    snake_case,
)
from sagakit.declarative._pysource import pystr

from .conftest import FIXTURES, SEED

RUFF_RULES = "E,F,W,I,B,UP,SIM,RUF,ASYNC,PL,C4,PIE,RET"
GENERATED = "app/domain/ordering/sagas/order_processing_saga_orchestrator.py"


# The fixture packages play the project's own: ruff finds those of a real project in its folder.
FIRST_PARTY = 'lint.isort.known-first-party = ["app_root_name", "decl_fixtures"]'


def ruff_check(path: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """sagakit's own lint rules, at ruff's default line length (88), no config file."""
    return subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--isolated", "--target-version", "py311",
         "--select", RUFF_RULES, "--config", FIRST_PARTY, "--no-cache", str(path)],
        cwd=cwd, capture_output=True, text=True, check=False,
    )  # fmt: skip


def ruff_format_check(path: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--isolated", "--check", "--diff", "--no-cache", str(path)],
        cwd=cwd, capture_output=True, text=True, check=False,
    )  # fmt: skip


@pytest.fixture(scope="session")
def mypy_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mypy-cache")


def mypy_strict(path: Path, cwd: Path, cache: Path, extra_path: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MYPYPATH": str(extra_path) if extra_path else ""}
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(cache), "--no-error-summary",
         "--python-version", "3.11", str(path)],
        cwd=cwd, capture_output=True, text=True, check=False, env=env,
    )  # fmt: skip


def import_file(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def describe(d: SagaDefinition) -> Any:
    """Everything of a definition except the identity of hook functions."""

    def action(a: Any) -> Any:
        if a is None:
            return None
        return (type(a).__name__, a.command, a.success, a.failure, a.reply_timeout, a.destination)

    def wire(a: Any) -> Any:
        if a is None:
            return None
        return message_type_name(a.command), sorted(a.reply_types)

    return (
        d.name,
        d.version,
        d.description,
        d.state_model,
        d.completion_event,
        d.failure_event,
        d.deadline,
        [t.event for t in d.triggers],
        [
            (s.name, s.after, action(s.action), action(s.compensation), s.retry, s.compensation_retry)
            + (s.timeout, s.compensation_timeout, s.attempt_timeouts, s.pivot)
            for s in d.steps
        ],
        dict(d.extras),
        d.known_events,
        # the wire names, as the engine and the participants see them
        [message_type_name(t.event) for t in d.triggers],
        [(wire(s.action), wire(s.compensation)) for s in d.steps],
        [message_type_name(k) for k in d.known_events],
        [message_type_name(e) for e in (d.completion_event, d.failure_event) if e is not None],
    )


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A project directory holding the app_root_name package, as a real project would."""
    shutil.copytree(FIXTURES / "app_root_name", tmp_path / "app_root_name")
    shutil.copy(SEED, tmp_path / SEED.name)
    yield tmp_path
    for name in [m for m in sys.modules if m == "app" or m.startswith("app.")]:
        del sys.modules[name]


def test_snake_case_and_location() -> None:
    assert snake_case("OrderProcessingSagaOrchestrator") == "order_processing_saga_orchestrator"
    assert snake_case("HTTPOrderOrchestrator") == "http_order_orchestrator"
    assert snake_case("Order2PayOrchestrator") == "order2_pay_orchestrator"
    assert snake_case("Ship-Order.v2") == "ship_order_v2"
    assert module_path("OrderProcessingSagaOrchestrator", bounded_ctx="ordering", root="/r") == Path(
        "/r/app/domain/ordering/sagas/order_processing_saga_orchestrator.py"
    )
    assert module_path("XOrchestrator", bounded_ctx="b", app_root="src_app") == Path(
        "src_app/domain/b/sagas/x_orchestrator.py"
    )


def test_the_seed_example_generates_a_module_that_compiles_lints_and_type_checks(
    project: Path, mypy_cache: Path
) -> None:
    target = generate(project / SEED.name, bounded_ctx="ordering", root=project)
    assert target == project / GENERATED
    for package in ("app", "app/domain", "app/domain/ordering", "app/domain/ordering/sagas"):
        assert (project / package / "__init__.py").is_file()
    source = target.read_text()
    compile(source, str(target), "exec")
    assert "class OrderProcessingSagaOrchestrator:" in source
    lint = ruff_check(target, project)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    fmt = ruff_format_check(target, project)
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr
    typed = mypy_strict(target, project, mypy_cache)
    assert typed.returncode == 0, typed.stdout + typed.stderr


def test_the_generated_module_builds_the_same_definition(project: Path, app: Any) -> None:
    target = generate(project / SEED.name, bounded_ctx="ordering", root=project)
    module = import_file(target, "generated_seed_orchestrator")
    generated = module.definition
    loaded = load_definition(SEED)
    assert describe(generated) == describe(loaded)
    orchestrator = module.OrderProcessingSagaOrchestrator
    assert module.__all__ == ["OrderProcessingSagaOrchestrator", "definition"]
    assert orchestrator.saga_type == "OrderProcessingSaga"
    assert orchestrator.state_dto is app.OrderProcessingSagaState
    assert orchestrator.state_repository is app.OrderProcessingSagaStateRepository
    assert describe(orchestrator.build_definition(version=2))[1] == 2

    # The hooks do what the defaults do.
    event = app.OrderCreatedEvent(order_id="o-1", amount=5, address="street")
    assert generated.triggers[0].correlation(event) == loaded.triggers[0].correlation(event) == "o-1"
    state = {"order_id": "o-1", "amount": 5, "address": "street"}
    for g, ld in zip(generated.steps, loaded.steps, strict=True):
        assert g.action.build_command(state) == ld.action.build_command(state)
    paid = app.PaymentProcessedEvent(order_id="o-1", payment_id="p-1")
    assert generated.steps[0].action.apply_reply(state, paid) == loaded.steps[0].action.apply_reply(state, paid)
    assert generated.steps[1].compensation.build_command(state) == app.CancelShipmentCommand(order_id="o-1")


def test_hooks_are_used_when_edited(project: Path, app: Any) -> None:
    target = generate(project / SEED.name, bounded_ctx="ordering", root=project)
    module = import_file(target, "generated_seed_orchestrator_edit")

    class Custom(module.OrderProcessingSagaOrchestrator):  # type: ignore[name-defined,misc]
        @staticmethod
        def process_payment_command(state: Any) -> Any:
            return app.ProcessPaymentCommand(order_id=state["order_id"], amount=state["amount"] * 2)

    d = Custom.build_definition()
    cmd = d.steps[0].action.build_command({"order_id": "o", "amount": 2, "address": "a"})
    assert cmd == app.ProcessPaymentCommand(order_id="o", amount=4)


def test_a_full_definition_generates_clean_code(project: Path, seed: dict[str, Any], mypy_cache: Path) -> None:
    pay, ship = "app_root_name.domain.payments.events", "app_root_name.domain.shipping.events"
    seed["description"] = (
        'Processes an order: payment first, then shipping. It says "hello" and uses a backslash \\ '
        "and a very long sentence that will not fit on one line of the generated module at all, no."
    )
    seed["imports"] = [{"module": ship, "names": ["ShipmentCancelledEvent", "ShipmentFailedEvent"]}]
    seed["triggering_events"].append(
        {
            "event_name": "PaymentProcessedEvent",
            "event_module": pay,
            "correlation_id_provider_str": "lambda e: e.order_id + '-' + e.payment_id",
        }
    )
    seed["triggering_events"][0]["correlation_id_provider_str"] = 'lambda event: f"order:{event.order_id}"'
    seed["steps"][0].update(
        failure_event_name="PaymentFailedEvent",
        failure_event_module=pay,
        compensation_command_name="RefundPaymentCommand",
        compensation_command_module="app_root_name.application.payments.commands",
        compensation_success_event_name="PaymentRefundedEvent",
        compensation_failure_event_name=f"{ship}.ShipmentCancellationFailedEvent",
        is_compensating_transaction=True,
    )
    seed["steps"][1].update(
        success_event_name=["OrderShippedEvent", "PaymentRefundedEvent"],
        success_event_module=[ship, pay],
        failure_event_name="ShipmentFailedEvent",
        failure_event_module=ship,
        compensation_success_event_name="ShipmentCancelledEvent",
    )
    target = generate(seed, bounded_ctx="ordering", root=project)
    source = target.read_text()
    assert "custom_imports = (ShipmentCancelledEvent, ShipmentFailedEvent)" in source
    assert "to_correlation_id" in source  # the second trigger's body is not certainly a str
    for check in (
        ruff_check(target, project),
        ruff_format_check(target, project),
        mypy_strict(target, project, mypy_cache),
    ):
        assert check.returncode == 0, check.stdout + check.stderr
    module = import_file(target, "generated_full_orchestrator")
    assert describe(module.definition) == describe(load_definition(seed))
    assert module.definition.description == seed["description"]
    assert (
        module.definition.triggers[1].correlation(sys.modules[pay].PaymentProcessedEvent(order_id="o", payment_id="p"))
        == "o-p"
    )
    assert (
        module.definition.triggers[0].correlation(
            sys.modules["app_root_name.domain.ordering.events.order_events"].OrderCreatedEvent(
                order_id="o", amount=1, address="a"
            )
        )
        == "order:o"
    )


def test_the_extension_generates_the_same_definition(project: Path, seed: dict[str, Any], mypy_cache: Path) -> None:
    """Retries, timeouts, deadline, known events and wire names of ``x-sagakit`` are generated as code."""
    pay = "app_root_name.domain.payments.events"
    seed["x-sagakit"] = {
        "deadline": 3600,
        "message_namespace": "shop",
        "known_events": [{"event_name": "ShipmentFailedEvent", "event_module": "app_root_name.domain.shipping.events"}],
    }
    seed["steps"][0]["x-sagakit"] = {"retry": {"max_attempts": 5, "jitter": 0}, "reply_timeout": 30}
    seed["steps"][0].update(
        compensation_command_name="RefundPaymentCommand",
        compensation_command_module="app_root_name.application.payments.commands",
        compensation_success_event_name="PaymentRefundedEvent",
    )
    seed["steps"][1]["x-sagakit"] = {
        "timeout": 60,
        "compensation_retry": {"max_attempts": 2},
        "compensation_reply_timeout": 5,
    }
    target = generate(seed, bounded_ctx="ordering", root=project)
    source = target.read_text()
    assert "*events_defined_with(" in source and "name_messages(" in source and "RetryPolicy(" in source
    for check in (
        ruff_check(target, project),
        ruff_format_check(target, project),
        mypy_strict(target, project, mypy_cache),
    ):
        assert check.returncode == 0, check.stdout + check.stderr
    module = import_file(target, "generated_extension_orchestrator")
    generated = describe(module.definition)
    loaded = describe(load_definition(seed))
    assert generated == loaded
    assert module.definition.deadline == 3600
    ship = sys.modules["app_root_name.domain.shipping.events"]
    assert module.definition.known_events == (
        ship.ShipmentFailedEvent,  # listed
        sys.modules[pay].PaymentFailedEvent,  # found beside the steps' events (no step declares them)
        ship.ShipmentCancelledEvent,
        ship.ShipmentCancellationFailedEvent,
    )
    assert message_type_name(sys.modules[pay].PaymentFailedEvent) == "shop.PaymentFailedEvent"


def test_without_the_extension_the_module_is_as_before(project: Path, seed: dict[str, Any]) -> None:
    source = generate(seed, bounded_ctx="ordering", root=project).read_text()
    assert "name_messages" not in source and "RetryPolicy" not in source and "deadline" not in source
    # the events beside the steps' events are known, as load_definition finds them
    assert "*events_defined_with(PaymentProcessedEvent, OrderShippedEvent)" in source


def test_name_clashes_get_aliases(tmp_path: Path, mypy_cache: Path) -> None:
    pool, pool2 = "decl_fixtures.pool", "decl_fixtures.pool2"
    data = {
        "name": "ClashOrchestrator",
        "saga_type": "clash",
        "state_dto_name": "State",
        "state_dto_module": pool,
        "state_repository_name": "Repository",
        "state_repository_module": pool,
        "triggering_events": [
            {
                "event_name": "EventA",
                "event_module": pool2,
                "correlation_id_provider_str": "lambda str_: str_.order_id",
            }
        ],
        "steps": [
            {"step_name": "one", "command_name": "CommandA", "command_module": pool,
             "success_event_name": ["EventA", "EventA"], "success_event_module": [pool, pool2]},
            {"step_name": "class", "command_name": "send", "command_module": pool2,
             "success_event_name": "EventB", "success_event_module": pool,
             "compensation_command_name": "CommandA", "compensation_command_module": pool2,
             "compensation_success_event_name": "EventC"},
            {"step_name": "One", "command_name": "CommandC", "command_module": pool,
             "success_event_name": "EventD", "success_event_module": pool},
        ],
        "imports": [{"module": pool, "names": ["CONSTANT"]}],
    }  # fmt: skip
    target = generate(data, bounded_ctx="misc", root=tmp_path)
    source = target.read_text()
    assert "from decl_fixtures.pool import EventA as EventA2" in source
    assert "from decl_fixtures.pool2 import send as send2" in source
    assert "def class__command(" in source and "def one_command_2(" in source
    for check in (ruff_check(target, tmp_path), ruff_format_check(target, tmp_path)):
        assert check.returncode == 0, check.stdout + check.stderr
    typed = mypy_strict(target, tmp_path, mypy_cache, extra_path=FIXTURES)
    assert typed.returncode == 0, typed.stdout + typed.stderr
    module = import_file(target, "generated_clash_orchestrator")
    assert describe(module.definition) == describe(load_definition(data))


@pytest.mark.parametrize(
    "name",
    [
        "OrderProcessing",
        "orderProcessingOrchestrator",
        "Order_ProcessingOrchestrator",
        "Orchestrator",
        "X Orchestrator",
    ],
)
def test_the_naming_rule_is_enforced(seed: dict[str, Any], tmp_path: Path, name: str) -> None:
    seed["name"] = name
    with pytest.raises(InvalidDefinition) as e:
        generate(seed, bounded_ctx="ordering", root=tmp_path)
    (problem,) = e.value.errors
    assert problem.startswith(f"name: {name!r} cannot name a generated orchestrator; 000's rule is ")
    assert "Class: PascalCase, typically ends with 'Orchestrator'." in problem
    assert "e.g. 'OrderProcessingSagaOrchestrator'" in problem
    assert not (tmp_path / "app").exists()
    # Loading is not bound by the rule: it is about generated classes.
    assert load_definition(seed).extras["orchestrator"] == name


@pytest.mark.parametrize(
    ("ctx", "app_root"), [("Ordering", "app"), ("order-ing", "app"), ("class", "app"), ("ok", "App")]
)
def test_bounded_context_and_app_root_must_be_package_names(
    seed: dict[str, Any], tmp_path: Path, ctx: str, app_root: str
) -> None:
    with pytest.raises(ValueError, match="is not a package name"):
        generate(seed, bounded_ctx=ctx, root=tmp_path, app_root=app_root)


def test_an_invalid_definition_writes_nothing(seed: dict[str, Any], tmp_path: Path) -> None:
    seed["steps"][0]["command_name"] = "Nope"
    with pytest.raises(InvalidDefinition, match="steps\\[0\\].command_name"):
        generate(seed, bounded_ctx="ordering", root=tmp_path)
    assert not (tmp_path / "app").exists()


def test_regeneration_is_deterministic_and_protects_edits(project: Path) -> None:
    target = generate(project / SEED.name, bounded_ctx="ordering", root=project)
    first = target.read_text()
    assert generate(project / SEED.name, bounded_ctx="ordering", root=project) == target
    assert target.read_text() == first
    assert render(read_definition(SEED), origin=SEED.name) == first

    # An untouched file generated from an older definition is replaced.
    seed = read_definition(SEED).model_dump()
    seed["description"] = "changed"
    generate(seed, bounded_ctx="ordering", root=project)
    assert 'description: str | None = "changed"' in target.read_text()
    generate(project / SEED.name, bounded_ctx="ordering", root=project)
    assert target.read_text() == first

    # An edited one is not, unless forced.
    edited = first.replace("return default_command(ProcessPaymentCommand, state)", "raise NotImplementedError")
    assert edited != first
    target.write_text(edited)
    with pytest.raises(GeneratedFileEdited, match="was edited since sagakit generated it"):
        generate(project / SEED.name, bounded_ctx="ordering", root=project)
    assert target.read_text() == edited
    generate(project / SEED.name, bounded_ctx="ordering", root=project, force=True)
    assert target.read_text() == first

    # A hand-written file at that path (no checksum) is not overwritten either.
    target.write_text("# mine\n")
    with pytest.raises(GeneratedFileEdited):
        generate(project / SEED.name, bounded_ctx="ordering", root=project)
    assert isinstance(GeneratedFileEdited("x"), FileExistsError)


def test_existing_init_files_are_kept(project: Path) -> None:
    (project / "app").mkdir()
    (project / "app" / "__init__.py").write_text("VALUE = 1\n")
    generate(project / SEED.name, bounded_ctx="ordering", root=project, app_root="app")
    assert (project / "app" / "__init__.py").read_text() == "VALUE = 1\n"


def test_app_root_option(project: Path) -> None:
    target = generate(project / SEED.name, bounded_ctx="ordering", root=project, app_root="app_root_name")
    assert target == project / "app_root_name/domain/ordering/sagas/order_processing_saga_orchestrator.py"


@given(st.text(max_size=40))
def test_string_literals_round_trip(text: str) -> None:
    literal = pystr(text)
    assert ast.literal_eval(literal) == text
    assert "\n" not in literal


def test_the_output_does_not_depend_on_the_output_folder_the_cwd_or_a_lint_config(
    project: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The definition's packages inside the output folder (project), importable from elsewhere
    # (bare: only on sys.path), and under a parent whose pyproject.toml configures isort.
    bare = tmp_path_factory.mktemp("bare")
    configured = tmp_path_factory.mktemp("configured")
    (configured / "pyproject.toml").write_text(
        '[tool.ruff.lint.isort]\nknown-first-party = ["sagakit"]\nknown-third-party = ["app_root_name"]\n'
        '[tool.isort]\nprofile = "google"\nforce_single_line = true\nknown_first_party = ["sagakit"]\n'
    )
    nested = configured / "svc"
    nested.mkdir()
    outputs = []
    for root, cwd in ((project, project), (bare, project), (nested, bare), (Path(), nested), (project, nested)):
        monkeypatch.chdir(cwd)
        target = generate(SEED, bounded_ctx="ordering", root=root)
        outputs.append(target.read_text())
        target.unlink()
    for root, out in zip(("bare", "nested", "relative", "project from nested"), outputs[1:], strict=True):
        assert out == outputs[0], f"{root}: " + "".join(difflib.unified_diff(
            outputs[0].splitlines(True), out.splitlines(True)))  # fmt: skip
