"""The dashboard shows the tree of child sagas: a parent lists its children, a child links its parent (Chromium)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sagakit import SagaEngine
from sagakit.admin import Operations, create_app
from tests.child_sagas import order, shipping

from .conftest import TOKEN, ServedApp
from .test_dashboard_browser import page, shot

__all__ = ["page"]  # the fixture this module uses (with its own ``served``)


async def _run_orders(url: str) -> dict[str, str]:
    async with SagaEngine(url) as engine:
        engine.register(order, shipping)
        done = await engine.start("order", {"order_id": "o-1"})
        undone = await engine.start("order", {"order_id": "o-2", "fail_charge": True})
        for sid in (done, undone):
            await engine.wait(sid, timeout=30)
    return {"done": done, "undone": undone}


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    url = f"sqlite:///{tmp_path}/sagas.db"
    ids = asyncio.run(_run_orders(url))
    ops = Operations.for_store(url, [order, shipping])
    with ServedApp(create_app(ops, token=TOKEN)) as app:
        yield app.url, ids


def test_a_parent_lists_its_child_and_the_child_links_back(page: Any, served: tuple[str, dict[str, str]]) -> None:
    from playwright.sync_api import expect

    base, ids = served
    page.goto(f"{base}/#/saga/{ids['done']}")
    expect(page.locator("#saga-status")).to_have_attribute("data-status", "completed")
    rows = page.locator("#child-table tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.nth(0).locator("td").nth(0)).to_have_text("ship")
    expect(rows.nth(0).locator("td").nth(2)).to_have_text("shipping")
    expect(rows.nth(0).locator("[data-status]")).to_have_attribute("data-status", "completed")
    child_id = rows.nth(0).get_attribute("data-child")
    assert child_id
    shot(page, "child-sagas-parent")

    # The child's page links its parent, with the step that started it.
    rows.nth(0).locator("a.child-link").click()
    expect(page.locator("#saga-id")).to_have_text(child_id)
    expect(page.locator("#saga-status")).to_have_attribute("data-status", "completed")
    parent = page.locator("#parent-saga")
    expect(parent).to_contain_text(ids["done"])
    expect(parent).to_contain_text("order (step ship)")
    expect(page.locator("#child-table")).to_have_count(0)  # a child with no children of its own
    shot(page, "child-sagas-child")
    parent.locator("a").click()
    expect(page.locator("#saga-id")).to_have_text(ids["done"])

    # A parent rolled back after its child completed: the child was reopened and compensated.
    page.goto(f"{base}/#/saga/{ids['undone']}")
    expect(page.locator("#saga-status")).to_have_attribute("data-status", "compensated")
    expect(page.locator("#child-table tbody tr [data-status]")).to_have_attribute("data-status", "compensated")
    assert page.problems == []
