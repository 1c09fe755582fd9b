"""generate --scaffold / scaffold(): the state DTO and repository modules a definition names.

Every scaffolded module is checked like the generated orchestrator: it
imports, passes ruff (sagakit's rules, ruff's default line length) and
``ruff format --check``, and type-checks with ``mypy --strict``.
"""

from __future__ import annotations

import copy
import datetime
import os
import subprocess
import sys
import textwrap
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sagakit import SagaEngine
from sagakit.declarative import (
    GeneratedFileEdited,
    InvalidDefinition,
    Scaffolded,
    generate,
    load_definition,
    scaffold,
)
from sagakit.declarative._generate import generate_files

from .conftest import FIXTURES, SEED_DATA
from .test_generate import import_file, ruff_check, ruff_format_check
from .test_seed_end_to_end import run_scenarios, with_failures

ORCHESTRATOR = "app/domain/ordering/sagas/order_processing_saga_orchestrator.py"


@pytest.fixture(scope="session")
def scaffold_mypy_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mypy-cache-scaffold")


@pytest.fixture(autouse=True)
def forget_tmp_modules(tmp_path: Path) -> Iterator[None]:
    """Modules imported from this test's directory are forgotten after it (package names repeat)."""
    yield
    base = str(tmp_path.resolve())
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None) or ""
        paths = list(getattr(module, "__path__", None) or [])
        if file.startswith(base) or any(str(p).startswith(base) for p in paths):
            del sys.modules[name]


def definition(package: str, **changes: Any) -> dict[str, Any]:
    """The seed example with its state DTO and repository moved to modules of *package*."""
    data = copy.deepcopy(SEED_DATA)
    data["state_dto_module"] = f"{package}.ordering.state"
    data["state_repository_module"] = f"{package}.infrastructure.repositories"
    data.update(changes)
    return data


def check_clean(project: Path, files: list[Path], cache: Path) -> None:
    """ruff check, ruff format --check and mypy --strict on generated files."""
    for f in files:
        for result in (ruff_check(f, project), ruff_format_check(f, project)):
            assert result.returncode == 0, result.stdout + result.stderr
    typed = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(cache), "--no-error-summary",
         "--python-version", "3.11", *(str(f) for f in files)],
        cwd=project, capture_output=True, text=True, check=False,
        env={**os.environ, "MYPYPATH": str(FIXTURES)},
    )  # fmt: skip
    assert typed.returncode == 0, typed.stdout + typed.stderr


def test_scaffold_into_an_empty_directory_then_import_and_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scaffold_mypy_cache: Path
) -> None:
    data = definition("shop")
    target, done = generate_files(data, bounded_ctx="ordering", root=tmp_path, scaffold=True)
    state_file = tmp_path / "shop/ordering/state.py"
    repo_file = tmp_path / "shop/infrastructure/repositories.py"
    assert target == tmp_path / ORCHESTRATOR
    assert done == [
        Scaffolded("shop.ordering.state", ("OrderProcessingSagaState",), state_file, "created"),
        Scaffolded("shop.infrastructure.repositories", ("OrderProcessingSagaStateRepository",), repo_file, "created"),
    ]
    for package in ("shop", "shop/ordering", "shop/infrastructure"):
        assert (tmp_path / package / "__init__.py").read_text() == ""
    state_source = state_file.read_text()
    assert "class OrderProcessingSagaState(BaseModel):" in state_source
    assert "TODO" not in state_source and "TODO" not in repo_file.read_text()
    assert "    order_id: str\n    amount: float\n    address: str\n" in state_source
    assert "    payment_id: str | None = None\n    tracking_number: str | None = None\n" in state_source
    assert "from shop.ordering.state import OrderProcessingSagaState" in repo_file.read_text()
    check_clean(tmp_path, [state_file, repo_file, target], scaffold_mypy_cache)

    # The orchestrator imports the scaffolded modules and builds the saga with them.
    monkeypatch.syspath_prepend(str(tmp_path))
    module = import_file(target, "generated_scaffolded_orchestrator")
    state_model = module.OrderProcessingSagaOrchestrator.state_dto
    assert state_model.__module__ == "shop.ordering.state"
    assert module.OrderProcessingSagaOrchestrator.state_repository.__module__ == "shop.infrastructure.repositories"
    loaded = load_definition(data, search_path=[tmp_path])
    assert loaded.state_model is state_model is module.definition.state_model
    assert {n: f.is_required() for n, f in state_model.model_fields.items()} == {
        "order_id": True,
        "amount": True,
        "address": True,
        "payment_id": False,
        "tracking_number": False,
    }
    # Keys it does not declare are kept (the default mapping may need them).
    assert state_model.model_validate({"order_id": "o", "amount": 1, "address": "a", "x": 1}).model_dump() == {
        "order_id": "o",
        "amount": 1.0,
        "address": "a",
        "payment_id": None,
        "tracking_number": None,
        "x": 1,
    }


def test_regeneration_is_deterministic_and_keeps_edits(tmp_path: Path) -> None:
    data = definition("shop_again")
    first = generate_files(data, bounded_ctx="ordering", root=tmp_path, scaffold=True)[1]
    state_file, repo_file = (s.path for s in first)
    assert state_file is not None and repo_file is not None
    sources = state_file.read_text(), repo_file.read_text()

    again = generate_files(data, bounded_ctx="ordering", root=tmp_path, scaffold=True)[1]
    assert [s.action for s in again] == ["unchanged", "unchanged"]
    assert (state_file.read_text(), repo_file.read_text()) == sources

    # An unedited file from an older definition is brought up to date.
    renamed = {**data, "saga_type": "OrderSaga"}
    assert [s.action for s in generate_files(renamed, bounded_ctx="ordering", root=tmp_path, scaffold=True)[1]] == [
        "updated",
        "updated",
    ]
    assert 'saga_type = "OrderSaga"' in repo_file.read_text()
    generate(data, bounded_ctx="ordering", root=tmp_path, scaffold=True)
    assert (state_file.read_text(), repo_file.read_text()) == sources

    # An edited one is kept, unless forced.
    edited = sources[0].replace("    tracking_number: str | None = None\n", "    tracking_number: str = ''\n")
    assert edited != sources[0]
    state_file.write_text(edited)
    kept = generate_files(renamed, bounded_ctx="ordering", root=tmp_path, scaffold=True)[1]
    assert [s.action for s in kept] == ["kept", "updated"]
    assert state_file.read_text() == edited
    forced = generate_files(data, bounded_ctx="ordering", root=tmp_path, scaffold=True, force=True)[1]
    assert [s.action for s in forced] == ["updated", "updated"]
    assert (state_file.read_text(), repo_file.read_text()) == sources

    # A module sagakit did not write is never touched, not even with force.
    repo_file.write_text(
        "class OrderProcessingSagaStateRepository:\n    pass\n\n\n# sagakit-checksum: 0\n"
    )  # no scaffold header: the user's
    mine = repo_file.read_text()
    for force in (False, True):
        result = generate_files(data, bounded_ctx="ordering", root=tmp_path, scaffold=True, force=force)[1]
        assert result[1] == Scaffolded(
            "shop_again.infrastructure.repositories", ("OrderProcessingSagaStateRepository",), repo_file, "exists"
        )
        assert repo_file.read_text() == mine


def test_existing_modules_are_left_alone(tmp_path: Path) -> None:
    """The seed's own state modules exist (in the fixtures): nothing is scaffolded."""
    target, done = generate_files(SEED_DATA, bounded_ctx="ordering", root=tmp_path, scaffold=True)
    assert [s.action for s in done] == ["exists", "exists"]
    assert [s.path for s in done] == [
        FIXTURES / "app_root_name/domain/ordering/sagas/order_processing_saga_state.py",
        FIXTURES
        / "app_root_name/infrastructure/persistence/ordering/repositories/order_processing_saga_state_repository.py",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app"]
    assert target.is_file()


RICH_EVENTS = '''\
"""Events with the kinds of field types a state DTO has to carry over."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import uuid
from typing import Any, Generic, Literal, Optional, TypeVar

from pydantic import BaseModel, Field

T = TypeVar("T")


class Color(enum.Enum):
    RED = "red"


class Address(BaseModel):
    street: str


class Page(BaseModel, Generic[T]):
    items: list[T]


@dataclasses.dataclass
class Point:
    x: int
    y: int


class Placed(BaseModel):
    order_id: str
    placed_at: datetime.datetime
    total: decimal.Decimal
    ref: uuid.UUID
    color: Color
    address: Address
    kind: Literal["a", "b"]
    tags: list[str] = Field(default_factory=list)
    counts: dict[str, list[int]] = Field(default_factory=dict)
    note: Optional[str] = None  # noqa: UP045


class Imported(BaseModel):
    order_id: str
    source: str


@dataclasses.dataclass
class Reserved:
    order_id: str
    json: str
    model_version: int
    where: Point
    span: tuple[int, ...]
    blob: Any
    page: Page[int]
    total: int
    date: datetime.date


class Reserve(BaseModel):
    order_id: str
    warehouse: str
'''


def test_the_state_dto_carries_the_event_field_types(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scaffold_mypy_cache: Path
) -> None:
    (tmp_path / "richlib").mkdir()
    (tmp_path / "richlib/__init__.py").write_text("")
    (tmp_path / "richlib/events.py").write_text(RICH_EVENTS)
    ev = "richlib.events"
    data = {
        "name": "RichOrchestrator",
        "saga_type": "Rich",
        "state_dto_name": "RichState",
        "state_dto_module": "richapp.state",
        "state_repository_name": "RichStateRepository",
        "state_repository_module": "richapp.repository",
        "triggering_events": [
            {"event_name": n, "event_module": ev, "correlation_id_provider_str": "lambda e: e.order_id"}
            for n in ("Placed", "Imported")
        ],
        "steps": [
            {"step_name": "reserve", "command_name": "Reserve", "command_module": ev,
             "success_event_name": "Reserved", "success_event_module": ev},
        ],
    }  # fmt: skip
    target, done = generate_files(data, bounded_ctx="rich", root=tmp_path, scaffold=True)
    state_file = tmp_path / "richapp/state.py"
    source = state_file.read_text()
    fields = source.split("model_config = ", 1)[1]
    assert fields.split("\n\n\n")[0].splitlines()[1:] == [
        "",
        "    order_id: str",
        "    placed_at: datetime | None = None",
        "    total: Decimal | int | None = None",
        "    ref: UUID | None = None",
        "    color: Color | None = None",
        "    address: Address | None = None",
        '    kind: Literal["a", "b"] | None = None',
        "    tags: list[str] | None = None",
        "    counts: dict[str, list[int]] | None = None",
        "    note: str | None = None",
        "    source: str | None = None",
        "    model_version: int | None = None",
        "    where: Point | None = None",
        "    span: tuple[int, ...] | None = None",
        "    blob: Any = None",
        "    page: Any = None",
        "    date: date2 | None = None",
    ]
    assert 'model_config = ConfigDict(extra="allow", protected_namespaces=())' in source
    assert "from datetime import date as date2" in source
    # The docstring says what it could not declare, and what the commands need that no event has.
    text = " ".join(source.split())
    assert "Kept undeclared (not usable as pydantic field names here): json." in text
    assert "No event carries these required command fields: Reserve.warehouse." in text
    assert "Placed (trigger), Imported (trigger) and Reserved" in text
    check_clean(tmp_path, [state_file, tmp_path / "richapp/repository.py", target], scaffold_mypy_cache)

    monkeypatch.syspath_prepend(str(tmp_path))
    module = import_file(target, "generated_rich_orchestrator")
    model = module.definition.state_model
    events = sys.modules[ev]
    placed = events.Placed(
        order_id="o",
        placed_at="2024-01-02T03:04:05Z",
        total="1.50",
        ref="12345678-1234-5678-1234-567812345678",
        color="red",
        address={"street": "s"},
        kind="a",
    )
    reserved = events.Reserved(
        order_id="o",
        json="{}",
        model_version=2,
        where=events.Point(1, 2),
        span=(1, 2),
        blob={"any": ["thing"]},
        page=events.Page[int](items=[1]),
        total=3,
        date=datetime.date(2024, 1, 2),
    )
    step = module.definition.steps[0].action
    state = step.apply_reply(placed.model_dump(mode="json"), reserved)
    validated = model.model_validate(state)
    assert validated.color is events.Color.RED and validated.where == events.Point(1, 2)
    assert validated.model_extra == {"json": "{}"}  # undeclared, kept as it is
    assert typing.get_type_hints(model)["order_id"] is str


def test_a_minimal_model_when_no_event_can_be_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scaffold_mypy_cache: Path
) -> None:
    data = definition("early")
    for t in data["triggering_events"]:
        t["event_module"] = "not_written_yet.events"
    for s in data["steps"]:
        s["success_event_module"] = "not_written_yet.events"
        s["command_module"] = "not_written_yet.commands"
        s.pop("compensation_command_name", None)
        s.pop("compensation_command_module", None)
    done = scaffold(data, root=tmp_path)  # the format is checked, the modules are not
    assert [s.action for s in done] == ["created", "created"]
    state_file, repo_file = (s.path for s in done)
    assert state_file is not None and repo_file is not None
    source = state_file.read_text()
    assert source.rstrip().splitlines()[-4] == '    model_config = ConfigDict(extra="allow")'
    assert "No event of the definition could be imported when this file was generated" in source
    assert "TODO" not in source
    check_clean(tmp_path, [state_file, repo_file], scaffold_mypy_cache)
    monkeypatch.syspath_prepend(str(tmp_path))
    model = import_file(state_file, "early.ordering.state").OrderProcessingSagaState
    assert model.model_validate({"order_id": "o"}).model_dump() == {"order_id": "o"}
    # Generating the orchestrator checks the whole definition: nothing more is written.
    with pytest.raises(InvalidDefinition) as e:
        generate(data, bounded_ctx="ordering", root=tmp_path, scaffold=True)
    assert all("not_written_yet" in err for err in e.value.errors)
    assert not (tmp_path / "app").exists()


def test_one_module_for_the_state_dto_and_its_repository(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scaffold_mypy_cache: Path
) -> None:
    data = definition("combo", state_repository_module="combo.ordering.state")
    target, done = generate_files(data, bounded_ctx="ordering", root=tmp_path, scaffold=True)
    assert done == [
        Scaffolded(
            "combo.ordering.state",
            ("OrderProcessingSagaState", "OrderProcessingSagaStateRepository"),
            tmp_path / "combo/ordering/state.py",
            "created",
        )
    ]
    source = (tmp_path / "combo/ordering/state.py").read_text()
    assert '__all__ = ["OrderProcessingSagaState", "OrderProcessingSagaStateRepository"]' in source
    check_clean(tmp_path, [tmp_path / "combo/ordering/state.py", target], scaffold_mypy_cache)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = import_file(target, "generated_combo_orchestrator")
    assert module.OrderProcessingSagaOrchestrator.state_repository.__module__ == "combo.ordering.state"


async def test_the_repository_reads_state_from_an_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = definition("repo_pkg")
    generate(data, bounded_ctx="ordering", root=tmp_path, scaffold=True)
    monkeypatch.syspath_prepend(str(tmp_path))
    defn = load_definition(data)
    from repo_pkg.infrastructure.repositories import (  # type: ignore[import-not-found]
        OrderProcessingSagaStateRepository,
    )
    from repo_pkg.ordering.state import OrderProcessingSagaState  # type: ignore[import-not-found]

    async with SagaEngine(f"sqlite:///{tmp_path}/repo.db") as engine:
        engine.register(defn)
        repo = OrderProcessingSagaStateRepository(engine)
        state = OrderProcessingSagaState(order_id="o-1", amount=2, address="a")
        saga_id = await repo.save(state, correlation_id="o-1")
        again = await repo.save(OrderProcessingSagaState(order_id="o-1", amount=9, address="b"), correlation_id="o-1")
        assert again == saga_id
        assert await repo.get(saga_id) == state
        assert await repo.find("o-1") == state
        assert await repo.find("nope") is None
        assert (await engine.get(saga_id)).correlation_id == "o-1"


async def test_the_scaffolded_seed_runs_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, app: Any) -> None:
    """The seed scenario, with the state DTO that --scaffold derived from the events."""
    plain = definition("e2e")
    failing = with_failures(plain)
    defs = []
    for name, data in (("plain", plain), ("failing", failing)):
        target = generate(data, bounded_ctx="ordering", root=tmp_path, scaffold=True)
        monkeypatch.syspath_prepend(str(tmp_path))
        defs.append(import_file(target, f"generated_e2e_{name}").definition)
    assert defs[0].state_model.__module__ == "e2e.ordering.state"
    assert defs[0].state_model is defs[1].state_model  # the same file, unchanged by the second run
    await run_scenarios(defs[0], defs[1], app, f"sqlite:///{tmp_path}/scaffolded.db")


def test_a_package_elsewhere_in_the_project_is_extended(tmp_path: Path) -> None:
    """A src layout: the package exists under --root/src, so the module goes in there."""
    (tmp_path / "src/srcpkg").mkdir(parents=True)
    (tmp_path / "src/srcpkg/__init__.py").write_text("VALUE = 1\n")
    data = definition("srcpkg")
    generate(data, bounded_ctx="ordering", root=tmp_path, search_path=[tmp_path / "src"], scaffold=True)
    assert (tmp_path / "src/srcpkg/ordering/state.py").is_file()
    assert (tmp_path / "src/srcpkg/ordering/__init__.py").is_file()
    assert (tmp_path / "src/srcpkg/__init__.py").read_text() == "VALUE = 1\n"
    assert not (tmp_path / "srcpkg").exists()
    assert load_definition(data, search_path=[tmp_path / "src"]).state_model is not None


def test_modules_that_cannot_be_created(tmp_path: Path) -> None:
    # The package exists outside the project directory: nothing is written there.
    data = definition("x", state_dto_module="app_root_name.domain.ordering.sagas.new_state")
    with pytest.raises(InvalidDefinition) as e:
        generate(data, bounded_ctx="ordering", root=tmp_path, scaffold=True)
    (err,) = e.value.errors
    assert err.startswith(
        "state_dto_module: cannot create 'app_root_name.domain.ordering.sagas.new_state': its package "
        "'app_root_name.domain.ordering.sagas' is at "
    )
    assert "outside the project directory" in err
    assert not (FIXTURES / "app_root_name/domain/ordering/sagas/new_state.py").exists()

    # A plain module cannot hold another.
    (tmp_path / "plainmod.py").write_text("")
    data = definition("x", state_dto_module="plainmod.state")
    with pytest.raises(
        InvalidDefinition, match=r"state_dto_module: cannot create 'plainmod.state': 'plainmod' is a module"
    ):
        scaffold(data, root=tmp_path)

    # Not a module path, not a class name.
    data = definition("x", state_dto_module="a..b", state_repository_name="class")
    with pytest.raises(InvalidDefinition) as e:
        scaffold(data, root=tmp_path)
    assert e.value.errors == (
        "state_dto_module: 'a..b' is not a dotted Python module path like 'app.domain.state'",
        "state_repository_name: 'class' is not a Python class name",
    )

    # One module inside the other, or the orchestrator's module.
    data = definition("nest", state_repository_module="nest.ordering.state.repo")
    with pytest.raises(InvalidDefinition, match="would live inside 'nest.ordering.state'"):
        scaffold(data, root=tmp_path)
    data = definition("x", state_dto_module="app.domain.ordering.sagas")
    with pytest.raises(InvalidDefinition, match="collides with the generated orchestrator module"):
        generate(data, bounded_ctx="ordering", root=tmp_path, scaffold=True)
    data = definition("x", state_repository_module="x.ordering.state", state_repository_name="OrderProcessingSagaState")
    with pytest.raises(InvalidDefinition, match="the state DTO and its repository must be two classes"):
        scaffold(data, root=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plainmod.py"]


def test_a_broken_definition_writes_nothing(tmp_path: Path) -> None:
    data = definition("broken")
    data["steps"][0]["command_name"] = "Nope"
    with pytest.raises(InvalidDefinition) as e:
        generate(data, bounded_ctx="ordering", root=tmp_path, scaffold=True)
    # Only the real problem: the state modules about to be created are not reported missing.
    (err,) = e.value.errors
    assert err.startswith("steps[0].command_name: module 'app_root_name.application.payments.commands' has no 'Nope'")
    assert list(tmp_path.iterdir()) == []


def test_an_edited_orchestrator_stops_before_scaffolding(tmp_path: Path) -> None:
    data = definition("stop")
    target = generate(data, bounded_ctx="ordering", root=tmp_path, scaffold=True)
    target.write_text(target.read_text() + "# mine\n")
    for f in ("stop/ordering/state.py", "stop/infrastructure/repositories.py"):
        (tmp_path / f).unlink()
    with pytest.raises(GeneratedFileEdited):
        generate(data, bounded_ctx="ordering", root=tmp_path, scaffold=True)
    assert not (tmp_path / "stop/ordering/state.py").exists()
    generate(data, bounded_ctx="ordering", root=tmp_path, scaffold=True, force=True)
    assert (tmp_path / "stop/ordering/state.py").is_file()
    assert "# mine" not in target.read_text()


def test_an_existing_repository_that_imports_the_state_being_created(tmp_path: Path) -> None:
    """The user's repository imports the state DTO module that --scaffold creates: not an error."""
    (tmp_path / "own/infrastructure").mkdir(parents=True)
    (tmp_path / "own/__init__.py").write_text("")
    (tmp_path / "own/infrastructure/__init__.py").write_text("")
    (tmp_path / "own/infrastructure/repositories.py").write_text(
        textwrap.dedent(
            """\
            from own.ordering.state import OrderProcessingSagaState


            class OrderProcessingSagaStateRepository:
                model = OrderProcessingSagaState
            """
        )
    )
    target, done = generate_files(definition("own"), bounded_ctx="ordering", root=tmp_path, scaffold=True)
    assert [s.action for s in done] == ["created", "exists"]
    assert target.is_file()
