"""Transports: one module per broker, and what a new transport implements.

``transport_from_url`` picks one by URL (``memory://``, ``nats://``,
``amqp://``, ``redis://``, ``kafka://``) and imports its client only then. A
transport implements the ``Transport`` protocol; it hands each message to its
handler as a ``Delivery`` and raises ``TransportError``. The transport
contract tests (``tests/transports/contract.py`` in the repository) check one.
"""

from .._transport import Delivery, Handler, Transport, TransportError, transport_from_url

__all__ = ["Delivery", "Handler", "Transport", "TransportError", "transport_from_url"]
