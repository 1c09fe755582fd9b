"""The store contract on PostgreSQL (a fresh schema per test), and what only PostgreSQL has."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from sagakit import SagaStatus
from sagakit._errors import NotASagaStore, StoreError
from sagakit._store import Store, store_from_url
from sagakit.stores._sql import SCHEMA_VERSION
from sagakit.stores.postgres import PostgresStore, safe_url

from .conftest import IN_CI
from .contract import (
    V2_HISTORY_EXPECTED,
    V2_HISTORY_INDEX,
    V2_HISTORY_ROWS,
    V2_HISTORY_TABLE,
    StoreContract,
    StoreFactory,
    put,
    saga,
    update,
)

try:
    import asyncpg
except ImportError:  # pragma: no cover - the postgres extra is part of the dev install
    if IN_CI:
        raise
    pytest.skip("asyncpg is not installed: pip install 'sagakit[postgres]'", allow_module_level=True)

pytestmark = pytest.mark.postgres


class TestPostgresStore(StoreContract):
    @pytest.fixture
    async def make_store(self, pg_dsn: str, pg_schema: str) -> AsyncIterator[StoreFactory]:
        made: list[PostgresStore] = []

        def make() -> Store:
            # The contract injects time: leases on the caller's clock here (the database's
            # clock is tested below, in TestLeasesOnTheDatabaseClock).
            s = PostgresStore(pg_dsn, schema=pg_schema, pool_size=4, lease_clock="caller")
            made.append(s)
            return s

        yield make
        for s in made:
            await s.close()

    async def schema_version(self, store: Store) -> int | None:
        assert isinstance(store, PostgresStore)
        conn = await asyncpg.connect(store._dsn)
        try:
            value = await conn.fetchval(
                f'SELECT value FROM "{store.schema}".sagakit_meta WHERE key=$1', "schema_version"
            )
        finally:
            await conn.close()
        return int(value)

    async def test_version_2_history_is_packed_on_open(self, make_store: StoreFactory) -> None:
        s = make_store()
        await s.open()
        await put(s, saga("old"))
        assert isinstance(s, PostgresStore)
        conn = await asyncpg.connect(s._dsn)
        try:  # the schema as version 2 left it
            await conn.execute(f'SET search_path TO "{s.schema}"')
            await conn.execute("DROP TABLE sagakit_history")
            await conn.execute(V2_HISTORY_TABLE.format(bigint="BIGINT", real="DOUBLE PRECISION"))
            await conn.execute(V2_HISTORY_INDEX)
            insert = "INSERT INTO sagakit_history VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
            await conn.executemany(insert, V2_HISTORY_ROWS)
            await conn.execute("UPDATE sagakit_meta SET value='2' WHERE key='schema_version'")
        finally:
            await conn.close()
        again = make_store()
        await again.open()
        assert await again.history("old") == V2_HISTORY_EXPECTED
        assert [h.message for h in await again.history("other")] == ["another saga"]
        assert await self.schema_version(again) == SCHEMA_VERSION

    async def test_claim_sagas_reports_a_row_being_written_busy_instead_of_waiting(self, store: Store) -> None:
        """A batched claim never waits for a row lock while holding others: no deadlock with a commit."""
        assert isinstance(store, PostgresStore)
        for sid in ("a", "b"):
            await put(store, saga(sid), wake_at=1000.0)
        conn = await asyncpg.connect(store._dsn)
        try:
            await conn.execute(f'SET search_path TO "{store.schema}"')
            async with conn.transaction():
                await conn.execute("SELECT 1 FROM sagakit_sagas WHERE id = 'a' FOR UPDATE")  # a commit in progress
                got = await asyncio.wait_for(store.claim_sagas(["a", "b"], "w1", 10.0, 40.0), 10)
                assert got["a"] is None  # busy, like a live lease: the caller tries again
                assert got["b"] is not None and got["b"].revision == 2
            again = await store.claim_sagas(["a"], "w1", 10.0, 40.0)
            assert again["a"] is not None and again["a"].revision == 2
        finally:
            await conn.close()

    async def test_a_lease_renewal_holds_one_row_at_a_time(self, store: Store) -> None:
        """Renewing several leases while a commit holds one of them waits for that row alone."""
        assert isinstance(store, PostgresStore)
        for sid in ("a", "b"):
            await put(store, saga(sid), wake_at=1000.0)
        assert len(await store.claim("w1", 10.0, 40.0, 5)) == 0  # not due yet: take them by id
        assert set(await store.claim_sagas(["a", "b"], "w1", 10.0, 40.0)) == {"a", "b"}
        conn = await asyncpg.connect(store._dsn)
        try:
            await conn.execute(f'SET search_path TO "{store.schema}"')
            tx = conn.transaction()
            await tx.start()
            await conn.execute("SELECT 1 FROM sagakit_sagas WHERE id = 'b' FOR UPDATE")
            renewal = asyncio.ensure_future(store.renew("w1", ["a", "b"], 60.0, now=20.0))
            # While the renewal waits for b, a is already renewed and committed: a holds no lock.
            deadline = asyncio.get_running_loop().time() + 10
            while (await conn.fetchval("SELECT lease_expires FROM sagakit_sagas WHERE id = 'a'")) != 60.0:
                assert asyncio.get_running_loop().time() < deadline, "a was not renewed on its own"
                await asyncio.sleep(0.02)
            other = await asyncpg.connect(store._dsn)
            try:
                await other.execute(f'SET search_path TO "{store.schema}"')
                # Another transaction can write a at once (it would wait here if the renewal held a).
                await asyncio.wait_for(other.execute("UPDATE sagakit_sagas SET seq = seq WHERE id = 'a'"), 5)
            finally:
                await other.close()
            assert not renewal.done()
            await tx.rollback()
            assert await asyncio.wait_for(renewal, 10) == set()
        finally:
            await conn.close()

    # ------------------------------------------------------------ URLs and errors

    def test_from_url(self) -> None:
        s = store_from_url("postgresql://bob:s3cret@db.example:6543/app?schema=sagas&pool_size=3")
        assert isinstance(s, PostgresStore)
        assert (s.schema, s.pool_size) == ("sagas", 3)
        assert "s3cret" not in s.url
        assert "s3cret" not in repr(s)
        assert s.url == "postgresql://bob@db.example:6543/app?schema=sagas"
        assert s._dsn == "postgresql://bob:s3cret@db.example:6543/app"
        s = store_from_url("postgres://bob@localhost/app?sslmode=disable")
        assert isinstance(s, PostgresStore)
        assert (s.schema, s.pool_size) == (None, 8)
        assert s._dsn == "postgresql://bob@localhost/app?sslmode=disable"  # driver options pass through
        assert isinstance(store_from_url("postgresql+asyncpg://bob@localhost/app"), PostgresStore)
        with pytest.raises(StoreError, match="schema name"):
            PostgresStore.from_url("postgresql://bob@localhost/app?schema=x;drop")
        with pytest.raises(StoreError, match="pool_size"):
            PostgresStore.from_url("postgresql://bob@localhost/app?pool_size=many")
        assert safe_url("postgresql://u:pw@[::1]:5/d") == "postgresql://u@[::1]:5/d"
        long = PostgresStore("postgresql://bob@localhost/app", schema="s" * 63)
        assert len(long._channel) <= 63  # a NOTIFY channel is an identifier: 63 bytes at most
        assert long._channel != PostgresStore("postgresql://bob@localhost/app", schema="s" * 62)._channel

    async def test_unreachable_server_is_a_store_error_without_the_password(self) -> None:
        s = PostgresStore("postgresql://bob:s3cret@127.0.0.1:1/app", connect_timeout=2)
        with pytest.raises(StoreError) as info:
            await s.open()
        message = str(info.value)
        assert "postgresql://bob@127.0.0.1:1/app" in message
        assert "s3cret" not in message
        assert isinstance(info.value.__cause__, OSError | asyncpg.PostgresError)

    async def test_unknown_database_is_a_store_error(self, pg_dsn: str) -> None:
        s = PostgresStore(pg_dsn.rsplit("/", 1)[0] + "/no_such_db_sagakit", connect_timeout=5)
        with pytest.raises(StoreError, match="no_such_db_sagakit"):
            await s.open()

    async def test_use_before_open_is_a_store_error(self, make_store: StoreFactory) -> None:
        with pytest.raises(StoreError, match="not open"):
            await make_store().get("a")

    async def test_connection_lost_mid_commit_is_a_store_error_then_the_pool_recovers(
        self, store: Store, pg_dsn: str, pg_schema: str
    ) -> None:
        st = saga("a")
        await put(store, st)
        admin = await asyncpg.connect(pg_dsn)
        try:
            # Hold the saga's row so that the commit waits inside its transaction ...
            tx = admin.transaction()
            await tx.start()
            await admin.execute(f"SELECT 1 FROM \"{pg_schema}\".sagakit_sagas WHERE id='a' FOR UPDATE")
            commit = asyncio.create_task(store.commit([update(st)]))
            pid = None
            for _ in range(200):
                await admin.execute("SELECT pg_stat_clear_snapshot()")  # fresh view inside the tx
                # Only the backend this lock holds up: the server is shared, another backend is not ours to end.
                pid = await admin.fetchval(
                    "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND query LIKE '%unnest%' AND pg_backend_pid() = ANY(pg_blocking_pids(pid))"
                )
                if pid is not None:
                    break
                await asyncio.sleep(0.02)
            assert pid is not None, "the commit never waited on the row lock"
            # ... and drop its connection from the server side.
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
            with pytest.raises(StoreError) as info:
                await commit
            assert store.url in str(info.value)
            assert isinstance(info.value.__cause__, OSError | asyncpg.PostgresError | asyncpg.InterfaceError)
            await tx.rollback()
        finally:
            await admin.close()
        # Nothing of the failed commit was written; the pool replaces the lost connection.
        got = await store.get("a")
        assert got == st
        assert await store.commit([update(st)]) == ["a"]

    async def test_server_errors_are_store_errors(self, store: Store, pg_dsn: str, pg_schema: str) -> None:
        conn = await asyncpg.connect(pg_dsn)
        try:
            await conn.execute(f'DROP SCHEMA "{pg_schema}" CASCADE')
        finally:
            await conn.close()
        with pytest.raises(StoreError, match="sagakit_sagas") as info:
            await store.get("a")
        assert isinstance(info.value.__cause__, asyncpg.PostgresError)

    # ------------------------------------------------------------ schema

    async def test_concurrent_opens_migrate_once(self, make_store: StoreFactory) -> None:
        stores = [make_store() for _ in range(5)]
        await asyncio.gather(*(s.open() for s in stores))
        assert {await self.schema_version(s) for s in stores} == {SCHEMA_VERSION}
        one = stores[0]
        assert isinstance(one, PostgresStore)
        pool = one._pool
        await one.close()
        await asyncio.gather(one.open(), one.open())  # one object opened twice at once: one pool
        assert one._pool is not None
        assert one._pool is not pool

    async def test_foreign_sagakit_sagas_table_is_refused_and_left_alone(self, pg_dsn: str, pg_schema: str) -> None:
        conn = await asyncpg.connect(pg_dsn)
        try:
            await conn.execute(f'CREATE SCHEMA "{pg_schema}"')
            await conn.execute(f'CREATE TABLE "{pg_schema}".sagakit_sagas (x INTEGER)')
            await conn.execute(f'INSERT INTO "{pg_schema}".sagakit_sagas VALUES (1)')
            s = PostgresStore(pg_dsn, schema=pg_schema)
            with pytest.raises(NotASagaStore, match=pg_schema):
                await s.open()
            tables = await conn.fetch(
                "SELECT table_name FROM information_schema.tables WHERE table_schema=$1", pg_schema
            )
            assert [t[0] for t in tables] == ["sagakit_sagas"]
            assert await conn.fetchval(f'SELECT x FROM "{pg_schema}".sagakit_sagas') == 1
        finally:
            await conn.close()

    async def test_newer_schema_version_is_refused(self, make_store: StoreFactory, pg_dsn: str, pg_schema: str) -> None:
        s = make_store()
        await s.open()
        await s.close()
        conn = await asyncpg.connect(pg_dsn)
        try:
            await conn.execute(
                f"UPDATE \"{pg_schema}\".sagakit_meta SET value=$1 WHERE key='schema_version'",
                str(SCHEMA_VERSION + 1),
            )
        finally:
            await conn.close()
        with pytest.raises(StoreError, match="newer"):
            await make_store().open()

    # ------------------------------------------------------------ hot path

    async def test_finding_due_work_reads_the_partial_wake_index(self, store: Store) -> None:
        assert isinstance(store, PostgresStore)
        finished = []
        for i in range(3000):
            st = saga(f"done{i:04d}", status=SagaStatus.COMPLETED)
            finished.append(st)
        from sagakit._store import Write

        await store.commit([Write(st, 0, [], None, insert=True) for st in finished])
        for i in range(5):
            await put(store, saga(f"due{i}"), wake_at=float(i))
        async with store._pool.acquire() as conn:
            await conn.execute("ANALYZE sagakit_sagas")
            kinds = ["saga:1"]
            custom = await conn.fetch(f"EXPLAIN {store._sql.claim}", "w1", 100.0, 50.0, 10, 50.0, kinds)
            # A statement that the pool's connections reuse may be given the generic plan,
            # made without knowing the limit or the time: it must not scan the table either.
            await conn.execute("SET plan_cache_mode = force_generic_plan")
            await conn.execute(f"PREPARE generic_claim AS {store._sql.claim}")
            try:
                generic = await conn.fetch("EXPLAIN EXECUTE generic_claim('w1', 100.0, 50.0, 10, 50.0, '{saga:1}')")
            finally:
                await conn.execute("DEALLOCATE generic_claim")
                await conn.execute("RESET plan_cache_mode")
        for rows in (custom, generic):
            plan = "\n".join(r[0] for r in rows)
            # The subquery that picks due sagas reads the partial index on wake_at (finished
            # sagas have no wake time and are not in it), the claimed rows are fetched by
            # primary key, and nothing scans the table.
            assert "sagakit_sagas_due" in plan, plan
            assert "sagakit_sagas_pkey" in plan, plan
            assert "Seq Scan" not in plan, plan
            assert "LockRows" in plan, plan  # FOR UPDATE SKIP LOCKED

    async def test_statements_are_prepared_once_and_reused(self, make_store: StoreFactory) -> None:
        s = make_store()
        assert isinstance(s, PostgresStore)
        s.pool_size = 1  # one connection, so that its prepared statements are all of them
        await s.open()
        st = saga("a")
        await put(s, st, wake_at=1.0)

        async def round_trip(n: int) -> None:
            nonlocal st
            (claimed,) = await s.claim("w1", 100.0 * n, 100.0 * n + 50, 5)
            w = update(claimed, owner=None, wake_at=100.0 * n + 60)
            assert await s.commit([w]) == ["a"]
            st = w.state
            await s.get("a")
            await s.history("a")

        async def prepared() -> int:
            async with s._pool.acquire() as conn:
                return int(await conn.fetchval("SELECT count(*) FROM pg_prepared_statements"))

        for n in range(1, 4):
            await round_trip(n)
        before = await prepared()
        for n in range(4, 30):
            await round_trip(n)
        assert await prepared() == before

    # ------------------------------------------------------------ LISTEN / NOTIFY

    async def test_wait_for_work_wakes_on_a_commit_that_makes_work_due(self, make_store: StoreFactory) -> None:
        idle, busy = make_store(), make_store()
        assert isinstance(idle, PostgresStore)
        await idle.open()
        await busy.open()
        assert await idle.wait_for_work(0.01) is True  # starting to listen: look once
        assert await idle.wait_for_work(0.05) is False  # nothing happened
        waiter = asyncio.create_task(idle.wait_for_work(10.0))
        await asyncio.sleep(0.05)
        assert not waiter.done()
        # Due far in the future: no notification.
        await put(busy, saga("later"), wake_at=10_000.0)
        await asyncio.sleep(0.1)
        assert not waiter.done()
        await put(busy, saga("now", created_at=100.0), wake_at=100.0)
        assert await asyncio.wait_for(waiter, 5.0) is True
        # A release notifies too.
        (claimed,) = await busy.claim("w1", 200.0, 260.0, 5)
        assert claimed.id == "now"
        assert await idle.wait_for_work(0.05) is False
        waiter = asyncio.create_task(idle.wait_for_work(10.0))
        await asyncio.sleep(0.05)
        await busy.release("w1", [("now", 201.0)])
        assert await asyncio.wait_for(waiter, 5.0) is True

    async def test_notifications_stay_within_their_schema(self, make_store: StoreFactory, pg_dsn: str) -> None:
        idle = make_store()
        assert isinstance(idle, PostgresStore)
        await idle.open()
        other = PostgresStore(pg_dsn, schema=f"{idle.schema}_other", pool_size=1)
        await other.open()
        try:
            assert await idle.wait_for_work(0.01) is True
            await put(other, saga("x", created_at=5.0), wake_at=5.0)
            assert await idle.wait_for_work(0.2) is False
        finally:
            await other.close()
            conn = await asyncpg.connect(pg_dsn)
            await conn.execute(f'DROP SCHEMA "{idle.schema}_other" CASCADE')
            await conn.close()

    async def test_wait_for_work_survives_a_lost_listening_connection(
        self, make_store: StoreFactory, pg_dsn: str
    ) -> None:
        idle, busy = make_store(), make_store()
        assert isinstance(idle, PostgresStore)
        await idle.open()
        await busy.open()
        assert await idle.wait_for_work(0.01) is True
        waiter = asyncio.create_task(idle.wait_for_work(10.0))
        await asyncio.sleep(0.05)
        admin = await asyncpg.connect(pg_dsn)
        try:
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", idle._listener.get_server_pid())
        finally:
            await admin.close()
        # Losing the connection wakes the waiter: whatever it would have heard, it missed.
        assert await asyncio.wait_for(waiter, 5.0) is True
        assert await idle.wait_for_work(0.01) is True  # listening again: look once
        waiter = asyncio.create_task(idle.wait_for_work(10.0))
        await asyncio.sleep(0.05)
        await put(busy, saga("now", created_at=100.0), wake_at=100.0)
        assert await asyncio.wait_for(waiter, 5.0) is True


class TestLeasesOnTheDatabaseClock:
    """Workers whose clocks disagree with the server's cannot take a live lease or hold one too long."""

    @pytest.fixture
    async def stores(self, pg_dsn: str, pg_schema: str) -> AsyncIterator[dict[str, PostgresStore]]:
        made = {
            clock: PostgresStore(pg_dsn, schema=pg_schema, pool_size=2, lease_clock=clock)
            for clock in ("database", "caller")
        }
        for s in made.values():
            await s.open()
        yield made
        for s in made.values():
            await s.close()

    @pytest.mark.parametrize("clock", ["database", "caller"])
    async def test_a_fast_clock_cannot_take_a_live_lease(self, stores: dict[str, PostgresStore], clock: str) -> None:
        import time

        store = stores[clock]
        await put(store, saga("a"), wake_at=1.0)
        now = time.time()
        assert [s.id for s in await store.claim("w1", now, now + 10.0, 5)] == ["a"]
        fast = now + 30.0  # this worker's clock runs 30 s ahead
        taken = [s.id for s in await store.claim("w2", fast, fast + 10.0, 5)]
        # On the database's clock the lease has 10 s to go; on the caller's it has "expired".
        assert taken == ([] if clock == "database" else ["a"])

    @pytest.mark.parametrize("clock", ["database", "caller"])
    async def test_a_slow_clock_still_gets_a_full_lease(self, stores: dict[str, PostgresStore], clock: str) -> None:
        import time

        store = stores[clock]
        await put(store, saga("b"), wake_at=1.0)
        slow = time.time() - 30.0  # this worker's clock runs 30 s behind
        assert [s.id for s in await store.claim("w1", slow, slow + 10.0, 5)] == ["b"]
        now = time.time()
        taken = [s.id for s in await store.claim("w2", now, now + 10.0, 5)]
        assert taken == ([] if clock == "database" else ["b"])
        if clock == "caller":
            return
        # A renewal measures the lease on the server too.
        assert await store.renew("w1", ["b"], slow + 10.0, now=slow) == set()
        async with store._pool.acquire() as conn:
            left = await conn.fetchval(
                "SELECT lease_expires - EXTRACT(EPOCH FROM clock_timestamp()) FROM sagakit_sagas WHERE id = 'b'"
            )
        assert 8.0 < left <= 10.0

    async def test_a_commit_that_keeps_the_lease_sets_it_on_the_database_clock(
        self, stores: dict[str, PostgresStore]
    ) -> None:
        import time

        from sagakit._store import Write

        store = stores["database"]
        st = saga("c")
        slow = time.time() - 30.0
        w = Write(st, 0, [], slow + 10.0, owner="w1", lease_expires=slow + 10.0, insert=True, lease_seconds=10.0)
        assert await store.commit([w]) == ["c"]
        async with store._pool.acquire() as conn:
            left = await conn.fetchval(
                "SELECT lease_expires - EXTRACT(EPOCH FROM clock_timestamp()) FROM sagakit_sagas WHERE id = 'c'"
            )
        assert 8.0 < left <= 10.0

    async def test_an_update_that_keeps_the_lease_sets_it_and_the_wake_time_on_the_database_clock(
        self, stores: dict[str, PostgresStore]
    ) -> None:
        import time

        store = stores["database"]
        st = saga("d")
        await put(store, st, wake_at=1.0)
        slow = time.time() - 30.0
        w = update(st, wake_at=slow + 10.0, owner="w1", lease_expires=slow + 10.0)
        w.lease_seconds = 10.0
        released = saga("e")
        await put(store, released, wake_at=1.0)
        let_go = update(released, wake_at=None)
        assert await store.commit([w, let_go]) == ["d", "e"]
        async with store._pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT id, lease_owner, lease_expires - EXTRACT(EPOCH FROM clock_timestamp()), "
                "wake_at - EXTRACT(EPOCH FROM clock_timestamp()) FROM sagakit_sagas ORDER BY id"
            )
        (_, owner, lease_left, wake_left), (_, no_owner, no_lease, no_wake) = (tuple(r) for r in rows)
        assert owner == "w1" and 8.0 < lease_left <= 10.0 and 8.0 < wake_left <= 10.0
        assert (no_owner, no_lease, no_wake) == (None, None, None)


async def test_a_participants_session_changes_do_not_reach_the_next_user_of_its_connection(
    pg_dsn: str, pg_schema: str
) -> None:
    """The pool does not reset the store's own connections; the one lent to a handler is reset."""
    store = PostgresStore(pg_dsn, schema=pg_schema, pool_size=1)
    await store.open()
    try:
        async with store.handling("billing", "m-1", 1.0) as h:
            await h.connection.execute("SELECT set_config('sagakit.probe', 'dirty', false)")
            await h.connection.execute("LISTEN sagakit_probe")
        async with store._pool.acquire() as conn:  # the pool's one connection, the handler's
            assert await conn.fetchval("SELECT current_setting('sagakit.probe', true)") in (None, "")
            assert await conn.fetchval("SELECT count(*) FROM pg_listening_channels()") == 0
    finally:
        await store.close()
