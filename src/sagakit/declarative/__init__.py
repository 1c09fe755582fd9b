"""The declarative saga-orchestrator format of seed 000: load, validate, draw and generate.

- ``load_definition(path_or_mapping)`` reads JSON or YAML and returns the same
  ``SagaDefinition`` that ``SagaBuilder`` makes;
- ``check_definition`` validates completely without importing anything
  (``read_definition``: the fields only);
- ``compile_correlation`` is the safe compiler of ``correlation_id_provider_str``;
- ``generate`` writes a code-first orchestrator module (``render`` returns its
  source); ``scaffold`` (or ``generate(..., scaffold=True)``) creates the state
  DTO and state repository modules a definition names when they do not exist;
- ``graph`` draws a definition as Mermaid, DOT or (with Graphviz) SVG.

``default_command``, ``merge_event`` and ``to_correlation_id`` are the default
mapping of message steps, re-exported here for generated modules.

A definition may carry sagakit's own settings under ``"x-sagakit"`` (per
step: retries and timeouts; for the saga: deadline, wire names, known
events), which the seed schema tolerates; ``name_messages`` gives classes
the wire names a definition would.

Errors are ``InvalidDefinition`` (a ``DefinitionError``) whose ``errors`` lists
every problem as ``field.path: what is wrong``.
"""

from __future__ import annotations

from .._messages import default_command, merge_event, to_correlation_id
from ._correlation import CorrelationFunction, compile_correlation
from ._generate import GeneratedFileEdited, Scaffolded, generate, module_path, render, scaffold, snake_case
from ._graph import GraphvizError, GraphvizNotFound, graph, render_svg
from ._loader import InvalidDefinition, build_definition_from, check_definition, load_definition, read_definition
from ._models import (
    EXTENSION,
    ImportDefinitionDTO,
    SagaOrchestratorInputDTO,
    SagaStepInputDTO,
    TriggerEventConfigInputDTO,
)
from ._names import events_defined_with, name_messages

__all__ = [
    "EXTENSION",
    "CorrelationFunction",
    "GeneratedFileEdited",
    "GraphvizError",
    "GraphvizNotFound",
    "ImportDefinitionDTO",
    "InvalidDefinition",
    "SagaOrchestratorInputDTO",
    "SagaStepInputDTO",
    "Scaffolded",
    "TriggerEventConfigInputDTO",
    "build_definition_from",
    "check_definition",
    "compile_correlation",
    "default_command",
    "events_defined_with",
    "generate",
    "graph",
    "load_definition",
    "merge_event",
    "module_path",
    "name_messages",
    "read_definition",
    "render",
    "render_svg",
    "scaffold",
    "snake_case",
    "to_correlation_id",
]
