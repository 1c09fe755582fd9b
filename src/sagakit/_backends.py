"""Backends (stores, transports) chosen by URL scheme and imported only when used."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

__all__ = ["Backend", "backend_from_url"]

# scheme -> (module, class, extra that installs its client library or None)
Backend = tuple[str, str, str | None]


def backend_from_url(
    url: str, backends: Mapping[str, Backend], *, kind: str, usage: str, error: type[Exception]
) -> Any:
    """``Class.from_url(url)`` of the backend registered for *url*'s scheme (``postgresql+x`` counts as ``postgresql``).

    Raises:
        error: unknown scheme (the message shows *usage*), or the backend's extra is not installed.
    """
    scheme = url.split(":", 1)[0].lower().split("+", 1)[0] if ":" in url else ""
    backend = backends.get(scheme)
    if backend is None:
        raise error(f"unknown {kind} URL {url!r}: use {usage}")
    module_name, cls_name, extra = backend
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        hint = f" Install it with: pip install 'sagakit[{extra}]'" if extra else ""
        raise error(f"the {scheme} {kind} is not available: {e}.{hint}") from e
    return getattr(module, cls_name).from_url(url)
