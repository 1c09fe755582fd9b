"""``graph``: a saga definition as a Mermaid flowchart, Graphviz DOT or SVG of steps and compensations.

Solid arrows are the forward flow (trigger events, step dependencies, the
completion event); dotted arrows are the rollback: a step that fails starts
the compensations of the completed steps before it, in reverse dependency
order, ending in the failure event.

SVG is the DOT text laid out by Graphviz's ``dot -Tsvg``, so it needs
Graphviz installed (``apt-get install graphviz``, ``brew install graphviz``).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from .._definition import SagaDefinition, StepAction, StepDefinition
from .._errors import SagaError
from .._messages import SendCommand, WaitFor

__all__ = ["GraphvizError", "GraphvizNotFound", "graph", "render_svg"]

GraphFormat = Literal["mermaid", "dot", "svg"]

INSTALL_GRAPHVIZ = (
    "install Graphviz, which provides it (Debian/Ubuntu: apt-get install graphviz; macOS: brew install "
    "graphviz; see https://graphviz.org/download/), or use --format dot or mermaid"
)


class GraphvizError(SagaError, RuntimeError):
    """Graphviz's ``dot`` failed to lay out the graph."""


class GraphvizNotFound(GraphvizError, FileNotFoundError):
    """SVG output needs Graphviz's ``dot`` executable, which is not on ``PATH``."""


@dataclass(frozen=True, slots=True)
class _Node:
    id: str
    lines: tuple[str, ...]
    kind: Literal["event", "step", "undo"]


@dataclass(frozen=True, slots=True)
class _Edge:
    source: str
    target: str
    dotted: bool = False
    label: str = ""


def graph(definition: SagaDefinition, format: GraphFormat = "mermaid") -> str:
    """Draw *definition*: ``format="mermaid"`` (a ``flowchart TD``), ``"dot"`` (Graphviz) or ``"svg"``.

    Works for any definition: message steps show their command and events,
    local steps the function's name. ``"svg"`` is the DOT text laid out by
    Graphviz (see ``render_svg``).

    Raises:
        ValueError: an unknown format.
        GraphvizNotFound: ``"svg"`` without Graphviz's ``dot`` on ``PATH``.
        GraphvizError: ``dot`` failed.
    """
    nodes, edges = _layout(definition)
    if format == "mermaid":
        return _mermaid(nodes, edges)
    if format == "dot":
        return _dot(definition.name, nodes, edges)
    if format == "svg":
        return render_svg(_dot(definition.name, nodes, edges))
    raise ValueError(f"unknown graph format {format!r}: use 'mermaid', 'dot' or 'svg'")


def render_svg(dot_text: str, *, dot: str | None = None, timeout: float = 60.0) -> str:
    """Lay out Graphviz DOT text as SVG by piping it through ``dot -Tsvg``.

    Args:
        dot_text: the graph, e.g. ``graph(definition, "dot")``.
        dot: the ``dot`` executable; found on ``PATH`` by default.
        timeout: seconds to wait for ``dot``.

    Raises:
        GraphvizNotFound: no ``dot`` executable (Graphviz is not installed).
        GraphvizError: ``dot`` failed or timed out.
    """
    exe = dot or shutil.which("dot")
    if exe is None:
        raise GraphvizNotFound(f"SVG output needs Graphviz's 'dot' program, which is not on PATH: {INSTALL_GRAPHVIZ}")
    try:
        done = subprocess.run(
            [exe, "-Tsvg"],
            input=dot_text.encode("utf-8"),
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError:
        raise GraphvizNotFound(f"Graphviz's 'dot' program was not found at {exe!r}: {INSTALL_GRAPHVIZ}") from None
    except subprocess.TimeoutExpired:
        raise GraphvizError(f"Graphviz's 'dot' did not finish within {timeout:g} seconds") from None
    except OSError as e:
        raise GraphvizError(f"cannot run Graphviz's 'dot' ({exe}): {e}") from None
    if done.returncode != 0:
        problem = done.stderr.decode("utf-8", "replace").strip() or f"exit status {done.returncode}"
        raise GraphvizError(f"Graphviz's 'dot -Tsvg' failed: {problem}")
    return done.stdout.decode("utf-8")


def _type(t: type) -> str:
    return t.__qualname__


def _action_lines(action: Callable[..., Any] | StepAction | None) -> list[str]:
    if isinstance(action, SendCommand):
        lines = [f"send {_type(action.command)}"]
        if action.success:
            lines.append("ok: " + " | ".join(_type(s) for s in action.success))
        if action.failure:
            lines.append(f"fail: {', '.join(_type(f) for f in action.failure)}")
        return lines
    if isinstance(action, WaitFor):
        lines = [f"wait for {_type(action.event)}"]
        if action.failure:
            lines.append(f"fail: {', '.join(_type(f) for f in action.failure)}")
        return lines
    if action is None:
        return []
    return [getattr(action, "__qualname__", None) or type(action).__qualname__]


def _layout(d: SagaDefinition) -> tuple[list[_Node], list[_Edge]]:
    index = {name: i for i, name in enumerate(d.order)}
    nodes: list[_Node] = []
    edges: list[_Edge] = []

    for i, trig in enumerate(d.triggers):
        nodes.append(_Node(f"trigger_{i}", (_type(trig.event),), "event"))
    for name in d.order:
        s = d.by_name[name]
        title = f"{name} (pivot)" if s.pivot else name
        nodes.append(_Node(f"step_{index[name]}", (title, *_action_lines(s.action)), "step"))
    roots = [n for n in d.order if not d.by_name[n].after]
    for i in range(len(d.triggers)):
        edges += [_Edge(f"trigger_{i}", f"step_{index[r]}") for r in roots]
    for name in d.order:
        edges += [_Edge(f"step_{index[dep]}", f"step_{index[name]}") for dep in d.by_name[name].after]

    done = _type(d.completion_event) if d.completion_event is not None else "completed"
    nodes.append(_Node("completed", (done,), "event"))
    edges += [_Edge(f"step_{index[n]}", "completed") for n in d.order if not d.dependents[n]]

    compensated = [d.by_name[n] for n in d.order if d.by_name[n].compensation is not None]
    if not compensated:
        return nodes, edges
    failed = _type(d.failure_event) if d.failure_event is not None else "compensated"
    for s in compensated:
        nodes.append(_Node(f"undo_{index[s.name]}", (f"undo {s.name}", *_action_lines(s.compensation)), "undo"))
        edges.append(_Edge(f"step_{index[s.name]}", f"undo_{index[s.name]}", dotted=True, label="rollback"))
    nodes.append(_Node("failed", (failed,), "event"))
    for s in compensated:
        before = _nearest_compensated(d, s, index)
        if before:
            edges += [_Edge(f"undo_{index[s.name]}", f"undo_{index[b]}", dotted=True) for b in before]
        else:
            edges.append(_Edge(f"undo_{index[s.name]}", "failed", dotted=True))
    return nodes, edges


def _nearest_compensated(d: SagaDefinition, s: StepDefinition, index: Mapping[str, int]) -> list[str]:
    """The closest ancestors of *s* that have a compensation (what is undone next)."""
    out: list[str] = []
    seen: set[str] = set()
    stack = list(s.after)
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        if d.by_name[name].compensation is not None:
            out.append(name)
        else:
            stack.extend(d.by_name[name].after)
    if len(out) < 2:
        return out
    # Drop ancestors of other hits: they are undone after those, not directly after s.
    nearest = [n for n in out if not any(n in d.ancestors[o] for o in out if o != n)]
    return sorted(nearest, key=index.__getitem__)


def _mermaid_text(text: str) -> str:
    return text.replace("&", "#amp;").replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;")


def _mermaid(nodes: list[_Node], edges: list[_Edge]) -> str:
    out = ["flowchart TD"]
    shapes = {"event": ('(["', '"])'), "step": ('["', '"]'), "undo": ('("', '")')}
    for n in nodes:
        left, right = shapes[n.kind]
        label = "<br/>".join(_mermaid_text(line) for line in n.lines)
        out.append(f"    {n.id}{left}{label}{right}")
    for e in edges:
        arrow = "-->"
        if e.dotted:
            arrow = f"-. {_mermaid_text(e.label)} .->" if e.label else "-.->"
        out.append(f"    {e.source} {arrow} {e.target}")
    if any(n.kind == "undo" for n in nodes):
        out.append("    classDef undo stroke-dasharray: 4 3")
        out.append("    class " + ",".join(n.id for n in nodes if n.kind == "undo") + " undo")
    return "\n".join(out) + "\n"


def _dot_text(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _dot(name: str, nodes: list[_Node], edges: list[_Edge]) -> str:
    out = [f"digraph {_dot_text(name)} {{", "    rankdir=TB;", "    node [shape=box];"]
    shapes = {"event": "shape=oval", "step": "shape=box", "undo": "shape=box, style=dashed"}
    for n in nodes:
        label = _dot_text("\n".join(n.lines)).replace("\n", "\\n")
        out.append(f"    {n.id} [label={label}, {shapes[n.kind]}];")
    for e in edges:
        attrs = []
        if e.dotted:
            attrs.append("style=dashed")
        if e.label:
            attrs.append(f"label={_dot_text(e.label)}")
        suffix = f" [{', '.join(attrs)}]" if attrs else ""
        out.append(f"    {e.source} -> {e.target}{suffix};")
    out.append("}")
    return "\n".join(out) + "\n"
