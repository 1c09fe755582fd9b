"""Fuzzing the loader: any JSON or YAML text ends in a definition or one InvalidDefinition, never another error.

Documents are random values, the seed example with fields replaced or
dropped, and either of those as text cut, spliced and salted with hostile
fragments (deep brackets, aliases, long numbers, Python tags, NUL bytes).
Each error must be one line. Only the test-local ``app_root_name`` package
may be imported, so random module names import nothing.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sagakit import SagaDefinition
from sagakit.declarative import InvalidDefinition, SagaOrchestratorInputDTO, check_definition, load_definition

from .conftest import SEED_DATA

# A few seconds in CI; SAGAKIT_FUZZ_EXAMPLES=20000 fuzzes for longer.
EXAMPLES = int(os.environ.get("SAGAKIT_FUZZ_EXAMPLES", "120"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True)
    | st.text(max_size=30)
    | st.sampled_from(["app_root_name.domain.payments.events", "lambda e: str(e.order_id)", "venv.__main__", "S1"])
)
values = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=25,
)

FIELDS = sorted({*SEED_DATA, *SEED_DATA["steps"][1], "imports", "description", "is_compensating_transaction"})


@st.composite
def mutated_seeds(draw: st.DrawFn) -> Any:
    """The seed example with a few fields replaced, dropped or added, at the top or in a step."""
    data = json.loads(json.dumps(SEED_DATA))
    for _ in range(draw(st.integers(0, 4))):
        steps = data.get("steps")
        in_step = isinstance(steps, list) and steps and draw(st.booleans())
        target = draw(st.sampled_from(steps)) if in_step else data
        if not isinstance(target, dict):
            break
        key = draw(st.sampled_from(FIELDS) | st.text(max_size=8))
        action = draw(st.sampled_from(["replace", "drop", "nest"]))
        if action == "drop":
            target.pop(key, None)
        elif action == "nest":
            target[key] = [target.get(key)] * draw(st.integers(1, 3))
        else:
            target[key] = draw(values)
    return data


documents = mutated_seeds() | values

FRAGMENTS = [
    "[" * 70,
    "{" * 70,
    "]" * 5,
    "&a ",
    "*a",
    "<<: *a\n",
    "9" * 120,
    "0x" + "f" * 120,
    "!!python/object/apply:os.system ['true'] ",
    "!!binary ",
    "!!int ",
    "!!float ",
    "!!bool ",
    "!!timestamp ",
    "!!set ",
    "!!omap ",
    "!!pairs ",
    "!!null ",
    "!!str ",
    "!!map ",
    "!!seq ",
    "!!merge ",
    "!local ",
    "2024-13-45",
    "\x00",
    "\t",
    "\ufeff",
    '"',
    "'",
    "---\n",
    "? ",
    ": ",
    "- ",
    "\n  ",
    "%YAML 1.1\n",
    "1e99999",
    "NaN",
]


@st.composite
def texts(draw: st.DrawFn) -> str:
    """A document written as JSON or YAML, then maybe cut, spliced and salted with fragments."""
    doc = draw(documents)
    if draw(st.booleans()):
        text = json.dumps(doc)
    else:
        try:
            text = yaml.safe_dump(doc, allow_unicode=draw(st.booleans()))
        except yaml.YAMLError:
            text = json.dumps(doc)
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(text)))
        edit = draw(st.sampled_from(["insert", "cut", "repeat"]))
        if edit == "insert":
            text = text[:at] + draw(st.sampled_from(FRAGMENTS) | st.text(max_size=5)) + text[at:]
        elif edit == "cut":
            text = text[:at] + text[at + draw(st.integers(1, 20)) :]
        else:
            text = text[:at] + text[at : at + 10] * draw(st.integers(2, 50)) + text[at:]
    return text


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as d:
        yield Path(d)


def ends_well(source: Any, *, resolve: bool) -> None:
    try:
        if resolve:
            result: object = load_definition(source, allow_modules=["app_root_name"])
            assert isinstance(result, SagaDefinition)
        else:
            result = check_definition(source)
            assert isinstance(result, SagaOrchestratorInputDTO)
    except InvalidDefinition as e:
        assert e.errors
        for line in e.errors:
            assert line and len(line.splitlines()) == 1, line


@SETTINGS
@given(text=texts(), suffix=st.sampled_from([".json", ".yaml", ".yml", ".txt"]), resolve=st.booleans())
def test_any_text_ends_in_a_definition_or_one_line_errors(workdir: Path, text: str, suffix: str, resolve: bool) -> None:
    f = workdir / f"fuzz{suffix}"
    f.write_text(text, encoding="utf-8", errors="surrogatepass")
    ends_well(f, resolve=resolve)


@SETTINGS
@given(data=documents, resolve=st.booleans())
def test_any_mapping_ends_in_a_definition_or_one_line_errors(data: Any, resolve: bool) -> None:
    if isinstance(data, dict):
        ends_well(data, resolve=resolve)


@settings(max_examples=max(EXAMPLES // 3, 40), deadline=None)
@given(
    width=st.integers(2, 12),
    levels=st.integers(2, 12),
    depth=st.integers(1, 400),
    where=st.sampled_from(["name", "steps", "other"]),
)
def test_hostile_shapes_end_in_one_error(workdir: Path, width: int, levels: int, depth: int, where: str) -> None:
    bomb = ["a0: &a0 [" + ",".join(["x"] * width) + "]"]
    bomb += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels)]
    bomb.append(f"{where}: *a{levels - 1}")
    f = workdir / "bomb.yaml"
    f.write_text("\n".join(bomb) + "\n")
    ends_well(f, resolve=False)
    nested = "[" * depth + "]" * depth
    for name, text in (
        ("deep.json", json.dumps({where: 1})[:-2] + nested + "}"),
        ("deep.yaml", f"{where}: {nested}\n"),
    ):
        f = workdir / name
        f.write_text(text)
        ends_well(f, resolve=False)
