"""The dashboard's schedules page in a real headless Chromium: recurring starts and sagas waiting to begin.

Open the page, read the recurring schedule (its data never shown) and the
scheduled sagas soonest first, follow one to its page ("begins at"), abort it
there, and stop the recurring schedule with the token. Screenshots go to
``test-output/dashboard/``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sagakit.admin import Operations, create_app

from .conftest import TOKEN, ServedApp
from .test_dashboard_browser import open_page, shot
from .test_schedules import _fill, reminder


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, str, str]]:
    url = f"sqlite:///{tmp_path}/sagas.db"
    later, soon = asyncio.run(_fill(url))
    ops = Operations.for_store(url, [reminder])  # type: ignore[list-item]
    with ServedApp(create_app(ops, token=TOKEN)) as app:
        yield app.url, later, soon


@pytest.fixture
def page(served: tuple[str, str, str]) -> Iterator[Any]:
    with open_page() as pg:
        yield pg


def test_schedules_page_shows_recurring_and_waiting_sagas_and_stops_a_schedule(
    page: Any, served: tuple[str, str, str]
) -> None:
    from playwright.sync_api import expect

    base, later, soon = served
    page.goto(f"{base}/")
    page.click("#nav-schedules")
    row = page.locator("#schedules-table tr.schedule")
    expect(row).to_have_count(1)
    expect(row).to_have_attribute("data-key", "eu-nightly")
    expect(row).to_contain_text("30 2 * * *")
    expect(row.locator("time.next")).to_contain_text("in ")
    expect(page.locator("#view")).not_to_contain_text("hunter2")
    waiting = page.locator("#scheduled-table tr.scheduled-saga")
    expect(waiting).to_have_count(2)
    assert [waiting.nth(i).get_attribute("data-id") for i in range(2)] == [soon, later]
    expect(waiting.nth(0).locator("time.begins")).to_have_text("in 30 min")
    shot(page, "schedules")

    # A scheduled saga's page says when it begins; abort cancels it before it does.
    waiting.nth(0).locator("a").click()
    expect(page.locator("#saga-status")).to_have_attribute("data-status", "pending")
    expect(page.locator("dl.fields")).to_contain_text("begins at")
    page.click("#action-abort")
    page.fill("#dialog-token", TOKEN)  # kept in the tab's session storage: the page below uses it too
    page.fill("#dialog-reason", "customer paid")
    page.click("#dialog-confirm")
    expect(page.locator("#saga-status")).to_have_attribute("data-status", "aborted")

    # Stopping the recurring schedule (confirmed in the browser's dialog) empties its table.
    page.click("#nav-schedules")
    expect(page.locator("#scheduled-table tr.scheduled-saga")).to_have_count(1)
    page.once("dialog", lambda d: d.accept())
    page.click("[data-unschedule=eu-nightly]")
    expect(page.locator("#no-schedules")).to_be_visible()
    expect(page.locator("#flash")).to_contain_text("schedule eu-nightly stopped")
    assert page.problems == []
