"""Property: any valid definition round-trips through load -> graph -> generate, and the module matches."""

from __future__ import annotations

import importlib.util
import keyword
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sagakit import SagaDefinition
from sagakit.declarative import compile_correlation, generate, graph, load_definition

from .test_generate import FIRST_PARTY, RUFF_RULES, describe

POOL, POOL2 = "decl_fixtures.pool", "decl_fixtures.pool2"
COMMANDS = [(POOL, "CommandA"), (POOL, "CommandB"), (POOL, "CommandC"), (POOL2, "CommandA"), (POOL2, "send")]
# Names the definitions' `imports` entry may list from POOL; a bare name among them resolves to POOL.
POOL_IMPORTABLE = ["CONSTANT", "EventA", "State"]
EVENTS = [(POOL, "EventA"), (POOL, "EventB"), (POOL, "EventC"), (POOL, "EventD"), (POOL2, "EventA")]

identifier = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True)
step_names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.\-]{0,12}", fullmatch=True)
orchestrator_names = st.from_regex(r"[A-Z][a-z0-9]{0,6}([A-Z][a-z0-9]{1,6}){0,2}", fullmatch=True).map(
    lambda s: s + "Orchestrator"
)

attribute_paths = st.lists(
    identifier.filter(lambda s: not s.startswith("_") and not keyword.iskeyword(s)), min_size=1, max_size=3
).map(".".join)


def _correlation(param: str) -> st.SearchStrategy[str]:
    base = st.one_of(
        attribute_paths.map(lambda p: f"{param}.{p}"),
        st.tuples(attribute_paths, st.from_regex(r"[a-z]{1,5}", fullmatch=True)).map(
            lambda t: f'{param}.{t[0]}["{t[1]}"]'
        ),
        st.tuples(attribute_paths, st.integers(-3, 3)).map(lambda t: f"{param}.{t[0]}[{t[1]}]"),
    )
    body = st.recursive(
        base,
        lambda inner: st.one_of(
            inner.map(lambda c: f"str({c})"),
            inner.map(lambda c: f"int({c})"),
            st.tuples(inner, inner).map(lambda t: f"{t[0]} + ':' + {t[1]}"),
            inner.filter(lambda c: "'" not in c and "f" not in c).map(lambda c: f"f'id-{{{c}}}'"),
        ),
        max_leaves=4,
    )
    return body.map(lambda b: f"lambda {param}: {b}")


correlations = st.sampled_from(["e", "event", "evt", "str_"]).flatmap(_correlation)


@st.composite
def success(draw: st.DrawFn, exclude: tuple[str, str] | None = None) -> dict[str, Any]:
    pool = [e for e in EVENTS if e != exclude]
    chosen = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=3, unique=True))
    modules = [m for m, _ in chosen]
    names = [n for _, n in chosen]
    if len(chosen) == 1 and draw(st.booleans()):
        return {"success_event_name": names[0], "success_event_module": modules[0]}
    if len(set(modules)) == 1 and draw(st.booleans()):
        return {"success_event_name": names, "success_event_module": modules[0]}
    return {"success_event_name": names, "success_event_module": modules}


@st.composite
def steps(draw: st.DrawFn) -> dict[str, Any]:
    command = draw(st.sampled_from(COMMANDS))
    failure = draw(st.none() | st.sampled_from(EVENTS))
    step: dict[str, Any] = {
        "step_name": draw(step_names),
        "command_name": command[1],
        "command_module": command[0],
        **draw(success(exclude=failure)),
    }
    if failure is not None:
        step.update(failure_event_module=failure[0], failure_event_name=failure[1])
    if draw(st.booleans()):
        step["is_compensating_transaction"] = draw(st.booleans())
    if draw(st.booleans()):
        comp = draw(st.sampled_from(COMMANDS))
        step.update(compensation_command_module=comp[0], compensation_command_name=comp[1])
        comp_events = draw(st.lists(st.sampled_from(EVENTS), max_size=2, unique=True))
        for field, (module, name) in zip(
            ("compensation_success_event_name", "compensation_failure_event_name"), comp_events, strict=False
        ):
            # bare when the compensation command's module has it, else module.ClassName; never a bare
            # name that the definition's `imports` (of POOL, drawn later) may give to another module
            bare = module == comp[0] and (module == POOL or name not in POOL_IMPORTABLE)
            step[field] = name if bare and draw(st.booleans()) else f"{module}.{name}"
    return step


@st.composite
def definitions(draw: st.DrawFn) -> dict[str, Any]:
    drawn_steps = draw(st.lists(steps(), min_size=1, max_size=5, unique_by=lambda s: s["step_name"]))
    triggers = draw(st.lists(st.sampled_from(EVENTS), max_size=3, unique=True))
    data: dict[str, Any] = {
        "name": draw(orchestrator_names),
        "saga_type": draw(step_names),
        "state_dto_name": "State",
        "state_dto_module": POOL,
        "state_repository_name": "Repository",
        "state_repository_module": POOL,
        "steps": drawn_steps,
    }
    if triggers or draw(st.booleans()):
        data["triggering_events"] = [
            {"event_module": m, "event_name": n, "correlation_id_provider_str": draw(correlations)} for m, n in triggers
        ]
    for kind in ("completion", "failure"):
        event = draw(st.none() | st.sampled_from(EVENTS))
        if event is not None:
            data[f"{kind}_event_module"], data[f"{kind}_event_name"] = event
    if draw(st.booleans()):
        data["description"] = draw(st.text(max_size=120))
    if draw(st.booleans()):
        data["imports"] = [
            {
                "module": POOL,
                "names": draw(st.lists(st.sampled_from(POOL_IMPORTABLE), unique=True)),
            }
        ]
    return data


def _import(path: Path, name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


COUNTER = iter(range(10**9))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(definitions())
def test_valid_definitions_round_trip_through_load_graph_generate(data: dict[str, Any]) -> None:
    for t in data.get("triggering_events", []):
        compile_correlation(t["correlation_id_provider_str"])  # the strategy only makes accepted ones
    loaded = load_definition(data)
    assert isinstance(loaded, SagaDefinition)
    assert [s.name for s in loaded.steps] == [s["step_name"] for s in data["steps"]]

    mermaid = graph(loaded)
    assert mermaid.startswith("flowchart TD\n")
    assert all(f"step_{i}[" in mermaid for i in range(len(loaded.steps)))
    assert graph(loaded, "dot").startswith("digraph ")

    with tempfile.TemporaryDirectory() as root:
        target = generate(data, bounded_ctx="ctx", root=root)
        source = target.read_text()
        compile(source, str(target), "exec")
        lint = subprocess.run(
            [sys.executable, "-m", "ruff", "check", "--isolated", "--target-version", "py311",
             "--select", RUFF_RULES, "--config", FIRST_PARTY, "--no-cache", str(target)],
            cwd=root, capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert lint.returncode == 0, lint.stdout + source
        module = _import(target, f"generated_property_{next(COUNTER)}")
        assert describe(module.definition) == describe(loaded)
        # Generating again changes nothing.
        assert generate(data, bounded_ctx="ctx", root=root).read_text() == source
