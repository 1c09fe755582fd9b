"""``sagakit serve``: the HTTP API and the dashboard on any store (``pip install 'sagakit[dashboard]'``).

Safe by default: it listens on 127.0.0.1. On an address that other machines
can reach it needs a strong token (``MIN_TOKEN_LENGTH`` characters or more,
no whitespace) and asks it for reads too, unless ``--public-reads`` opens them.
"""

from __future__ import annotations

import ipaddress
import logging

import click

from .._masking import hide_password
from .._observe import LoggingObserver, Observer
from ._actions import definitions_options, load_app
from ._ops import mask_options, masker, read_engine, store_option

__all__ = ["MIN_TOKEN_LENGTH", "commands", "is_loopback", "reads_need_token", "serve_command"]

MIN_TOKEN_LENGTH = 16
_LOOPBACK_NAMES = ["127.0.0.1", "localhost", "::1", "[::1]"]
_MAKE_TOKEN = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"


def is_loopback(host: str) -> bool:
    """Whether *host* is an address (or name) that only this machine can reach."""
    if host.strip("[]") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def reads_need_token(host: str, token: str | None, *, private: bool = False, public_reads: bool = False) -> bool:
    """Check the token against the rules for *host*; whether reads need the token.

    On loopback reads are open unless *private*. On any other address the
    token must be given, at least ``MIN_TOKEN_LENGTH`` characters long and
    without whitespace, and reads need it unless *public_reads*.

    Raises:
        click.UsageError: a rule is broken; the message names it and the fix.
    """
    if private and public_reads:
        raise click.UsageError("--private and --public-reads contradict each other: give one of them")
    if token is not None and any(c.isspace() for c in token):
        raise click.UsageError(
            f"the token ({len(token)} characters) contains whitespace, which a bearer header cannot carry "
            f"intact: use one word of at least {MIN_TOKEN_LENGTH} characters, e.g. from: {_MAKE_TOKEN}"
        )
    if is_loopback(host):
        if private and token is None:
            raise click.UsageError("--private makes reads need the token: set --token or SAGAKIT_TOKEN")
        return private
    if token is None:
        raise click.UsageError(
            f"refusing to serve on {host}, which other machines can reach, without a token: set --token or "
            f"SAGAKIT_TOKEN to at least {MIN_TOKEN_LENGTH} characters (e.g. from: {_MAKE_TOKEN}), "
            "or listen on 127.0.0.1 behind a reverse proxy"
        )
    if len(token) < MIN_TOKEN_LENGTH:
        raise click.UsageError(
            f"refusing to serve on {host}, which other machines can reach, with a token of {len(token)} "
            f"character(s): it needs at least {MIN_TOKEN_LENGTH}; generate one with: {_MAKE_TOKEN}"
        )
    return not public_reads


@click.command("serve")
@store_option
@definitions_options
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option(
    "--token",
    envvar="SAGAKIT_TOKEN",
    show_envvar=True,
    help=f"Bearer token that actions need. Required, of {MIN_TOKEN_LENGTH}+ characters without whitespace, "
    "to listen on a non-loopback address (where reads need it too).",
)
@click.option("--read-only", is_flag=True, help="Refuse every action (403); reads only.")
@click.option("--private", is_flag=True, help="Reads need the token too (the default on a non-loopback address).")
@click.option(
    "--public-reads",
    is_flag=True,
    help="On a non-loopback address, let anyone who can reach it read every saga (masked) without the token.",
)
@click.option("--worker", is_flag=True, help="Also run the sagas' steps in this process (needs --app).")
@mask_options
@click.option(
    "--allowed-host",
    "allowed_hosts",
    multiple=True,
    metavar="NAME",
    help="Host header to accept (repeatable; default on loopback: the address, 127.0.0.1, localhost, ::1).",
)
@click.option(
    "--metrics",
    is_flag=True,
    help="Serve Prometheus metrics at /metrics (the store's gauges; with --worker the engine's too). "
    "Needs the prometheus extra; reads the same access rules as the API.",
)
@click.option("--log-level", default="info", show_default=True, type=click.Choice(["debug", "info", "warning"]))
def serve_command(
    store_url: str,
    apps: tuple[str, ...],
    definition_modules: tuple[str, ...],
    host: str,
    port: int,
    token: str | None,
    read_only: bool,
    private: bool,
    public_reads: bool,
    worker: bool,
    mask: str | None,
    mask_extra: tuple[str, ...],
    allowed_hosts: tuple[str, ...],
    metrics: bool,
    log_level: str,
) -> None:
    """Serve the HTTP API (/api, described at /openapi.json) and the dashboard (/).

    On 127.0.0.1 (the default) reads are open unless --private; on any other
    address reads need the token unless --public-reads. Actions always need
    Authorization: Bearer TOKEN. Without --app the dashboard shows every saga
    but actions are refused: the state machine needs the saga's definition.
    """
    try:
        import uvicorn

        from ..admin import Operations, create_app
    except ImportError as e:
        raise click.UsageError(
            f"sagakit serve needs the dashboard extra ({e}); install it with: pip install 'sagakit[dashboard]'"
        ) from None
    token = token or None
    private = reads_need_token(host, token, private=private, public_reads=public_reads)
    policy = masker(mask, mask_extra)
    if worker and not (apps or definition_modules):
        raise click.UsageError("--worker runs the sagas' steps: give their definitions with --app")
    definitions = load_app(apps, definition_modules)
    observer = None
    if metrics:
        try:
            from ..prometheus import PrometheusObserver, process_registry
        except ImportError as e:
            raise click.UsageError(f"--metrics needs the prometheus extra: {e}") from None
        observer = PrometheusObserver(process_registry())
    observers: list[Observer] = [LoggingObserver()] if worker else []  # a worker logs failures, as `sagakit worker`
    if observer is not None:
        observers.append(observer)
    engine = read_engine(store_url, observers=observers)
    engine.register(*definitions)
    ops = Operations(
        engine,
        owns_engine=True,
        mask=policy,
        definitions_hint="start sagakit serve with --app module:attr so that it can import the definition",
    )
    hosts = list(allowed_hosts) or (sorted({host, *_LOOPBACK_NAMES}) if is_loopback(host) else None)
    app = create_app(
        ops,
        token=token,
        read_only=read_only,
        private=private,
        run_engine=worker,
        allowed_hosts=hosts,
        metrics=observer,
    )
    actions = "disabled (--read-only)" if read_only else ("need the token" if token else "disabled (no --token)")
    reads = "need the token" if private else "open"
    shown = f"[{host}]" if ":" in host else host
    store = hide_password(store_url)
    click.echo(
        f"sagakit serve: dashboard at http://{shown}:{port}/ (API /api, OpenAPI /openapi.json"
        f"{', metrics /metrics' if metrics else ''}) on {store}; "
        f"reads {reads}; actions {actions}; {len(definitions)} definition(s){'; running workers' if worker else ''}",
        err=True,
    )
    logging.getLogger("sagakit.admin").setLevel(log_level.upper())
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, server_header=False, proxy_headers=False)
    uvicorn.Server(config).run()


commands: list[click.Command] = [serve_command]
