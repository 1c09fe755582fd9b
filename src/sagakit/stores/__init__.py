"""Store implementations, one module per backend.

``sagakit._store.store_from_url`` picks one by URL and imports it only then:
``memory`` (tests), ``sqlite`` (the embedded default), ``postgres`` (many
workers; needs the ``postgres`` extra).
"""
