"""Message-step round trip and sagas/s of a 3-step message saga, per transport.

    python benchmarks/message_roundtrip.py                      # memory, NATS, RabbitMQ, Redis
    python benchmarks/message_roundtrip.py --n 1000 --in-flight 100 nats://127.0.0.1:4222
    python benchmarks/message_roundtrip.py --store postgresql://postgres@127.0.0.1/test?schema=bench

The code is ``benchmarks/transport.py`` (what ``sagakit bench --transport URL`` runs).
Brokers that do not answer are skipped with a note.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for benchmarks.*

from benchmarks.transport import print_transport_bench, run_transport_bench

DEFAULT_URLS = [
    "memory://",
    "nats://127.0.0.1:4222",
    "amqp://guest:guest@127.0.0.1:5672/",
    "redis://127.0.0.1:6379/0",
]


async def main(args: argparse.Namespace) -> None:
    results = []
    for url in args.urls or DEFAULT_URLS:
        try:
            r = await run_transport_bench(
                url, args.n, in_flight=args.in_flight, latency_sagas=args.latency_sagas, store=args.store
            )
        except Exception as e:
            print(f"{url}: skipped ({type(e).__name__}: {e})")
            continue
        results.append(r)
        if args.json:
            print(json.dumps(r))
    if not args.json:
        print_transport_bench(results)


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("urls", nargs="*", help="transport URLs (default: memory, NATS, RabbitMQ, Redis on 127.0.0.1)")
    p.add_argument("--n", type=int, default=500, help="sagas of the load phase")
    p.add_argument("--in-flight", type=int, default=50)
    p.add_argument("--latency-sagas", type=int, default=50)
    p.add_argument("--store", default=None, help="store URL (default: a temporary SQLite file)")
    p.add_argument("--json", action="store_true")
    asyncio.run(main(p.parse_args()))
