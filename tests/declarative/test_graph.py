"""graph(): steps, dependencies and compensations as Mermaid, DOT or SVG (through Graphviz)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest
from pydantic import BaseModel

from sagakit import SagaBuilder, SagaError, send, wait_for
from sagakit.declarative import GraphvizError, GraphvizNotFound, graph, load_definition, render_svg
from tests.conftest import require_service

from .conftest import SEED


def test_the_seed_example_as_mermaid() -> None:
    assert graph(load_definition(SEED)) == (
        "flowchart TD\n"
        '    trigger_0(["OrderCreatedEvent"])\n'
        '    step_0["ProcessPayment<br/>send ProcessPaymentCommand<br/>ok: PaymentProcessedEvent"]\n'
        '    step_1["ShipOrder<br/>send ShipOrderCommand<br/>ok: OrderShippedEvent"]\n'
        '    completed(["OrderProcessingCompletedEvent"])\n'
        '    undo_1("undo ShipOrder<br/>send CancelShipmentCommand")\n'
        '    failed(["OrderProcessingFailedEvent"])\n'
        "    trigger_0 --> step_0\n"
        "    step_0 --> step_1\n"
        "    step_1 --> completed\n"
        "    step_1 -. rollback .-> undo_1\n"
        "    undo_1 -.-> failed\n"
        "    classDef undo stroke-dasharray: 4 3\n"
        "    class undo_1 undo\n"
    )


def test_the_seed_example_as_dot() -> None:
    assert graph(load_definition(SEED), "dot") == (
        'digraph "OrderProcessingSaga" {\n'
        "    rankdir=TB;\n"
        "    node [shape=box];\n"
        '    trigger_0 [label="OrderCreatedEvent", shape=oval];\n'
        '    step_0 [label="ProcessPayment\\nsend ProcessPaymentCommand\\nok: PaymentProcessedEvent", '
        "shape=box];\n"
        '    step_1 [label="ShipOrder\\nsend ShipOrderCommand\\nok: OrderShippedEvent", shape=box];\n'
        '    completed [label="OrderProcessingCompletedEvent", shape=oval];\n'
        '    undo_1 [label="undo ShipOrder\\nsend CancelShipmentCommand", shape=box, style=dashed];\n'
        '    failed [label="OrderProcessingFailedEvent", shape=oval];\n'
        "    trigger_0 -> step_0;\n"
        "    step_0 -> step_1;\n"
        "    step_1 -> completed;\n"
        '    step_1 -> undo_1 [style=dashed, label="rollback"];\n'
        "    undo_1 -> failed [style=dashed];\n"
        "}\n"
    )


class Approved(BaseModel):
    order_id: str


class Rejected(BaseModel):
    order_id: str


class Charge(BaseModel):
    order_id: str


def reserve(ctx: Any) -> None: ...
def release(ctx: Any) -> None: ...
def notify(ctx: Any) -> None: ...
def audit(ctx: Any) -> None: ...


def test_a_code_first_graph_with_branches_pivot_and_waits() -> None:
    b = SagaBuilder("fulfil")
    b.step("reserve", action=reserve, compensation=release)
    b.step("audit", action=audit, after=["reserve"])  # no compensation: skipped over when undoing
    b.step("approve", action=wait_for(Approved, failure=Rejected), after=["audit"])
    b.step(
        "charge",
        action=send(Charge, success=Approved),
        compensation=send(Charge),
        after=["approve"],
        pivot=True,
    )
    b.step("notify", action=notify, after=["reserve"])
    text = graph(b.build())
    assert text.splitlines() == [
        "flowchart TD",
        '    step_0["reserve<br/>reserve"]',
        '    step_1["audit<br/>audit"]',
        '    step_2["notify<br/>notify"]',
        '    step_3["approve<br/>wait for Approved<br/>fail: Rejected"]',
        '    step_4["charge (pivot)<br/>send Charge<br/>ok: Approved"]',
        '    completed(["completed"])',
        '    undo_0("undo reserve<br/>release")',
        '    undo_4("undo charge<br/>send Charge")',
        '    failed(["compensated"])',
        "    step_0 --> step_1",
        "    step_0 --> step_2",
        "    step_1 --> step_3",
        "    step_3 --> step_4",
        "    step_2 --> completed",
        "    step_4 --> completed",
        "    step_0 -. rollback .-> undo_0",
        "    step_4 -. rollback .-> undo_4",
        "    undo_0 -.-> failed",
        "    undo_4 -.-> undo_0",
        "    classDef undo stroke-dasharray: 4 3",
        "    class undo_0,undo_4 undo",
    ]
    assert "digraph" in graph(b.build(), "dot")


def test_labels_are_escaped() -> None:
    class Quoted(BaseModel):  # qualname holds <locals>
        x: str

    d = SagaBuilder("weird").step("a", action=send(Quoted, success=Approved)).build()
    mermaid = graph(d)
    assert "#lt;locals#gt;.Quoted" in mermaid and "<locals>" not in mermaid
    assert "<locals>.Quoted" in graph(d, "dot")


def test_no_compensation_no_failure_node() -> None:
    d = SagaBuilder("s").step("a", action=reserve).build()
    assert graph(d).splitlines() == [
        "flowchart TD",
        '    step_0["a<br/>reserve"]',
        '    completed(["completed"])',
        "    step_0 --> completed",
    ]


def test_unknown_format() -> None:
    d = SagaBuilder("s").step("a", action=reserve).build()
    with pytest.raises(ValueError, match="unknown graph format 'png': use 'mermaid', 'dot' or 'svg'"):
        graph(d, "png")  # type: ignore[arg-type]


def dot_missing() -> str | None:
    if shutil.which("dot") is None:
        return "Graphviz's dot is not installed (apt-get install graphviz)"
    return None


def svg_texts(svg: str) -> list[str]:
    root = ElementTree.fromstring(svg)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    return [t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}text")]


def test_the_seed_example_as_svg() -> None:
    require_service(dot_missing())
    svg = graph(load_definition(SEED), "svg")
    texts = svg_texts(svg)
    for name in ("ProcessPayment", "ShipOrder", "undo ShipOrder", "OrderCreatedEvent", "OrderProcessingFailedEvent"):
        assert name in texts
    assert "send ShipOrderCommand" in texts
    assert render_svg(graph(load_definition(SEED), "dot")) == svg  # the same layout every time


def test_svg_of_labels_that_need_escaping() -> None:
    require_service(dot_missing())

    class Quoted(BaseModel):  # qualname holds <locals>
        x: str

    d = SagaBuilder("weird").step("a", action=send(Quoted, success=Approved)).build()
    texts = svg_texts(graph(d, "svg"))  # well-formed XML: Graphviz escaped the < and >
    assert "a" in texts
    assert any(t.startswith("send ") and t.endswith("<locals>.Quoted") for t in texts)


def test_svg_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(GraphvizNotFound, match="install Graphviz") as e:
        render_svg("digraph {}", dot=str(tmp_path / "no-dot"))
    assert isinstance(e.value, GraphvizError) and isinstance(e.value, SagaError)
    monkeypatch.setenv("PATH", str(tmp_path))
    d = SagaBuilder("s").step("a", action=reserve).build()
    with pytest.raises(GraphvizNotFound, match=r"apt-get install graphviz.*or use --format dot or mermaid"):
        graph(d, "svg")
    monkeypatch.undo()
    require_service(dot_missing())
    with pytest.raises(GraphvizError, match="Graphviz's 'dot -Tsvg' failed: .*syntax error"):
        render_svg("digraph { -> }")
