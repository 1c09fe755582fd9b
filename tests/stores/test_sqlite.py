"""The store contract on SQLite (a real file per test), and what only SQLite has."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path

import pytest

from sagakit import SagaStatus
from sagakit._errors import NotASagaStore, StoreError
from sagakit._store import SagaQuery, Store, Write, store_from_url
from sagakit.stores._sql import SCHEMA_VERSION
from sagakit.stores.sqlite import SQLiteStore

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


class TestSQLiteStore(StoreContract):
    @pytest.fixture
    def db_path(self, tmp_path: Path) -> Path:
        return tmp_path / "sagas.db"

    @pytest.fixture
    def make_store(self, db_path: Path) -> StoreFactory:
        def make() -> Store:
            return SQLiteStore(str(db_path))

        return make

    async def schema_version(self, store: Store) -> int | None:
        assert isinstance(store, SQLiteStore)
        with sqlite3.connect(store.path) as conn:
            row = conn.execute("SELECT value FROM sagakit_meta WHERE key='schema_version'").fetchone()
        conn.close()
        return int(row[0])

    async def test_url_names_the_file(self, db_path: Path) -> None:
        s = store_from_url(f"sqlite:///{db_path}")
        assert isinstance(s, SQLiteStore)
        assert s.path == str(db_path)

    async def test_text_file_is_not_a_saga_store_and_is_left_untouched(self, tmp_path: Path) -> None:
        path = tmp_path / "notes.db"
        path.write_text("these are my notes, not a database\n" * 10)
        before = (path.read_bytes(), os.stat(path).st_mtime_ns)
        s = SQLiteStore(str(path))
        with pytest.raises(NotASagaStore, match="notes.db"):
            await s.open()
        assert (path.read_bytes(), os.stat(path).st_mtime_ns) == before
        assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.db"]

    async def test_foreign_sagakit_sagas_table_is_refused(self, db_path: Path) -> None:
        with sqlite3.connect(db_path) as conn:
            conn.execute("CREATE TABLE sagakit_sagas (x INTEGER)")
        conn.close()
        with pytest.raises(NotASagaStore):
            await SQLiteStore(str(db_path)).open()

    async def test_newer_schema_version_is_refused(self, make_store: StoreFactory, db_path: Path) -> None:
        s = make_store()
        await s.open()
        await s.close()
        with sqlite3.connect(db_path) as conn:
            conn.execute("UPDATE sagakit_meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),))
        conn.close()
        with pytest.raises(StoreError, match="newer"):
            await make_store().open()

    async def test_version_2_history_is_packed_on_open(self, make_store: StoreFactory, db_path: Path) -> None:
        s = make_store()
        await s.open()
        await put(s, saga("old"))
        await s.close()
        with sqlite3.connect(db_path) as conn:  # the database as schema version 2 left it
            conn.execute("DROP TABLE sagakit_history")
            conn.execute(V2_HISTORY_TABLE.format(bigint="INTEGER", real="REAL"))
            conn.execute(V2_HISTORY_INDEX)
            conn.executemany("INSERT INTO sagakit_history VALUES (?, ?, ?, ?, ?, ?, ?, ?)", V2_HISTORY_ROWS)
            conn.execute("UPDATE sagakit_meta SET value='2' WHERE key='schema_version'")
        conn.close()
        s = make_store()
        await s.open()
        try:
            assert await s.history("old") == V2_HISTORY_EXPECTED
            assert [h.message for h in await s.history("other")] == ["another saga"]
            assert await self.schema_version(s) == SCHEMA_VERSION
        finally:
            await s.close()
        with sqlite3.connect(db_path) as conn:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            rows = conn.execute("SELECT COUNT(*) FROM sagakit_history WHERE saga_id='old'").fetchone()[0]
        conn.close()
        assert "sagakit_history_rows" not in tables
        assert rows == 4  # one per (revision, part)

    async def test_finding_due_work_reads_the_partial_wake_index(self, store: Store) -> None:
        assert isinstance(store, SQLiteStore)
        for i in range(200):
            await put(store, saga(f"done{i:03d}", status=SagaStatus.COMPLETED), wake_at=None)
        await put(store, saga("due"), wake_at=1.0)
        conn = sqlite3.connect(store.path)
        try:
            args = ("w1", 100.0, 50.0, 10, 50.0, '["saga:1"]')
            plan = conn.execute(f"EXPLAIN QUERY PLAN {store._sql.claim}", args).fetchall()
        finally:
            conn.close()
        details = [row[-1] for row in plan]
        # The subquery that picks due sagas searches the partial index on wake_at; nothing
        # scans the table (finished sagas have no wake time and are not in that index).
        assert any("USING INDEX sagakit_sagas_due" in d for d in details), details
        assert not any(d.startswith("SCAN sagakit_sagas") for d in details), details


async def _write_bursts(store: SQLiteStore, bursts: int, pause: float) -> None:
    """Bursts of 40 commits of 10 sagas with ~2 KB of data each (~1 MB of WAL a burst), *pause* s apart."""
    n = 0
    for _ in range(bursts):
        for _ in range(40):
            writes = []
            for _ in range(10):
                st = saga(f"s{n:06d}", data={"blob": "x" * 2000, "n": n})
                st.wake_at = None
                writes.append(Write(st, 0, [], None, insert=True))
                n += 1
            assert await store.commit(writes) == [w.state.id for w in writes]
        await asyncio.sleep(pause)


@pytest.mark.parametrize(("interval", "small"), [(0.05, True), (None, False)], ids=["checkpoint-thread", "inline-only"])
async def test_the_wal_is_checkpointed_off_the_writer_between_bursts(
    tmp_path: Path, interval: float | None, small: bool
) -> None:
    # The checkpoint thread copies each burst into the database file during the pause after
    # it, so the next burst starts the WAL again from its beginning. Left to SQLite alone
    # (the writer checkpoints inline every 1,000 pages) the WAL file grows past 4 MB.
    path = tmp_path / "bursts.db"
    store = SQLiteStore(str(path), checkpoint_interval=interval)
    await store.open()
    try:
        await _write_bursts(store, bursts=5, pause=0.3)
        wal = os.path.getsize(f"{path}-wal")
        assert (wal < 3_000_000) is small, f"the WAL file holds {wal:,} bytes after 5 bursts of ~1 MB"
        assert await store.count(SagaQuery()) == 2000
    finally:
        await store.close()
    assert not os.path.exists(f"{path}-wal")  # the last connection checkpointed and removed it


def test_checkpoint_interval_must_not_be_negative(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="checkpoint_interval must be >= 0 seconds or None, got -1"):
        SQLiteStore(str(tmp_path / "x.db"), checkpoint_interval=-1)


async def test_large_data_is_kept_out_of_the_saga_row(tmp_path: Path) -> None:
    """Data over INLINE_DATA bytes lives in sagakit_data: the saga row that every transition rewrites stays small."""
    from sagakit.stores._sql import INLINE_DATA

    path = tmp_path / "big.db"
    store = SQLiteStore(str(path))
    await store.open()
    try:
        big = {"blob": "x" * 100_000}
        small = {"blob": "x" * (INLINE_DATA - 20)}
        await put(store, saga("big", data=big), wake_at=None)
        await put(store, saga("small", data=small), wake_at=None)

        def rows() -> dict[str, tuple[int, int | None]]:
            conn = sqlite3.connect(path)
            try:
                return {
                    sid: (n, extra)
                    for sid, n, extra in conn.execute(
                        "SELECT s.id, length(s.data), length(d.data) FROM sagakit_sagas s "
                        "LEFT JOIN sagakit_data d ON d.saga_id = s.id ORDER BY s.id"
                    )
                }
            finally:
                conn.close()

        assert rows()["big"][0] == 0 and rows()["big"][1] is not None and rows()["big"][1] > 100_000
        assert rows()["small"][1] is None and rows()["small"][0] > INLINE_DATA - 20  # small data stays in its row
        st = await store.get("big")
        assert st is not None
        w = update(st, data={"note": "small now"})
        assert await store.commit([w]) == ["big"]
        assert rows()["big"] == (len('{"note":"small now"}'), None)  # back in the row, the other row gone
        w = update(w.state, data=big)
        assert await store.commit([w]) == ["big"]
        assert rows()["big"][0] == 0
        conn = sqlite3.connect(path)
        try:
            conn.execute("DELETE FROM sagakit_sagas WHERE id = 'big'")  # whoever deletes a saga
            conn.commit()
            assert conn.execute("SELECT COUNT(*) FROM sagakit_data").fetchone() == (0,)  # takes its data along
        finally:
            conn.close()
    finally:
        await store.close()


async def test_large_data_written_inline_by_an_older_version_is_read(tmp_path: Path) -> None:
    """Rows from before sagakit_data (schema 11), large data in the row, read as they are after the upgrade."""
    path = tmp_path / "old.db"
    store = SQLiteStore(str(path))
    await store.open()
    await put(store, saga("old", data={"blob": "x" * 100_000}), wake_at=None)
    await store.close()
    conn = sqlite3.connect(path)
    try:  # the file as schema 11 left it: the data in the row, no sagakit_data
        stored = conn.execute("SELECT data FROM sagakit_data WHERE saga_id = 'old'").fetchone()[0]
        conn.execute("UPDATE sagakit_sagas SET data = ? WHERE id = 'old'", (stored,))
        conn.execute("DROP TRIGGER sagakit_data_gone")
        conn.execute("DROP TABLE sagakit_data")
        conn.execute("UPDATE sagakit_meta SET value = '11' WHERE key = 'schema_version'")
        conn.commit()
    finally:
        conn.close()
    again = SQLiteStore(str(path))
    await again.open()
    try:
        st = await again.get("old")
        assert st is not None and st.data == {"blob": "x" * 100_000}
        assert [s.id for s in await again.list(SagaQuery(data_equals={"blob": "x" * 100_000}))] == ["old"]
        w = update(st, data={"blob": "y" * 100_000})
        assert await again.commit([w]) == ["old"]
        after = await again.get("old")
        assert after is not None and after.data == {"blob": "y" * 100_000}
    finally:
        await again.close()


async def test_a_small_commit_while_another_process_writes_waits_off_the_event_loop(tmp_path: Path) -> None:
    """A commit of a few writes is made on the loop's thread only when the database is free at once."""
    path = str(tmp_path / "sagas.db")
    store = SQLiteStore(path)
    await store.open()
    try:
        assert await put(store, saga("first")) == "first"  # free: committed at once
        other = sqlite3.connect(path, isolation_level=None)  # another writer, as another process would be
        other.execute("BEGIN IMMEDIATE")
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        ticker = asyncio.create_task(tick())
        commit = asyncio.create_task(put(store, saga("second")))
        await asyncio.sleep(0.3)
        assert not commit.done()  # waiting for the other writer's lock, on the writer's thread
        assert ticks >= 10  # and the event loop ran meanwhile
        other.execute("COMMIT")
        other.close()
        assert await asyncio.wait_for(commit, 10) == "second"
        ticker.cancel()
        assert (await store.get("second")) is not None
    finally:
        await store.close()
