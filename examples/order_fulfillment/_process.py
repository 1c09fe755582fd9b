"""What every process of the example shares: arguments, the stop signal, the ready and summary lines."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from typing import Any

DEFAULT_TRANSPORT = "nats://127.0.0.1:4222"


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--transport", default=DEFAULT_TRANSPORT, help="broker URL (nats://, amqp://, redis://, kafka://)")
    p.add_argument("--log-level", default="WARNING")
    return p


def setup(args: argparse.Namespace, name: str) -> None:
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr, format=f"%(asctime)s {name} %(levelname)s %(message)s"
    )


async def until_stopped() -> None:
    """Wait for SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def say(kind: str, **fields: Any) -> None:
    """One JSON line on stdout for the driver: ``ready`` once consuming, ``summary`` when stopping."""
    print(json.dumps({"kind": kind, **fields}), flush=True)
