"""Every ``python`` code block of the user docs runs, in order, one namespace per page (top-level ``await`` allowed).

A page's blocks build on each other like a reader's session: names defined in
one block are used by the next. They run in a temporary directory, so files
they create (SQLite stores) go nowhere else.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [
    "docs/cancellation.md",
    "docs/child-sagas.md",
    "docs/choreography.md",
    "docs/for-each.md",
    "docs/messaging.md",
    "docs/postgres.md",
    "docs/resource-limits.md",
    "docs/scheduling.md",
    "docs/state-migration.md",
    "docs/testing.md",
    "docs/application.md",
    "docs/locks.md",
]
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def blocks(page: str) -> list[tuple[int, str]]:
    """The python blocks of *page* with the line each starts on."""
    text = (ROOT / page).read_text()
    return [(text.count("\n", 0, m.start()) + 2, m.group(1)) for m in _BLOCK.finditer(text)]


@pytest.mark.parametrize("page", PAGES)
async def test_every_code_block_runs(page: str, tmp_path: Path) -> None:
    found = blocks(page)
    assert found, f"{page} has no python code blocks"
    namespace: dict[str, object] = {"asyncio": asyncio, "__name__": f"docs_{Path(page).stem}"}
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        for line, code in found:
            # Padding keeps tracebacks' line numbers those of the page.
            # dont_inherit: the page's annotations are evaluated as a reader's module would (pydantic
            # models there resolve their field types), not postponed by this module's __future__ import.
            compiled = compile(
                "\n" * (line - 1) + code,
                str(ROOT / page),
                "exec",
                flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT,
                dont_inherit=True,
            )
            result = eval(compiled, namespace)  # noqa: S307 - the project's own documentation
            if inspect.iscoroutine(result):
                await asyncio.wait_for(result, 60)
    finally:
        os.chdir(cwd)


async def test_the_operations_page_search_example_runs(tmp_path: Path) -> None:
    """docs/operations.md's other blocks are run by the tests of what they show (the FastAPI recipe in
    tests/admin/test_dashboard_pages.py, metrics and tracing in tests/test_docs_observability.py)."""
    [(line, code)] = [(n, c) for n, c in blocks("docs/operations.md") if "Operations.for_store" in c]
    namespace: dict[str, object] = {"__name__": "docs_operations"}
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        compiled = compile(
            "\n" * (line - 1) + code,
            str(ROOT / "docs/operations.md"),
            "exec",
            flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT,
            dont_inherit=True,
        )
        result = eval(compiled, namespace)  # noqa: S307 - the project's own documentation
        if inspect.iscoroutine(result):
            await asyncio.wait_for(result, 60)
    finally:
        os.chdir(cwd)
