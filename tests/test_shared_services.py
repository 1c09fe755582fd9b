"""The guard of the machine's services (``shared_services_untouched`` in tests/conftest.py).

It is tried on a listener of the test's own, never on the machine's servers.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import describe_listeners, listening_sockets

ROOT = Path(__file__).resolve().parent.parent

# A stand-in for a service: a process of its own that listens until it is killed.
FAKE_SERVICE = (
    "import socket, time\n"
    "s = socket.create_server(('127.0.0.1', 0))\n"
    "print(s.getsockname()[1], flush=True)\n"
    "time.sleep(120)\n"
)

INNER_CONFTEST = """
import os

import tests.conftest as shared
from tests.conftest import shared_services_untouched  # noqa: F401 -- the fixture under test

shared.SHARED_SERVICES.clear()
shared.SHARED_SERVICES[int(os.environ["FAKE_PORT"])] = "Fake"
"""

INNER_TEST = """
import os
import signal
import socket
import time


def test_maybe_stop_the_service():
    if not os.environ["STOP"]:
        return
    os.kill(int(os.environ["FAKE_PID"]), signal.SIGKILL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", int(os.environ["FAKE_PORT"])), timeout=1).close()
        except OSError:
            return
        time.sleep(0.05)
"""


def test_listening_sockets_see_a_stop_and_a_restart() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    try:
        first = listening_sockets([port])
        assert set(first) == {port}
        assert describe_listeners(first) == {port: f"pid {os.getpid()}"}
    finally:
        server.close()
    assert listening_sockets([port]) == {}
    with socket.create_server(("127.0.0.1", port)):
        again = listening_sockets([port])
    assert set(again) == {port}
    assert not first[port] <= again[port]  # the same port, but another socket: a restart


@pytest.mark.parametrize("stop", [False, True], ids=["left-alone", "stopped"])
def test_a_run_that_stops_a_service_fails(tmp_path: Path, stop: bool) -> None:
    fake = subprocess.Popen([sys.executable, "-c", FAKE_SERVICE], stdout=subprocess.PIPE)
    try:
        assert fake.stdout is not None
        port = int(fake.stdout.readline())
        (tmp_path / "pytest.ini").write_text("[pytest]\n")
        (tmp_path / "conftest.py").write_text(INNER_CONFTEST)
        (tmp_path / "test_inner.py").write_text(INNER_TEST)
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "FAKE_PORT": str(port),
            "FAKE_PID": str(fake.pid),
            "STOP": "1" if stop else "",
            "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",  # the inner run needs none of them: faster
        }
        run = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        fake.kill()
        fake.wait(10)
        if fake.stdout is not None:
            fake.stdout.close()
    if not stop:
        assert run.returncode == 0, run.stdout + run.stderr
        return
    assert run.returncode != 0, run.stdout
    assert f"Fake on port {port}: pid {fake.pid} at the start, nothing listening at the end" in run.stdout
