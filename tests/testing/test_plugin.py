"""The pytest plugin, used as a user's project uses it: a separate pytest run on a sample test file."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from importlib.metadata import entry_points
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SAMPLE = """
import asyncio

import pytest

from sagakit import RetryPolicy, SagaBuilder, SagaStatus
from sagakit.testing import run_to_end

attempts = []


async def flaky(ctx):
    attempts.append(ctx.attempt)
    if ctx.attempt == 1:
        raise RuntimeError("first attempt fails")
    return {"ok": True}


def definition():
    b = SagaBuilder("sample")
    b.step("flaky", flaky, retry=RetryPolicy(max_attempts=2, initial_delay=86400, max_delay=86400))
    return b.build()


async def test_a_day_of_back_off_in_no_time(saga_engine, saga_clock):
    saga_engine.register(definition())
    started = saga_clock.time()
    snap = await run_to_end(saga_engine, "sample", {})
    assert snap.status is SagaStatus.COMPLETED
    assert saga_clock.time() - started >= 86400 * 0.9


async def test_advance(saga_clock):
    fired = []
    asyncio.get_running_loop().call_later(3600, fired.append, 1)
    await saga_clock.advance(3600)
    assert fired == [1]


async def test_store_kind(saga_env, saga_store_kind):
    assert saga_env.kind == saga_store_kind


@pytest.mark.saga_store("sqlite")
async def test_marker(saga_engine):
    assert type(saga_engine.store).__name__ == "SQLiteStore"
"""


def run_pytest(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    # Installed with this project's metadata, pytest finds the plugin by its entry point; an
    # install made before it existed needs it named (naming it twice would be an error).
    installed = any(ep.value == "sagakit.testing.plugin" for ep in entry_points(group="pytest11"))
    load = [] if installed else ["-p", "sagakit.testing.plugin"]
    return subprocess.run(
        [sys.executable, "-m", "pytest", *load, "-q", "-p", "no:cacheprovider", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
@pytest.mark.parametrize("store", ["memory", "sqlite"])
def test_the_plugin_in_a_users_test_run(tmp_path: Path, store: str) -> None:
    done = run_pytest(tmp_path, f"--saga-store={store}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 passed" in done.stdout


def test_the_plugin_is_registered_as_a_pytest11_entry_point() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["pytest11"] == {"sagakit": "sagakit.testing.plugin"}
