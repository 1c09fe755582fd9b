"""``sagakit serve``: the HTTP API and the dashboard on any store (``pip install 'sagakit[dashboard]'``)."""

from __future__ import annotations

import ipaddress
import logging

import click

from ._actions import definitions_options, load_app
from ._ops import read_engine, store_option

__all__ = ["commands", "is_loopback", "serve_command"]

_LOOPBACK_NAMES = ["127.0.0.1", "localhost", "::1", "[::1]"]


def is_loopback(host: str) -> bool:
    """Whether *host* is an address (or name) that only this machine can reach."""
    if host.strip("[]") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@click.command("serve")
@store_option
@definitions_options
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option(
    "--token",
    envvar="SAGAKIT_TOKEN",
    show_envvar=True,
    help="Bearer token that actions need. Required to listen on a non-loopback address.",
)
@click.option("--read-only", is_flag=True, help="Refuse every action (403); reads only.")
@click.option("--private", is_flag=True, help="Reads need the token too.")
@click.option("--worker", is_flag=True, help="Also run the sagas' steps in this process (needs --app).")
@click.option(
    "--mask",
    default=None,
    metavar="REGEX",
    help="Keys whose values are masked in payloads (case-insensitive; default: "
    "password|secret|token|card|cvv|iban|api[_-]?key).",
)
@click.option(
    "--allowed-host",
    "allowed_hosts",
    multiple=True,
    metavar="NAME",
    help="Host header to accept (repeatable; default on loopback: 127.0.0.1, localhost, ::1).",
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
    worker: bool,
    mask: str | None,
    allowed_hosts: tuple[str, ...],
    log_level: str,
) -> None:
    """Serve the HTTP API (/api, described at /openapi.json) and the dashboard (/).

    Reads are open (unless --private); actions need Authorization: Bearer TOKEN.
    Without --app the dashboard shows every saga but actions are refused: the
    state machine needs the saga's definition.
    """
    try:
        import uvicorn

        from ..admin import Operations, create_app
        from ..admin._masking import DEFAULT_MASK_PATTERN
    except ImportError as e:
        raise click.UsageError(
            f"sagakit serve needs the dashboard extra ({e}); install it with: pip install 'sagakit[dashboard]'"
        ) from None
    token = token or None
    if not is_loopback(host) and token is None:
        raise click.UsageError(
            f"refusing to serve on {host}, which other machines can reach, without a token: "
            "set --token or SAGAKIT_TOKEN, or listen on 127.0.0.1"
        )
    if worker and not (apps or definition_modules):
        raise click.UsageError("--worker runs the sagas' steps: give their definitions with --app")
    definitions = load_app(apps, definition_modules)
    engine = read_engine(store_url)
    engine.register(*definitions)
    try:
        ops = Operations(
            engine,
            owns_engine=True,
            mask=DEFAULT_MASK_PATTERN if mask is None else (mask or None),
            definitions_hint="start sagakit serve with --app module:attr so that it can import the definition",
        )
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--mask") from None
    hosts = list(allowed_hosts) or (_LOOPBACK_NAMES if is_loopback(host) else None)
    app = create_app(ops, token=token, read_only=read_only, private=private, run_engine=worker, allowed_hosts=hosts)
    actions = "disabled (--read-only)" if read_only else ("need the token" if token else "disabled (no --token)")
    shown = f"[{host}]" if ":" in host else host
    click.echo(
        f"sagakit serve: dashboard at http://{shown}:{port}/ (API /api, OpenAPI /openapi.json) on {store_url}; "
        f"actions {actions}; {len(definitions)} definition(s){'; running workers' if worker else ''}",
        err=True,
    )
    logging.getLogger("sagakit.admin").setLevel(log_level.upper())
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, server_header=False, proxy_headers=False)
    uvicorn.Server(config).run()


commands: list[click.Command] = [serve_command]
