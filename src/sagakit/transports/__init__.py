"""Transports, one module per broker; ``sagakit._transport.transport_from_url`` picks one by URL."""
