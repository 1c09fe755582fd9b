"""The dashboard's saga timeline folds each failed attempt's traceback under its error (real headless Chromium)."""

from __future__ import annotations

from typing import Any

from .conftest import Seed
from .test_dashboard_browser import page, served, shot

__all__ = ["page", "served"]  # the fixtures this module uses


def test_a_failed_attempt_shows_its_traceback_masked(page: Any, served: tuple[str, Seed]) -> None:
    from playwright.sync_api import expect

    base, seed = served
    page.goto(f"{base}/#/saga/{seed.failed[0]}")
    ship = page.locator("#timeline-attempts tr.attempt[data-step=ship]")
    expect(ship).to_have_attribute("data-outcome", "failed")
    details = ship.locator("details.traceback")
    expect(details).to_have_count(1)
    expect(details.locator("pre")).not_to_be_visible()  # folded until asked for
    details.locator("summary").click()
    tb = details.locator("pre")
    expect(tb).to_be_visible()
    expect(tb).to_contain_text("Traceback (most recent call last):")
    expect(tb).to_contain_text("in ship")
    expect(tb).to_contain_text("NonRetryableError: carrier API down: password=*** rejected")
    page.wait_for_timeout(1500)  # a refresh or two of the page: it stays open
    expect(tb).to_be_visible()
    # Attempts that did not fail have none.
    expect(page.locator("#timeline-attempts tr.attempt[data-outcome=completed] details.traceback")).to_have_count(0)
    assert "hunter2" not in page.content()
    assert page.problems == []
    shot(page, "traceback")
