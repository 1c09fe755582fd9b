"""``sagakit serve``'s access rules: loopback by default; elsewhere a strong token, needed for reads too.

Nothing here listens on a non-loopback address: ``uvicorn.Server.run`` is
replaced by a stub that keeps the app ``serve`` built, and the app is called
in-process. A refusal must come before the stub is reached.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import click
import httpx
import pytest
import uvicorn
from click.testing import CliRunner, Result

from sagakit.cli._main import cli
from sagakit.cli._serve import MIN_TOKEN_LENGTH, reads_need_token

from .conftest import Seed, seed_sync

STRONG = "s3rve-t0ken-0f-24-chars"
APP = ["--app", "tests.admin.sample_app:order"]


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Seed:
    return seed_sync(f"sqlite:///{tmp_path_factory.mktemp('serve')}/sagas.db")


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[uvicorn.Config]]:
    """The configs ``serve`` would have run, instead of running them."""
    configs: list[uvicorn.Config] = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda server, sockets=None: configs.append(server.config))
    monkeypatch.delenv("SAGAKIT_TOKEN", raising=False)
    yield configs


def serve(seed: Seed, *args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner(env=env).invoke(cli, ["serve", "--store", seed.url, *args], catch_exceptions=False)


@pytest.fixture
async def client() -> AsyncIterator[Any]:
    """A client of the app of a config ``serve`` built, naming the host it was told to listen on."""
    made: list[tuple[httpx.AsyncClient, Any]] = []

    def make(config: uvicorn.Config) -> httpx.AsyncClient:
        c = httpx.AsyncClient(transport=httpx.ASGITransport(app=config.app), base_url=f"http://{config.host}")
        made.append((c, config.app))
        return c

    yield make
    for c, app in made:
        await c.aclose()
        await app.state.ops.close()


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("token", "message"),
    [
        (None, "refusing to serve on 0.0.0.0, which other machines can reach, without a token: set --token"),
        ("x", "with a token of 1 character(s): it needs at least 16; generate one with: python -c"),
        ("fifteen-chars-1", "with a token of 15 character(s): it needs at least 16"),
        ("   ", "the token (3 characters) contains whitespace"),
        ("correct horse battery staple", "the token (28 characters) contains whitespace"),
        ("tab\tinside-a-long-token", "contains whitespace, which a bearer header cannot carry intact"),
    ],
)
def test_weak_tokens_are_refused_off_loopback(
    seeded: Seed, served: list[uvicorn.Config], token: str | None, message: str
) -> None:
    r = serve(seeded, "--host", "0.0.0.0", *(["--token", token] if token is not None else []))
    assert r.exit_code == 2, r.output
    assert message in " ".join(r.output.split()), r.output
    assert served == []  # refused before listening
    if token is not None and token.strip():
        assert token not in r.output  # the message names the rule, never the secret


def test_a_weak_token_from_the_environment_is_refused_too(seeded: Seed, served: list[uvicorn.Config]) -> None:
    r = serve(seeded, "--host", "192.0.2.10", env={"SAGAKIT_TOKEN": " "})
    assert r.exit_code == 2
    assert "contains whitespace" in r.output
    r = serve(seeded, "--host", "::", env={"SAGAKIT_TOKEN": "short"})
    assert r.exit_code == 2
    assert "refusing to serve on ::, which other machines can reach, with a token of 5 character(s)" in r.output
    assert served == []


def test_contradicting_flags_and_private_without_token(seeded: Seed, served: list[uvicorn.Config]) -> None:
    r = serve(seeded, "--host", "0.0.0.0", "--token", STRONG, "--private", "--public-reads")
    assert r.exit_code == 2
    assert "--private and --public-reads contradict each other" in r.output
    r = serve(seeded, "--private")
    assert r.exit_code == 2
    assert "--private makes reads need the token: set --token or SAGAKIT_TOKEN" in r.output
    assert served == []


def test_the_rules_as_a_function() -> None:
    assert reads_need_token("127.0.0.1", None) is False
    assert reads_need_token("localhost", "x") is False  # loopback: any token, reads open
    assert reads_need_token("::1", "x", private=True) is True
    assert reads_need_token("0.0.0.0", "a" * MIN_TOKEN_LENGTH) is True
    assert reads_need_token("10.0.0.5", "a" * MIN_TOKEN_LENGTH, public_reads=True) is False
    assert reads_need_token("10.0.0.5", "a" * MIN_TOKEN_LENGTH, private=True) is True
    for host, token in [("0.0.0.0", None), ("0.0.0.0", "a" * (MIN_TOKEN_LENGTH - 1)), ("127.0.0.1", "a b")]:
        with pytest.raises(click.UsageError):
            reads_need_token(host, token)


# ---------------------------------------------------------------- reads


async def test_reads_need_the_token_off_loopback(seeded: Seed, served: list[uvicorn.Config], client: Any) -> None:
    r = serve(seeded, "--host", "0.0.0.0", "--token", STRONG, *APP)
    assert r.exit_code == 0, r.output
    assert "reads need the token; actions need the token" in r.output
    (config,) = served
    assert (config.host, config.port) == ("0.0.0.0", 8080)
    c = client(config)
    auth = {"Authorization": f"Bearer {STRONG}"}
    for path in ("/api/info", "/api/sagas", f"/api/sagas/{seeded.failed[0]}", "/api/overview"):
        r = await c.get(path)
        assert r.status_code == 401, path
        assert r.json()["error"]["message"] == "send Authorization: Bearer <token>"
        assert (await c.get(path, headers={"Authorization": "Bearer wrong-token-of-24-chars"})).status_code == 403
        assert (await c.get(path, headers=auth)).status_code == 200, path
    assert (await c.get("/api/info", headers=auth)).json()["private"] is True
    assert (await c.get("/")).status_code == 200  # the dashboard's page holds no data


async def test_public_reads_open_reads_but_not_actions(seeded: Seed, served: list[uvicorn.Config], client: Any) -> None:
    r = serve(seeded, "--host", "0.0.0.0", "--token", STRONG, "--public-reads", *APP)
    assert r.exit_code == 0, r.output
    assert "reads open; actions need the token" in r.output
    c = client(served[0])
    r = await c.get("/api/sagas", params={"status": "failed"})
    assert (r.status_code, r.json()["total"]) == (200, 2)
    assert (await c.get(f"/api/sagas/{seeded.failed[0]}")).json()["data"]["password"] == "***"
    r = await c.post(f"/api/sagas/{seeded.failed[0]}/retry", json={})
    assert r.status_code == 401


async def test_private_is_still_accepted(seeded: Seed, served: list[uvicorn.Config], client: Any) -> None:
    r = serve(seeded, "--host", "0.0.0.0", "--token", STRONG, "--private")
    assert r.exit_code == 0, r.output
    r = serve(seeded, "--token", "short", "--private")  # loopback: any token
    assert r.exit_code == 0, r.output
    for config in served:
        assert (await client(config).get("/api/sagas")).status_code == 401


async def test_loopback_keeps_open_reads_and_its_own_host_name(
    seeded: Seed, served: list[uvicorn.Config], client: Any
) -> None:
    r = serve(seeded, "--host", "127.0.0.2", "--token", "tiny")
    assert r.exit_code == 0, r.output
    assert "reads open" in r.output
    c = client(served[0])
    assert (await c.get("/api/sagas")).status_code == 200  # Host: 127.0.0.2 is accepted
    assert (await c.get("/api/sagas", headers={"host": "attacker.example"})).status_code == 400
