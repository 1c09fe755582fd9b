"""SQL shared by the relational stores; dialects differ only in the hooks of ``Dialect``.

Schema changes are an ordered list of migrations; ``sagakit_meta`` holds the
version applied. Nothing here assumes one global sequence or cross-saga
transactions: history and outbox rows are keyed by (saga_id, revision, idx),
so the tables can be distributed by ``saga_id``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ._codec import COLUMNS

__all__ = ["SCHEMA_VERSION", "Dialect", "Statements", "count_by_status_query", "list_query", "migrations"]


# SQLite: a saga's data over INLINE_DATA bytes is kept in sagakit_data, its row's data
# column left '' (no JSON text is empty). SQLite rewrites a whole row, overflow pages and
# all, on every update of any column of it: a large data blob in the saga row would be
# written again at each transition, while the data changes only when a step changes it.
# Below the limit the row still fits in one 4 KiB page (no overflow pages) and is read and
# written in one piece.
INLINE_DATA = 3000
SQLITE_DATA = (
    "(CASE WHEN sagakit_sagas.data = '' THEN (SELECT x.data FROM sagakit_data x "
    "WHERE x.saga_id = sagakit_sagas.id) ELSE sagakit_sagas.data END)"
)


def _sqlite_json_text(p: str) -> str:
    # JSON true/false come out of json_extract as 1/0: spell them as JSON does.
    return (
        f"CASE json_type({SQLITE_DATA}, {p}) WHEN 'true' THEN 'true' WHEN 'false' THEN 'false' "
        f"ELSE CAST(json_extract({SQLITE_DATA}, {p}) AS TEXT) END"
    )


def _sqlite_json_path(key: str) -> str:
    return f'$."{key}"'


@dataclass(frozen=True, slots=True)
class Dialect:
    """What differs between SQL databases."""

    name: str
    param: Callable[[int], str]  # 1-based placeholder
    real: str = "REAL"
    json: str = "TEXT"
    bigint: str = "INTEGER"
    # Appended to the claim's row-picking subquery (PostgreSQL: " FOR UPDATE SKIP LOCKED",
    # so concurrent claimers pass over each other's rows instead of waiting).
    lock_rows: str = ""
    # "id <this> (subquery)" for the claims' UPDATE … WHERE id IN (SELECT … LIMIT n).
    # PostgreSQL is given an array (= ANY(ARRAY(…))): the subquery runs once and the rows
    # are fetched by primary key, whatever the planner estimates; with IN it may hash-join
    # against a scan of the whole saga table, finished sagas included.
    in_subquery: Callable[[str], str] = lambda sub: f"IN ({sub})"
    # The database infers a parameter's type from its context and cannot inside a CASE
    # whose other branch is NULL (PostgreSQL): such placeholders are cast explicitly.
    cast_params: bool = False
    # A top-level key of the saga's JSON data as text (a business-key search): the SQL for it,
    # given the placeholder that json_path(key) is bound to (keys never enter the SQL text).
    json_text: Callable[[str], str] = _sqlite_json_text
    json_path: Callable[[str], str] = _sqlite_json_path
    # A condition that holds for one claimer of a saga at a time within a transaction
    # (PostgreSQL: a transaction-scoped advisory lock on the saga id), so two relays
    # never split one saga's messages between them; "" where writers are serialised.
    saga_lock: Callable[[str], str] = lambda column: ""
    # Migration 3: the rows of one (saga, revision, part) of the old one-row-per-entry
    # history as one JSON array of [at, kind, message, step, attempt], in idx order;
    # selected FROM the old table ordered by saga_id, revision, idx (SQLite aggregates
    # in that order; PostgreSQL is told with ORDER BY).
    history_entries_agg: str = "json_group_array(json_array(at, kind, message, step, attempt))"
    # The condition that a saga is of one of the definitions listed in the placeholder
    # (a list of "name:version" texts; NULL lists every definition).
    of_kinds: Callable[[str], str] = lambda p: (
        f"({p} IS NULL OR (name || ':' || version) IN (SELECT value FROM json_each({p})))"
    )
    # The database's own clock in seconds since the epoch, for lease expiries when
    # workers on several machines share the database (PostgreSQL); None: leases are
    # measured on the caller's clock (one machine).
    clock: str | None = None
    # "<column> <this>": the column's value is one of the texts bound to the placeholder
    # (SQLite: a JSON array; PostgreSQL: a text[]), so a batch of ids is one parameter.
    in_texts: Callable[[str], str] = lambda p: f"IN (SELECT value FROM json_each({p}))"
    # The column that names a row of a table without a key (SQLite's rowid, PostgreSQL's ctid).
    row_id: str = "rowid"
    # Run first in a transaction that changes semantic locks, so that one such transaction at a
    # time reads and writes the queues (PostgreSQL; SQLite's writers are serialised already).
    lock_locks: str = ""
    # The saga's data as read (SQLite: from sagakit_data when kept there; see INLINE_DATA).
    data_column: str = "data"

    def real_param(self, i: int) -> str:
        """Placeholder *i* for a REAL value in a place that gives no type of its own."""
        p = self.param(i)
        return f"CAST({p} AS {self.real})" if self.cast_params else p


def migrations(d: Dialect) -> list[list[str]]:
    """Ordered schema migrations; index i brings the schema from version i to i + 1."""
    return [
        [
            f"""CREATE TABLE IF NOT EXISTS sagakit_sagas (
                id TEXT PRIMARY KEY,
                name TEXT NOT NULL,
                version INTEGER NOT NULL,
                status TEXT NOT NULL,
                data {d.json} NOT NULL,
                steps {d.json} NOT NULL,
                created_at {d.real} NOT NULL,
                updated_at {d.real} NOT NULL,
                correlation_id TEXT,
                idempotency_key TEXT,
                wake_at {d.real},
                deadline_at {d.real},
                error TEXT,
                seq {d.bigint} NOT NULL,
                revision {d.bigint} NOT NULL,
                meta {d.json},
                lease_owner TEXT,
                lease_expires {d.real}
            )""",
            # Finding due work reads only this partial index: finished sagas
            # have no wake time and are not in it.
            "CREATE INDEX IF NOT EXISTS sagakit_sagas_due ON sagakit_sagas (wake_at) WHERE wake_at IS NOT NULL",
            "CREATE UNIQUE INDEX IF NOT EXISTS sagakit_sagas_idem "
            "ON sagakit_sagas (name, idempotency_key) WHERE idempotency_key IS NOT NULL",
            "CREATE INDEX IF NOT EXISTS sagakit_sagas_created ON sagakit_sagas (created_at)",
            "CREATE INDEX IF NOT EXISTS sagakit_sagas_correlation "
            "ON sagakit_sagas (correlation_id) WHERE correlation_id IS NOT NULL",
            f"""CREATE TABLE IF NOT EXISTS sagakit_history (
                saga_id TEXT NOT NULL,
                revision {d.bigint} NOT NULL,
                idx INTEGER NOT NULL,
                at {d.real} NOT NULL,
                kind TEXT NOT NULL,
                step TEXT,
                attempt INTEGER,
                message TEXT NOT NULL
            )""",
            "CREATE INDEX IF NOT EXISTS sagakit_history_saga ON sagakit_history (saga_id, revision, idx)",
            f"""CREATE TABLE IF NOT EXISTS sagakit_outbox (
                id TEXT PRIMARY KEY,
                saga_id TEXT NOT NULL,
                revision {d.bigint} NOT NULL,
                idx INTEGER NOT NULL,
                destination TEXT NOT NULL,
                payload {d.json} NOT NULL,
                headers {d.json} NOT NULL,
                created_at {d.real} NOT NULL,
                available_at {d.real} NOT NULL,
                attempts INTEGER NOT NULL DEFAULT 0,
                claimed_by TEXT,
                claimed_until {d.real}
            )""",
            "CREATE INDEX IF NOT EXISTS sagakit_outbox_pending ON sagakit_outbox (available_at)",
            f"""CREATE TABLE IF NOT EXISTS sagakit_inbox (
                message_id TEXT PRIMARY KEY,
                saga_id TEXT,
                received_at {d.real} NOT NULL
            )""",
        ],
        [
            # Messages that reached no saga (unknown saga, step not waiting,
            # stale attempt), kept with the reason instead of being dropped.
            f"""CREATE TABLE IF NOT EXISTS sagakit_dead_letters (
                message_id TEXT NOT NULL,
                received_at {d.real} NOT NULL,
                saga_id TEXT,
                type_name TEXT NOT NULL,
                body TEXT NOT NULL,
                reason TEXT NOT NULL
            )""",
            "CREATE INDEX IF NOT EXISTS sagakit_dead_letters_at ON sagakit_dead_letters (received_at)",
        ],
        [
            # History packed: one row per transition written (its entries as one JSON array
            # of [at, kind, message, step, attempt]) instead of one row per entry. A saga
            # writes two or three rows instead of nine or more, and the commit's cost in
            # rows and index entries drops with it. part: 0 for the entries of a commit,
            # 1 for entries appended afterwards (a fenced worker's note).
            "ALTER TABLE sagakit_history RENAME TO sagakit_history_rows",
            "DROP INDEX IF EXISTS sagakit_history_saga",
            f"""CREATE TABLE sagakit_history (
                saga_id TEXT NOT NULL,
                revision {d.bigint} NOT NULL,
                part INTEGER NOT NULL,
                entries TEXT NOT NULL
            )""",
            "CREATE INDEX sagakit_history_saga ON sagakit_history (saga_id, revision, part)",
            "INSERT INTO sagakit_history (saga_id, revision, part, entries) "
            f"SELECT saga_id, revision, idx / 1000, {d.history_entries_agg} "
            "FROM (SELECT * FROM sagakit_history_rows ORDER BY saga_id, revision, idx) ordered "
            "GROUP BY saga_id, revision, idx / 1000",
            "DROP TABLE sagakit_history_rows",
        ],
        [
            # Operator requests for a saga another worker holds: that worker applies them
            # (it is the one that can cancel what runs) and writes the outcome back.
            f"""CREATE TABLE IF NOT EXISTS sagakit_requests (
                id TEXT PRIMARY KEY,
                saga_id TEXT NOT NULL,
                event TEXT NOT NULL,
                requested_at {d.real} NOT NULL,
                outcome TEXT
            )""",
        ],
        [
            # Running workers and the definitions they run, so that a saga no worker can
            # run is shown as such ("order v1 is not registered on any worker").
            f"""CREATE TABLE IF NOT EXISTS sagakit_workers (
                worker_id TEXT PRIMARY KEY,
                definitions TEXT NOT NULL,
                alive_until {d.real} NOT NULL
            )""",
        ],
        [
            # Pruning finished sagas deletes their inbox rows by saga id, a batch at a
            # time: without this index each batch would scan the whole inbox.
            "CREATE INDEX IF NOT EXISTS sagakit_inbox_saga ON sagakit_inbox (saga_id)",
        ],
        [
            # When each worker last said it was alive, for the workers page of the dashboard.
            # The registry is remade rather than altered (a step must be safe to run again,
            # and SQLite has no ADD COLUMN IF NOT EXISTS): running workers say they are
            # alive again within seconds, so nothing lasting is lost.
            "DROP TABLE IF EXISTS sagakit_workers",
            f"""CREATE TABLE sagakit_workers (
                worker_id TEXT PRIMARY KEY,
                definitions TEXT NOT NULL,
                alive_until {d.real} NOT NULL,
                seen_at {d.real}
            )""",
        ],
        [
            # Recurring starts (engine.schedule): one saga per period of a cron expression,
            # started by whichever worker finds the schedule due; next_at is advanced with
            # a compare-and-set, and the period's idempotency key keeps a race to one saga.
            f"""CREATE TABLE IF NOT EXISTS sagakit_schedules (
                key TEXT PRIMARY KEY,
                name TEXT NOT NULL,
                version INTEGER,
                data TEXT NOT NULL,
                cron TEXT NOT NULL,
                next_at {d.real} NOT NULL,
                created_at {d.real} NOT NULL,
                last_at {d.real},
                last_saga TEXT
            )""",
            "CREATE INDEX IF NOT EXISTS sagakit_schedules_next ON sagakit_schedules (next_at)",
        ],
        [
            # Commands a participant handled (sagakit.participant with store=), each with the
            # reply it sent, written in the transaction of the handler's own database work:
            # a command delivered again is answered from here, not handled again.
            f"""CREATE TABLE IF NOT EXISTS sagakit_handled (
                participant TEXT NOT NULL,
                message_id TEXT NOT NULL,
                handled_at {d.real} NOT NULL,
                reply TEXT,
                PRIMARY KEY (participant, message_id)
            )""",
            "CREATE INDEX IF NOT EXISTS sagakit_handled_at ON sagakit_handled (handled_at)",
        ],
        [
            # Resource limits shared by the workers (PostgreSQL; the memory and SQLite stores keep
            # permits in the process): one row per resource with its limits and the grant times
            # of its current rate window (a JSON array), locked by each acquirer; one row per
            # permit held (granted = 1) or waited for (granted = 0), alive until expires_at.
            f"""CREATE TABLE IF NOT EXISTS sagakit_resources (
                name TEXT PRIMARY KEY,
                concurrency INTEGER,
                rate INTEGER,
                per {d.real} NOT NULL,
                grants {d.json} NOT NULL
            )""",
            f"""CREATE TABLE IF NOT EXISTS sagakit_permits (
                saga_id TEXT NOT NULL,
                step TEXT NOT NULL,
                token {d.bigint} NOT NULL,
                resource TEXT NOT NULL,
                holder TEXT NOT NULL,
                granted INTEGER NOT NULL,
                queued_at {d.real} NOT NULL,
                expires_at {d.real} NOT NULL,
                PRIMARY KEY (saga_id, step, token)
            )""",
            "CREATE INDEX IF NOT EXISTS sagakit_permits_resource ON sagakit_permits (resource, granted)",
            "CREATE INDEX IF NOT EXISTS sagakit_permits_holder ON sagakit_permits (holder)",
        ],
        [
            # Semantic locks: one row per saga and business key it holds (held=1) or is queued
            # for (held=0); the keys of one acquisition share a ticket, and tickets order the
            # queue (see stores._lockplan). Only sagas that declare locks have rows here.
            f"""CREATE TABLE IF NOT EXISTS sagakit_locks (
                key TEXT NOT NULL,
                saga_id TEXT NOT NULL,
                ticket {d.bigint} NOT NULL,
                held INTEGER NOT NULL,
                since {d.real} NOT NULL,
                PRIMARY KEY (key, saga_id)
            )""",
            "CREATE INDEX IF NOT EXISTS sagakit_locks_saga ON sagakit_locks (saga_id)",
        ],
        # Large saga data out of the saga row (SQLite; see INLINE_DATA), gone with its saga.
        [
            """CREATE TABLE IF NOT EXISTS sagakit_data (
                saga_id TEXT PRIMARY KEY,
                data TEXT NOT NULL
            )""",
            "CREATE TRIGGER IF NOT EXISTS sagakit_data_gone AFTER DELETE ON sagakit_sagas "
            "WHEN old.data = '' BEGIN DELETE FROM sagakit_data WHERE saga_id = old.id; END",
        ]
        if d.data_column != "data"
        else [],
    ]


SCHEMA_VERSION = 12


class Statements:
    """The store's statements, rendered once for a dialect."""

    def __init__(self, d: Dialect, *, database_clock: bool = True) -> None:
        p = d.param
        names = ", ".join(COLUMNS)
        # The columns as read (data through the dialect's expression for it).
        cols = ", ".join(f"{d.data_column} AS data" if c == "data" and d.data_column != "data" else c for c in COLUMNS)
        self.columns = cols
        # fmt: off
        self.insert = (
            f"INSERT INTO sagakit_sagas ({names}, lease_owner, lease_expires) VALUES "
            f"({', '.join(p(i) for i in range(1, len(COLUMNS) + 3))}) ON CONFLICT DO NOTHING"
        )
        # id=1 revision_expected=2, then: status, steps, updated_at, wake_at, deadline_at,
        # error, seq, revision, meta, lease_owner, lease_expires [, data]
        self.update = (
            f"UPDATE sagakit_sagas SET status={p(3)}, steps={p(4)}, updated_at={p(5)}, "
            f"wake_at={p(6)}, deadline_at={p(7)}, error={p(8)}, seq={p(9)}, revision={p(10)}, "
            f"meta={p(11)}, lease_owner={p(12)}, lease_expires={p(13)} "
            f"WHERE id={p(1)} AND revision={p(2)}"
        )
        self.update_with_data = (
            f"UPDATE sagakit_sagas SET status={p(3)}, steps={p(4)}, updated_at={p(5)}, "
            f"wake_at={p(6)}, deadline_at={p(7)}, error={p(8)}, seq={p(9)}, revision={p(10)}, "
            f"meta={p(11)}, lease_owner={p(12)}, lease_expires={p(13)}, data={p(14)} "
            f"WHERE id={p(1)} AND revision={p(2)}"
        )
        # saga_id, revision, part, entries (a JSON array: see _codec.encode_history)
        self.insert_history = (
            "INSERT INTO sagakit_history (saga_id, revision, part, entries) "
            f"VALUES ({p(1)}, {p(2)}, {p(3)}, {p(4)})"
        )
        self.insert_outbox = (
            "INSERT INTO sagakit_outbox (id, saga_id, revision, idx, destination, payload, "
            "headers, created_at, available_at) "
            f"VALUES ({p(1)}, {p(2)}, {p(3)}, {p(4)}, {p(5)}, {p(6)}, {p(7)}, {p(8)}, {p(8)}) "
            "ON CONFLICT DO NOTHING"
        )
        self.insert_inbox = (
            "INSERT INTO sagakit_inbox (message_id, saga_id, received_at) "
            f"VALUES ({p(1)}, {p(2)}, {p(3)}) ON CONFLICT DO NOTHING"
        )
        self.find_idempotent = (
            f"SELECT id FROM sagakit_sagas WHERE name={p(1)} AND idempotency_key={p(2)}"
        )
        # Lease expiries are compared with, and set from, the database's clock where it has
        # one: a worker whose own clock runs fast or slow cannot cut another's lease short
        # or stretch its own. A held saga is due again when its lease ends, on that clock
        # too; the machine's own timers stay the callers' times.
        clock = d.clock if database_clock and d.clock else None

        def lease_now(i: int) -> str:
            # The caller's time (placeholder i) stays in the statement, multiplied away, so the
            # database knows its type and the statements take the same arguments either way.
            return f"({clock} + 0 * {d.real_param(i)})" if clock else d.real_param(i)

        # owner=1 lease_until=2 now=3 limit=4 lease_seconds=5 kinds=6
        now = lease_now(3)
        self.claim = (
            f"UPDATE sagakit_sagas SET lease_owner={p(1)}, lease_expires={now} + {d.real_param(5)}, "
            f"wake_at={now} + {d.real_param(5)} + 0 * {d.real_param(2)}, "
            "revision=revision+1 WHERE id "
            + d.in_subquery(
                f"SELECT id FROM sagakit_sagas WHERE wake_at <= {p(3)} "
                f"AND (lease_owner IS NULL OR lease_expires <= {now}) AND {d.of_kinds(p(6))} "
                f"ORDER BY wake_at LIMIT {p(4)}{d.lock_rows}"
            )
            + f" RETURNING {cols}"
        )
        # owner=1 lease_until=2 now=3 id=4 lease_seconds=5
        self.claim_one = (
            f"UPDATE sagakit_sagas SET lease_owner={p(1)}, lease_expires={now} + {d.real_param(5)}, "
            f"wake_at=CASE WHEN wake_at IS NULL THEN NULL ELSE {now} + {d.real_param(5)} + 0 * {d.real_param(2)} END, "
            f"revision=revision+1 WHERE id={p(4)} AND "
            f"(lease_owner IS NULL OR lease_owner={p(1)} OR lease_expires <= {now}) "
            f"RETURNING {cols}"
        )
        # owner=1 wake_at=2 id=3; a finished saga keeps its NULL wake time
        self.release = (
            "UPDATE sagakit_sagas SET lease_owner=NULL, lease_expires=NULL, "
            f"wake_at=CASE WHEN wake_at IS NULL THEN NULL ELSE {d.real_param(2)} END "
            f"WHERE id={p(3)} AND lease_owner={p(1)}"
        )
        # owner=1 lease_until=2 id=3 now=4 lease_seconds=5
        now = lease_now(4)
        self.renew = (
            f"UPDATE sagakit_sagas SET lease_expires={now} + {d.real_param(5)}, "
            f"wake_at={now} + {d.real_param(5)} + 0 * {d.real_param(2)} "
            f"WHERE id={p(3)} AND lease_owner={p(1)}"
        )
        # id=1 saga_id=2 event=3 requested_at=4
        self.insert_request = (
            f"INSERT INTO sagakit_requests (id, saga_id, event, requested_at) VALUES ({p(1)}, {p(2)}, {p(3)}, {p(4)})"
        )
        self.open_requests = (
            "SELECT id, saga_id, event FROM sagakit_requests WHERE outcome IS NULL ORDER BY requested_at"
        )
        self.answer_request = f"UPDATE sagakit_requests SET outcome={p(2)} WHERE id={p(1)} AND outcome IS NULL"
        self.request_outcome = f"SELECT outcome FROM sagakit_requests WHERE id={p(1)}"
        self.withdraw_request = f"DELETE FROM sagakit_requests WHERE id={p(1)} AND outcome IS NULL"
        self.drop_request = f"DELETE FROM sagakit_requests WHERE id={p(1)}"
        # wake_at=1 [owner=2]: give up leases at start (see Store.release_leases); a finished
        # saga keeps its NULL wake time
        self.release_all = (
            "UPDATE sagakit_sagas SET lease_owner=NULL, lease_expires=NULL, "
            f"wake_at=CASE WHEN wake_at IS NULL THEN NULL ELSE {d.real_param(1)} END "
            "WHERE lease_owner IS NOT NULL"
        )
        self.release_owned = self.release_all + f" AND lease_owner={p(2)}"
        # worker_id=1 definitions=2 alive_until=3 seen_at=4
        self.upsert_worker = (
            "INSERT INTO sagakit_workers (worker_id, definitions, alive_until, seen_at) "
            f"VALUES ({p(1)}, {p(2)}, {p(3)}, {p(4)}) "
            "ON CONFLICT (worker_id) DO UPDATE SET definitions=excluded.definitions, alive_until=excluded.alive_until, "
            "seen_at=excluded.seen_at"
        )
        self.delete_worker = f"DELETE FROM sagakit_workers WHERE worker_id={p(1)}"
        self.live_workers = (
            f"SELECT worker_id, definitions FROM sagakit_workers WHERE alive_until > {p(1)} ORDER BY worker_id"
        )
        self.workers = (
            "SELECT worker_id, definitions, alive_until, seen_at FROM sagakit_workers "
            f"WHERE alive_until > {p(1)} ORDER BY worker_id"
        )
        # A held saga is unfinished, so it is in the partial index of wake times.
        self.leases = (
            "SELECT id, name, version, lease_owner, lease_expires FROM sagakit_sagas "
            f"WHERE wake_at IS NOT NULL AND lease_owner IS NOT NULL AND lease_expires > {p(1)} "
            f"ORDER BY lease_owner, lease_expires, id LIMIT {p(2)}"
        )
        # The database's clock, read at the start of a commit that sets leases.
        self.clock = f"SELECT {clock}" if clock else None
        self.get = f"SELECT {cols} FROM sagakit_sagas WHERE id={p(1)}"
        self.exists = f"SELECT 1 FROM sagakit_sagas WHERE id={p(1)}"
        self.history = (
            f"SELECT entries FROM sagakit_history WHERE saga_id={p(1)} ORDER BY revision, part"
        )
        self.next_wake = "SELECT MIN(wake_at) FROM sagakit_sagas WHERE wake_at IS NOT NULL"
        # kinds=1
        self.next_wake_of = (
            f"SELECT wake_at FROM sagakit_sagas WHERE wake_at IS NOT NULL AND {d.of_kinds(p(1))} "
            "ORDER BY wake_at LIMIT 1"
        )
        # owner=1 claimed_until=2 now=3 limit=4: claim unpublished messages, oldest first.
        # A saga whose messages another relay holds is passed over entirely, and a message
        # waits while an earlier one of its saga waits for a retry: one relay publishes a
        # saga's messages at a time, in order.
        self.outbox_claim = (
            f"UPDATE sagakit_outbox SET claimed_by={p(1)}, claimed_until={p(2)}, "
            "attempts=attempts+1 WHERE id "
            + d.in_subquery(
                f"SELECT o.id FROM sagakit_outbox o WHERE o.available_at <= {p(3)} "
                f"AND (o.claimed_by IS NULL OR o.claimed_until <= {p(3)}) "
                "AND NOT EXISTS (SELECT 1 FROM sagakit_outbox h WHERE h.saga_id = o.saga_id AND h.id <> o.id "
                f"AND ((h.claimed_by IS NOT NULL AND h.claimed_by <> {p(1)} AND h.claimed_until > {p(3)}) "
                "OR ((h.revision < o.revision OR (h.revision = o.revision AND h.idx < o.idx)) "
                f"AND h.available_at > {p(3)})))"
                f"{d.saga_lock('o.saga_id')} "
                f"ORDER BY o.created_at, o.saga_id, o.revision, o.idx LIMIT {p(4)}{d.lock_rows}"
            )
            + " RETURNING id, saga_id, destination, payload, headers, attempts, created_at, revision, idx"
        )
        self.outbox_done = f"DELETE FROM sagakit_outbox WHERE id={p(1)} AND claimed_by={p(2)}"
        # id=1 owner=2 available_at=3: publishing failed, try again later
        self.outbox_retry = (
            f"UPDATE sagakit_outbox SET claimed_by=NULL, claimed_until=NULL, available_at={p(3)} "
            f"WHERE id={p(1)} AND claimed_by={p(2)}"
        )
        self.outbox_pending = "SELECT COUNT(*) FROM sagakit_outbox"
        self.outbox_oldest = "SELECT MIN(created_at) FROM sagakit_outbox"
        self.insert_dead_letter = (
            "INSERT INTO sagakit_dead_letters (message_id, received_at, saga_id, type_name, body, "
            f"reason) VALUES ({p(1)}, {p(2)}, {p(3)}, {p(4)}, {p(5)}, {p(6)})"
        )
        self.dead_letters = (
            "SELECT message_id, received_at, saga_id, type_name, body, reason "
            f"FROM sagakit_dead_letters ORDER BY received_at DESC LIMIT {p(1)} OFFSET {p(2)}"
        )
        self.inbox_seen = f"SELECT 1 FROM sagakit_inbox WHERE message_id={p(1)}"
        # Batched lookups (each placeholder a list of texts, see Dialect.in_texts).
        self.inbox_seen_many = f"SELECT message_id FROM sagakit_inbox WHERE message_id {d.in_texts(p(1))}"
        self.existing = f"SELECT id FROM sagakit_sagas WHERE id {d.in_texts(p(1))}"
        # correlation ids=1 name=2 unfinished statuses=3; the newest saga of each id last
        self.correlated = (
            f"SELECT correlation_id, id FROM sagakit_sagas WHERE correlation_id {d.in_texts(p(1))} "
            f"AND name = {p(2)} AND status {d.in_texts(p(3))} ORDER BY created_at, id"
        )
        # Schedules. key=1 name=2 version=3 data=4 cron=5 next_at=6 created_at=7
        schedule_cols = "key, name, version, data, cron, next_at, created_at, last_at, last_saga"
        self.upsert_schedule = (
            f"INSERT INTO sagakit_schedules ({schedule_cols}) VALUES "
            f"({p(1)}, {p(2)}, {p(3)}, {p(4)}, {p(5)}, {p(6)}, {p(7)}, NULL, NULL) "
            "ON CONFLICT (key) DO UPDATE SET name=excluded.name, version=excluded.version, data=excluded.data, "
            "cron=excluded.cron, next_at=excluded.next_at"
        )
        self.delete_schedule = f"DELETE FROM sagakit_schedules WHERE key={p(1)}"
        self.schedules = f"SELECT {schedule_cols} FROM sagakit_schedules ORDER BY next_at, key"
        self.schedules_due = (
            f"SELECT {schedule_cols} FROM sagakit_schedules WHERE next_at <= {p(1)} ORDER BY next_at LIMIT {p(2)}"
        )
        # key=1 expected next_at=2 next_at=3 last_at=4 last_saga=5
        self.advance_schedule = (
            f"UPDATE sagakit_schedules SET next_at={p(3)}, last_at={p(4)}, last_saga={p(5)} "
            f"WHERE key={p(1)} AND next_at={p(2)}"
        )
        # Retention. before=1 statuses=2 after_created=3 after_id=4 limit=5: the next finished
        # sagas to prune, in (created_at, id) order after the cursor. created_at <= updated_at,
        # so the bound on created_at is implied; it lets the scan run on the created_at index
        # over [cursor, cutoff) instead of the whole table.
        self.prune_pick = (
            f"SELECT id, created_at FROM sagakit_sagas WHERE created_at < {p(1)} AND updated_at < {p(1)} "
            f"AND status {d.in_texts(p(2))} AND created_at >= {p(3)} "
            f"AND (created_at > {p(3)} OR id > {p(4)}) ORDER BY created_at, id LIMIT {p(5)}"
        )
        # ids=1 statuses=2 before=3: checked again on delete (an operator may have claimed one
        # meanwhile); a lease that expired before the cutoff belonged to a worker long gone.
        self.prune_sagas = (
            f"DELETE FROM sagakit_sagas WHERE id {d.in_texts(p(1))} AND status {d.in_texts(p(2))} "
            f"AND updated_at < {p(3)} AND (lease_owner IS NULL OR lease_expires < {p(3)}) RETURNING id"
        )
        self.prune_check = (
            f"SELECT id FROM sagakit_sagas WHERE id {d.in_texts(p(1))} AND status {d.in_texts(p(2))} "
            f"AND updated_at < {p(3)} AND (lease_owner IS NULL OR lease_expires < {p(3)})"
        )
        # ids=1: the rows of pruned sagas, deleted or (dry run) counted
        self.prune_children = {
            table: (
                f"DELETE FROM {table} WHERE saga_id {d.in_texts(p(1))}",
                f"SELECT COUNT(*) FROM {table} WHERE saga_id {d.in_texts(p(1))}",
            )
            for table in ("sagakit_history", "sagakit_inbox", "sagakit_outbox", "sagakit_requests")
        }
        # before=1 limit=2
        self.prune_dead_letters = (
            f"DELETE FROM sagakit_dead_letters WHERE {d.row_id} "
            + d.in_subquery(
                f"SELECT {d.row_id} FROM sagakit_dead_letters WHERE received_at < {p(1)} "
                f"ORDER BY received_at LIMIT {p(2)}"
            )
        )
        self.count_dead_letters = f"SELECT COUNT(*) FROM sagakit_dead_letters WHERE received_at < {p(1)}"
        # Participants. participant=1 message_id=2 handled_at=3: claims the command inside the
        # handler's transaction; a second claim of it waits for the first to commit or roll back.
        self.insert_handled = (
            "INSERT INTO sagakit_handled (participant, message_id, handled_at) "
            f"VALUES ({p(1)}, {p(2)}, {p(3)}) ON CONFLICT DO NOTHING"
        )
        self.handled_reply = f"SELECT reply FROM sagakit_handled WHERE participant={p(1)} AND message_id={p(2)}"
        self.set_handled_reply = (
            f"UPDATE sagakit_handled SET reply={p(3)} WHERE participant={p(1)} AND message_id={p(2)}"
        )
        # participant=1 (NULL: every participant) before=2 limit=3
        self.prune_handled = (
            f"DELETE FROM sagakit_handled WHERE {d.row_id} "
            + d.in_subquery(
                f"SELECT {d.row_id} FROM sagakit_handled WHERE handled_at < {p(2)} "
                f"AND (CAST({p(1)} AS TEXT) IS NULL OR participant = {p(1)}) ORDER BY handled_at LIMIT {p(3)}"
            )
        )
        # Semantic locks (see stores._lockplan for the queue rules).
        # keys=1 sagas=2: the rows of these keys and of these sagas (one step of stores._lockplan.Component)
        self.lock_rows = (
            "SELECT key, saga_id, ticket, held, since FROM sagakit_locks "
            f"WHERE key {d.in_texts(p(1))} OR saga_id {d.in_texts(p(2))}"
        )
        self.lock_delete = f"DELETE FROM sagakit_locks WHERE key={p(1)} AND saga_id={p(2)}"
        self.lock_insert = (
            "INSERT INTO sagakit_locks (key, saga_id, ticket, held, since) "
            f"VALUES ({p(1)}, {p(2)}, {p(3)}, {p(4)}, {p(5)})"
        )
        self.lock_grant = f"UPDATE sagakit_locks SET held=1 WHERE key={p(1)} AND saga_id={p(2)}"
        # now=1 id=2: a saga granted its keys, unleased and unfinished, is due now
        self.lock_wake = (
            f"UPDATE sagakit_sagas SET wake_at={d.real_param(1)} WHERE id={p(2)} AND lease_owner IS NULL "
            "AND status IN ('pending', 'running', 'compensating')"
        )
        self.lock_saga = f"SELECT status, meta, lease_owner FROM sagakit_sagas WHERE id={p(1)}"
        # wake_at=1 id=2 owner=3: a queued saga's lease is given up in its acquisition's transaction
        self.lock_release_lease = (
            f"UPDATE sagakit_sagas SET lease_owner=NULL, lease_expires=NULL, wake_at={d.real_param(1)} "
            f"WHERE id={p(2)} AND lease_owner={p(3)}"
        )
        # limit=1 [saga_id=2]
        locks = (
            "SELECT l.key, l.saga_id, l.held, l.ticket, l.since, s.name FROM sagakit_locks l "
            "LEFT JOIN sagakit_sagas s ON s.id = l.saga_id"
        )
        order = f" ORDER BY l.key, l.held DESC, l.ticket LIMIT {p(1)}"
        self.locks = locks + order
        self.locks_of = locks + f" WHERE l.saga_id={p(2)}" + order
        # fmt: on


def _where(d: Dialect, q: object) -> tuple[str, list[object]]:
    """The WHERE clause of a SagaQuery's filters, and its arguments."""
    from .._store import UNFINISHED, SagaQuery, data_text

    assert isinstance(q, SagaQuery)
    where: list[str] = []
    args: list[object] = []

    def add(cond: str, *values: object) -> None:
        marks = []
        for v in values:
            args.append(v)
            marks.append(d.param(len(args)))
        where.append(cond.format(*marks))

    if q.status is not None:
        add("status = {}", q.status.value)
    if q.statuses is not None:
        if q.statuses:
            add(f"status IN ({', '.join('{}' for _ in q.statuses)})", *(s.value for s in q.statuses))
        else:
            where.append("1 = 0")
    if q.name is not None:
        add("name = {}", q.name)
    if q.version is not None:
        add("version = {}", q.version)
    if q.correlation_id is not None:
        add("correlation_id = {}", q.correlation_id)
    if q.id_prefix is not None:
        escaped = q.id_prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        add("id LIKE {} ESCAPE '\\'", escaped + "%")
    if q.created_after is not None:
        add("created_at >= {}", q.created_after)
    if q.created_before is not None:
        add("created_at < {}", q.created_before)
    if q.updated_after is not None:
        add("updated_at >= {}", q.updated_after)
    if q.updated_before is not None:
        add("updated_at < {}", q.updated_before)
    for key, value in (q.data_equals or {}).items():
        args.append(d.json_path(key))
        path = d.param(len(args))
        add(f"{d.json_text(path)} = {{}}", data_text(value))
    if q.overdue_before is not None:
        add(
            f"status IN ({', '.join('{}' for _ in UNFINISHED)}) AND wake_at < {{}}",
            *(s.value for s in UNFINISHED),
            q.overdue_before,
        )
    return (f" WHERE {' AND '.join(where)}" if where else ""), args


def list_query(d: Dialect, columns: str, q: object, *, count: bool = False) -> tuple[str, list[object]]:
    """SELECT for a SagaQuery: filters in order, newest first, paged."""
    from .._store import SagaQuery

    assert isinstance(q, SagaQuery)
    clause, args = _where(d, q)
    if count:
        return f"SELECT COUNT(*) FROM sagakit_sagas{clause}", args
    args.extend([q.limit, q.offset])
    n = len(args)
    return (
        f"SELECT {columns} FROM sagakit_sagas{clause} ORDER BY created_at DESC, id DESC "
        f"LIMIT {d.param(n - 1)} OFFSET {d.param(n)}",
        args,
    )


def count_by_status_query(d: Dialect, q: object) -> tuple[str, list[object]]:
    """SELECT status, COUNT(*) for a SagaQuery's filters (paging ignored)."""
    clause, args = _where(d, q)
    return f"SELECT status, COUNT(*) FROM sagakit_sagas{clause} GROUP BY status", args
