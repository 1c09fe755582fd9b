"""The declarative saga-orchestrator format of seed 000: load, validate, draw and generate.

- ``load_definition(path_or_mapping)`` reads JSON or YAML and returns the same
  ``SagaDefinition`` that ``SagaBuilder`` makes;
- ``read_definition`` validates without importing anything;
- ``compile_correlation`` is the safe compiler of ``correlation_id_provider_str``;
- ``generate`` writes a code-first orchestrator module (``render`` returns its
  source), ``graph`` draws a definition as Mermaid or DOT.

``default_command``, ``merge_event`` and ``to_correlation_id`` are the default
mapping of message steps, re-exported here for generated modules.

Errors are ``InvalidDefinition`` (a ``DefinitionError``) whose ``errors`` lists
every problem as ``field.path: what is wrong``.
"""

from __future__ import annotations

from .._messages import default_command, merge_event, to_correlation_id
from ._correlation import CorrelationFunction, compile_correlation
from ._generate import GeneratedFileEdited, generate, module_path, render, snake_case
from ._graph import graph
from ._loader import InvalidDefinition, build_definition_from, load_definition, read_definition
from ._models import (
    ImportDefinitionDTO,
    SagaOrchestratorInputDTO,
    SagaStepInputDTO,
    TriggerEventConfigInputDTO,
)

__all__ = [
    "CorrelationFunction",
    "GeneratedFileEdited",
    "ImportDefinitionDTO",
    "InvalidDefinition",
    "SagaOrchestratorInputDTO",
    "SagaStepInputDTO",
    "TriggerEventConfigInputDTO",
    "build_definition_from",
    "compile_correlation",
    "default_command",
    "generate",
    "graph",
    "load_definition",
    "merge_event",
    "module_path",
    "read_definition",
    "render",
    "snake_case",
    "to_correlation_id",
]
