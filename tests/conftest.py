"""Shared fixtures.

``SAGAKIT_TEST_DB`` selects the database of the engine tests for the whole
suite: ``sqlite`` (default; each test gets its own file) or ``postgres``
(each test gets its own schema in the local server's ``test`` database).

The machine's PostgreSQL, Redis, RabbitMQ and NATS serve more than this
suite: a test that needs a server to go away stops a private one or cuts a
proxy it owns (``tests/proxy.py``, ``tests/transports/outages.py``), and
``shared_services_untouched`` fails the run when one of the machine's
servers was stopped or restarted all the same.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Iterator

import pytest
from hypothesis import settings

# Property tests check rules, never speed: no per-example deadline, which a loaded machine
# (two cores shared with brokers and databases) would turn into failures that mean nothing.
settings.register_profile("sagakit", deadline=None)
settings.load_profile("sagakit")

PG_DSN = os.environ.get("SAGAKIT_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
SHARED_SERVICES = {5432: "PostgreSQL", 6379: "Redis", 5672: "RabbitMQ", 4222: "NATS"}


def pg_available() -> str | None:
    """None when the PostgreSQL server answers, else the reason it does not."""
    try:
        import asyncpg  # noqa: F401
    except ImportError:
        return "asyncpg is not installed (pip install 'sagakit[postgres]')"
    import socket

    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=2):
            return None
    except OSError as e:
        return f"PostgreSQL at 127.0.0.1:5432 is not reachable: {e}"


def require_service(reason: str | None) -> None:
    """Skip locally, fail under CI, when a service a test needs is missing."""
    if reason is None:
        return
    if IN_CI:
        pytest.fail(f"service missing under CI: {reason}")
    pytest.skip(reason)


@pytest.fixture
def store_url(tmp_path: os.PathLike[str]) -> Iterator[str]:
    """A fresh store URL for one test, on the database SAGAKIT_TEST_DB selects."""
    kind = os.environ.get("SAGAKIT_TEST_DB", "sqlite")
    if kind == "sqlite":
        yield f"sqlite:///{os.fspath(tmp_path)}/sagas.db"
        return
    if kind != "postgres":
        raise pytest.UsageError(f"SAGAKIT_TEST_DB must be sqlite or postgres, got {kind!r}")
    yield from _pg_schema_url()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL store URL on a schema of its own (dropped after the test), whatever SAGAKIT_TEST_DB says."""
    yield from _pg_schema_url()


def _pg_schema_url() -> Iterator[str]:
    require_service(pg_available())
    schema = f"t_{uuid.uuid4().hex[:12]}"
    yield f"{PG_DSN}?schema={schema}"
    import asyncio

    import asyncpg

    async def drop() -> None:
        conn = await asyncpg.connect(PG_DSN)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()

    asyncio.run(drop())


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``store_url`` every test that uses a store of SAGAKIT_TEST_DB, so ``-m store_url`` selects them all.

    CI runs the suite once on SQLite and then these tests again on
    PostgreSQL; the marker follows the fixture, through other fixtures too,
    so no list of files goes stale.
    """
    for item in items:
        if "store_url" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.store_url)


def listening_sockets(ports: Iterable[int]) -> dict[int, frozenset[int]]:
    """The inodes of the TCP sockets that listen on *ports*, per port that has any (from /proc/net/tcp{,6})."""
    wanted = set(ports)
    found: dict[int, set[int]] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            # sl local_address rem_address st ... inode: "0A" is LISTEN, the port is the hex after the colon
            cols = row.split()
            port = int(cols[1].rsplit(":", 1)[1], 16)
            if cols[3] == "0A" and port in wanted:
                found.setdefault(port, set()).add(int(cols[9]))
    return {port: frozenset(inodes) for port, inodes in found.items()}


def socket_owners(inodes: Iterable[int]) -> dict[int, int]:
    """The pid that holds each socket inode, as far as /proc lets this user see."""
    links = {f"socket:[{inode}]": inode for inode in inodes}
    owners: dict[int, int] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                inode = links.get(os.readlink(f"/proc/{pid}/fd/{fd}"))
            except OSError:
                continue
            if inode is not None:
                owners[inode] = int(pid)
    return owners


def describe_listeners(listeners: dict[int, frozenset[int]]) -> dict[int, str]:
    """Who listens on each port: its pids, or its socket inodes when the pids are not visible."""
    owners = socket_owners(inode for inodes in listeners.values() for inode in inodes)
    described: dict[int, str] = {}
    for port, inodes in listeners.items():
        pids = sorted({owners[i] for i in inodes if i in owners})
        who = ("pid", pids) if pids else ("sockets", sorted(inodes))
        described[port] = f"{who[0]} {', '.join(map(str, who[1]))}"
    return described


@pytest.fixture(scope="session", autouse=True)
def shared_services_untouched() -> Iterator[None]:
    """Fail the run if one of the machine's servers was stopped or restarted while it ran.

    Compares the listening sockets on the services' ports (see SHARED_SERVICES)
    at the start and the end of the session: a stopped server leaves its port
    without them, a restarted one listens on new sockets, even when its
    process stays (``rabbitmqctl stop_app``/``start_app``). A service not
    running at the start is ignored. Another user restarting a server
    meanwhile fails the run as well; the message names the pids.
    """
    before = listening_sockets(SHARED_SERVICES)
    was = describe_listeners(before)
    yield
    after = listening_sockets(before)
    gone = [port for port, inodes in before.items() if not inodes <= after.get(port, frozenset())]
    if gone:
        now = describe_listeners(after)
        changed = [
            f"{SHARED_SERVICES[port]} on port {port}: {was[port]} at the start, "
            f"{now.get(port, 'nothing listening')} at the end"
            for port in gone
        ]
        pytest.fail(
            "the machine's services were stopped or restarted during the run (tests must stop only servers "
            "or proxies of their own):\n  " + "\n  ".join(changed),
            pytrace=False,
        )


@pytest.fixture(scope="session")
def tansu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """The address of a Tansu (Kafka-protocol broker) that this session started; stopped at its end."""
    from tests.transports.kit import free_port
    from tests.transports.tansu import Tansu, tansu_missing

    require_service(tansu_missing())
    broker = Tansu(free_port(), tmp_path_factory.mktemp("tansu") / "tansu.log").start()
    try:
        yield broker.address
    finally:
        broker.stop()
