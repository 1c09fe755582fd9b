"""Semantic locks in the dashboard, in a real headless Chromium: the Locks page and a saga's own locks.

A store is seeded with a saga holding ``order:1`` and two sagas queued for it,
as the machine and the store leave them (no worker runs them). The Locks page
lists the key with its holder and its queue in order; each saga's page says
what it holds or waits for; aborting the holder from the dashboard hands the
key to the first in line, live.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sagakit import SagaBuilder, SagaDefinition
from sagakit._store import Write
from sagakit.admin import Operations, create_app
from sagakit.machine import LocksGranted, decide, new_saga
from sagakit.stores.sqlite import SQLiteStore

from .conftest import TOKEN, ServedApp
from .test_dashboard_browser import OUT, open_page


def work(ctx: Any) -> None:
    return None


def definition() -> SagaDefinition:
    b = SagaBuilder("order_update", locks=lambda data: [f"order:{data['order_id']}"])
    b.step("reserve", work)
    b.step("charge", work)
    return b.build()


async def seed(path: Path) -> list[str]:
    """The holder and two waiters, in that order, as committed transitions and store acquisitions."""
    defn = definition()
    store = SQLiteStore(str(path))
    await store.open()
    ids = []
    t0 = time.time() - 90
    try:
        for i in range(3):
            sid = f"{i:02d}locked{'0' * 24}"
            d = new_saga(defn, sid, {"order_id": 1, "n": i}, t0 + i)
            st = d.state
            await store.commit([Write(st, 0, d.history, st.wake_at, insert=True)])
            answer = await store.acquire_locks(sid, ["order:1"], t0 + i)
            assert answer.outcome == ("granted" if i == 0 else "waiting")
            if i == 0:
                g = decide(defn, st, LocksGranted(("order:1",)), t0 + 0.5)
                g.state.revision = st.revision + 1
                await store.commit([Write(g.state, st.revision, g.history, g.state.wake_at)])
            ids.append(sid)
    finally:
        await store.close()
    return ids


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    path = tmp_path / "sagas.db"
    ids = asyncio.run(seed(path))
    ops = Operations.for_store(f"sqlite:///{path}", [definition()])
    with ServedApp(create_app(ops, token=TOKEN)) as app:
        yield app.url, ids


@pytest.fixture
def page(served: tuple[str, list[str]]) -> Iterator[Any]:
    with open_page() as pg:
        yield pg


def test_locks_page_and_saga_pages_show_held_and_awaited_locks(page: Any, served: tuple[str, list[str]]) -> None:
    from playwright.sync_api import expect

    base, (holder, first, second) = served
    page.goto(f"{base}/#/locks")
    expect(page.locator("#nav-locks")).to_have_class("active")
    row = page.locator("#locks-table tr.lock[data-key='order:1']")
    expect(row).to_have_count(1)
    expect(row.locator("td.holder a")).to_have_text(holder)
    expect(row.locator("li.waiter")).to_have_count(2)
    assert [w.get_attribute("data-saga") for w in row.locator("li.waiter").all()] == [first, second]
    page.screenshot(path=str(OUT / "locks-1-page.png"), full_page=True)

    # A waiting saga says what it waits for, who holds it and where it stands in line.
    page.goto(f"{base}/#/saga/{second}")
    awaited = page.locator("#saga-locks li.awaited[data-key='order:1']")
    expect(awaited).to_contain_text("waits for order:1, held by")
    expect(awaited).to_contain_text(holder)
    expect(awaited).to_contain_text("position 2 in line")

    # The holder says what it holds; aborting it hands the key to the first in line.
    page.goto(f"{base}/#/saga/{holder}")
    held = page.locator("#saga-locks li.held[data-key='order:1']")
    expect(held).to_contain_text("holds order:1")
    expect(held).to_contain_text("(2 waiting)")
    page.screenshot(path=str(OUT / "locks-2-holder.png"), full_page=True)
    page.click("#action-abort")
    page.fill("#dialog-token", TOKEN)
    page.fill("#dialog-reason", "unblock the order")
    page.click("#dialog-confirm")
    expect(page.locator("#saga-status")).to_have_attribute("data-status", "aborted")
    expect(page.locator("#no-saga-locks")).to_be_visible()

    page.goto(f"{base}/#/locks")
    row = page.locator("#locks-table tr.lock[data-key='order:1']")
    expect(row.locator("td.holder a")).to_have_text(first)
    expect(row.locator("li.waiter")).to_have_count(1)
    page.screenshot(path=str(OUT / "locks-3-handed-on.png"), full_page=True)
    assert page.problems == []
