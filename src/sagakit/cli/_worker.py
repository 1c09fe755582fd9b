"""``sagakit worker``: a long-running worker process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from typing import TYPE_CHECKING

import click

from .._definition import SagaDefinition
from .._engine import SagaEngine
from .._errors import StoreError
from .._observe import LoggingObserver, Observer
from .._transport import TransportError
from ..admin import DefinitionsNotLoaded, load_definitions

if TYPE_CHECKING:
    from ..prometheus import PrometheusObserver

log = logging.getLogger("sagakit.worker")


@click.command()
@click.argument("targets", nargs=-1, required=True)
@click.option(
    "--store",
    envvar="SAGAKIT_STORE",
    default="sqlite:///sagas.db",
    show_default=True,
    help="Store URL (env SAGAKIT_STORE).",
)
@click.option(
    "--transport",
    envvar="SAGAKIT_TRANSPORT",
    default=None,
    help="Transport URL for message steps (env SAGAKIT_TRANSPORT).",
)
@click.option(
    "--concurrency",
    default=64,
    show_default=True,
    type=click.IntRange(min=1),
    help="Step attempts in flight at once, at most.",
)
@click.option(
    "--lease",
    "lease_seconds",
    default=30.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="Seconds a claim lives before another worker may take over.",
)
@click.option(
    "--grace",
    default=10.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Seconds running attempts get to finish on SIGTERM.",
)
@click.option("--worker-id", default=None, help="Name of this worker in leases and history.")
@click.option(
    "--path", "paths", multiple=True, default=["."], show_default=True, help="Directories added to the import path."
)
@click.option(
    "--allow-module",
    "allow",
    multiple=True,
    metavar="PACKAGE",
    help="For definition files: a package whose modules they may import (repeatable); others are refused.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Serve Prometheus metrics at http://HOST:PORT/metrics (needs the prometheus extra).",
)
@click.option("--metrics-host", default="127.0.0.1", show_default=True, help="Address the metrics server listens on.")
@click.option(
    "--metrics-interval",
    default=15.0,
    show_default=True,
    type=click.FloatRange(min=0.05),
    help="Seconds between reads of the store gauges (sagas per status, outbox, dead letters, stuck age).",
)
@click.option(
    "-v", "--verbose", is_flag=True, help="Log at INFO level (failures are logged at WARNING and ERROR anyway)."
)
def worker(
    targets: tuple[str, ...],
    store: str,
    transport: str | None,
    concurrency: int,
    lease_seconds: float,
    grace: float,
    worker_id: str | None,
    paths: tuple[str, ...],
    allow: tuple[str, ...],
    metrics_port: int | None,
    metrics_host: str,
    metrics_interval: float,
    verbose: bool,
) -> None:
    """Run sagas of TARGETS (modules like myapp.sagas[:attr], or .json/.yaml definition files).

    Claims due sagas from the store, runs their steps and resumes what dead
    workers left. SIGTERM or SIGINT stops claiming, lets running attempts
    finish for --grace seconds and releases every lease before exiting.

    A definition file's modules are imported, which runs their code; with
    --allow-module PACKAGE only modules inside the named packages are.

    Failed attempts are logged at WARNING with their traceback, a saga that
    needs an operator (FAILED) at ERROR. --metrics-port serves Prometheus
    metrics (the engine's and the store's) at /metrics.
    """
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        definitions = load_definitions(targets, path=paths, allow_modules=allow or None)
    except DefinitionsNotLoaded as e:
        raise click.UsageError(str(e)) from None
    metrics = None
    if metrics_port is not None:
        try:
            from ..prometheus import PrometheusObserver, process_registry
        except ImportError as e:
            raise click.UsageError(f"--metrics-port needs the prometheus extra: {e}") from None
        metrics = PrometheusObserver(process_registry())
    try:
        asyncio.run(
            _run(
                definitions, store, transport, concurrency, lease_seconds, grace, worker_id, metrics,
                (metrics_host, metrics_port, metrics_interval),
            )
        )  # fmt: skip
    except (StoreError, TransportError) as e:
        click.echo(f"error: {e}", err=True)
        raise SystemExit(4) from None


async def _run(
    definitions: list[SagaDefinition],
    store: str,
    transport: str | None,
    concurrency: int,
    lease_seconds: float,
    grace: float,
    worker_id: str | None,
    metrics: PrometheusObserver | None = None,
    metrics_at: tuple[str, int | None, float] = ("127.0.0.1", None, 15.0),
) -> None:
    observers: list[Observer] = [LoggingObserver()]
    if metrics is not None:
        observers.append(metrics)
    engine = SagaEngine(
        store,
        transport=transport,
        concurrency=concurrency,
        lease_seconds=lease_seconds,
        shutdown_grace=grace,
        worker_id=worker_id,
        observers=observers,
    )
    engine.register(*definitions)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with engine, contextlib.AsyncExitStack() as stack:
        if metrics is not None:
            from ..prometheus import serve_metrics

            host, port, every = metrics_at
            server = serve_metrics(port or 0, host, metrics.registry)
            stack.callback(server.server_close)
            stack.callback(server.shutdown)
            await stack.enter_async_context(metrics.watch(engine, every))
            shown = f"[{host}]" if ":" in host else host
            print(f"sagakit worker metrics at http://{shown}:{server.server_port}/metrics", flush=True)
        names = ", ".join(f"{d.name} v{d.version}" for d in definitions)
        log.info("worker %s (pid %d) running %s on %s", engine.worker_id, os.getpid(), names, store)
        print(f"sagakit worker {engine.worker_id} ready", flush=True)
        await stop.wait()
        log.info("worker %s stopping", engine.worker_id)
    print(f"sagakit worker {engine.worker_id} stopped", flush=True)


commands: list[click.Command] = [worker]
