"""Store implementations and the URL that picks one.

``open_store(url)`` understands ``memory://``, ``sqlite:///relative.db``,
``sqlite:////absolute/path.db`` and ``postgresql://…``; each backend module is
imported only when its URL is used.
"""

from __future__ import annotations

from .._errors import StoreError
from .._store import Store

__all__ = ["store_from_url"]


def store_from_url(url: str) -> Store:
    """Make (but do not open) the store for *url*.

    Raises:
        StoreError: the URL's scheme is not one sagakit knows.
    """
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "memory":
        from .memory import MemoryStore

        return MemoryStore()
    if scheme == "sqlite":
        from .sqlite import SQLiteStore

        return SQLiteStore.from_url(url)
    if scheme in ("postgresql", "postgres") or scheme.startswith("postgresql+"):
        try:
            from .postgres import PostgresStore  # type: ignore[import-not-found,unused-ignore]
        except ImportError as e:
            raise StoreError(
                f"the PostgreSQL store is not available: {e}. "
                "Install it with: pip install 'sagakit[postgres]'"
            ) from e
        store: Store = PostgresStore.from_url(url)
        return store
    raise StoreError(
        f"unknown store URL {url!r}: use memory://, sqlite:///path.db or postgresql://user@host/db"
    )
