"""The HTTP API's saga view has the items of a for-each step, masked, as its OpenAPI document says."""

from __future__ import annotations

from typing import Any

import jsonschema

from sagakit import NonRetryableError, SagaBuilder, SagaEngine, StepContext
from sagakit.admin import Operations, create_app

from .conftest import TOKEN, client_for


def charge(split: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    if split["amount"] > 100:
        raise NonRetryableError(f"declined: token={split['token']}")
    return {"charged": split["amount"], "token": split["token"]}


def _definition() -> Any:
    b = SagaBuilder("splits")
    b.for_each("charge", items=lambda data, results: data["splits"], action=charge, parallelism=1)
    return b.build()


async def test_the_saga_view_lists_items_masked_and_valid_against_the_openapi_document(store_url: str) -> None:
    definition = _definition()
    async with SagaEngine(store_url, poll_interval=0.05) as engine:
        engine.register(definition)
        sid = await engine.start(
            "splits", {"splits": [{"amount": 5, "token": "tok-secret-1"}, {"amount": 500, "token": "tok-secret-2"}]}
        )
        await engine.wait(sid, timeout=20)
    ops = Operations.for_store(store_url, [definition])
    async with ops, client_for(create_app(ops, token=TOKEN)) as client:
        r = await client.get(f"/api/sagas/{sid}")
        doc = (await client.get("/openapi.json")).json()
    assert r.status_code == 200
    body = r.json()
    items = body["steps"]["charge"]["items"]
    assert [(i["index"], i["key"], i["status"], i["attempts"]) for i in items] == [
        (0, "0", "completed", 1),
        (1, "1", "failed", 1),
    ]
    assert items[0]["item"] == {"amount": 5, "token": "***"}
    assert items[0]["result"] == {"charged": 5, "token": "***"}
    assert items[1]["error"] == "NonRetryableError: declined: token=***"
    assert "tok-secret" not in r.text
    schema = {**doc["components"]["schemas"]["Saga"], "components": doc["components"]}
    jsonschema.validate(body, schema)
    bad = {**body, "steps": {"charge": {**body["steps"]["charge"], "items": [{"index": 0}]}}}
    try:
        jsonschema.validate(bad, schema)
    except jsonschema.ValidationError:
        pass
    else:
        raise AssertionError("the document does not describe the items")
