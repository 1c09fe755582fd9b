"""Property-based tests of the HTTP API from its published OpenAPI document (schemathesis).

The app is served by uvicorn on a loopback port, with workers running, on a
store seeded with sagas in every state; schemathesis generates requests for
every operation (valid ones and edge cases) with the token set, and checks
that no response is a server error and that each one matches the document:
status code, content type and body schema.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from sagakit import __version__  # noqa: E402
from sagakit.admin import Operations, create_app  # noqa: E402
from sagakit.admin._openapi import openapi_document  # noqa: E402

from . import sample_app  # noqa: E402
from .conftest import AUTH, TOKEN, Seed, ServedApp, seed_sync  # noqa: E402

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def served_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServedApp, Seed]]:
    url = f"sqlite:///{tmp_path_factory.mktemp('schemathesis')}/sagas.db"
    seed = seed_sync(url)
    ops = Operations.for_store(url, [sample_app.order])
    with ServedApp(create_app(ops, token=TOKEN, run_engine=True)) as served:
        yield served, seed


# The document the server publishes (a test in test_http checks that /openapi.json is this).
schema = schemathesis.openapi.from_dict(openapi_document(__version__))


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_error_and_responses_match_the_document(case: object, served_api: tuple[ServedApp, Seed]) -> None:
    served, _ = served_api
    case.call_and_validate(base_url=served.url, headers=AUTH, checks=CHECKS)  # type: ignore[attr-defined]


@pytest.mark.parametrize("saga", ["failed", "completed", "pending"])
def test_operations_on_real_sagas_match_the_document(served_api: tuple[ServedApp, Seed], saga: str) -> None:
    """Every operation on a saga that exists (random ids only reach the 404 answers)."""
    served, seed = served_api
    saga_id = getattr(seed, saga)[0]
    bodies = {"skip": {"step": "ship", "result": {"t": 1}}, "fork": {"from_step": "ship"}}
    statuses = set()
    for path, item in openapi_document(__version__)["paths"].items():
        if "{saga_id}" not in path:
            continue
        for method in item:
            action = path.rsplit("/", 1)[-1]
            kwargs = {"body": bodies.get(action, {"reason": "schemathesis"})} if method == "post" else {}
            case = schema[path][method.upper()].Case(path_parameters={"saga_id": saga_id}, **kwargs)
            response = case.call_and_validate(base_url=served.url, headers=AUTH, checks=CHECKS)
            statuses.add(response.status_code)
    assert 200 in statuses
