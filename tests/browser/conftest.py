"""Browser tests: the real server (`python -m service` on the shipped zoo) driven by headless Chromium.

Chromium is Debian's (/usr/bin/chromium, installed by CI with apt), driven through Playwright's Python package
with `executable_path`; nothing is downloaded. The tests skip, saying why, only where that binary is absent.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.store.layout import model_names

REPO = Path(__file__).resolve().parents[2]
STORE = REPO / "models_store"
ARTIFACTS = REPO / "tests" / "artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
READY_TIMEOUT_S = 60.0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests here that drive a browser are marked `browser` and skip, saying why, where Chromium is absent."""
    here = Path(__file__).parent
    reason = f"{CHROMIUM} is absent: install Debian's chromium (apt-get install chromium)"
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        drives_browser = {"page", "browser"} & set(getattr(item, "fixturenames", ()))
        if Path(str(item.fspath)).is_relative_to(here) and drives_browser:
            item.add_marker(pytest.mark.browser)
            if not CHROMIUM.exists():
                item.add_marker(skip)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    url: str
    models: list[dict[str, Any]]

    def model(self, *needs: str, prefer: tuple[str, ...] = ()) -> dict[str, Any]:
        """A served model with every capability in `needs`, the first of `prefer` that qualifies if any."""
        ok = [m for m in self.models if set(needs) <= set(m["capabilities"])]
        if not ok:
            pytest.fail(f"no model in {STORE} has the capabilities {needs}")
        for name in prefer:
            for m in ok:
                if m["name"] == name:
                    return m
        return ok[0]


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the server exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            r = httpx.get(f"{url}/health/ready", timeout=2.0)
            if r.status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    pytest.fail(f"the server was not ready within {READY_TIMEOUT_S} s:\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`python -m service` on a free port, serving the shipped zoo in models_store/."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent")
    if not model_names(STORE):
        pytest.fail(f"{STORE} has no models: the playground tests need the shipped zoo (make models)")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("server") / "server.log"
    env = os.environ | {
        "LATENTSERVE_STORE": str(STORE), "LATENTSERVE_HOST": "127.0.0.1", "LATENTSERVE_PORT": str(port),
        "LATENTSERVE_API_KEYS": "", "LATENTSERVE_RELOAD_INTERVAL_S": "0",
    }
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "service"], cwd=REPO, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        _wait_ready(url, proc, log)
        models = httpx.get(f"{url}/v1/models", timeout=10.0).json()["models"]
        yield Server(url=url, models=models)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    # Module scope, not session: Playwright's sync API keeps an event loop marked running in this thread
    # while it is open, so asyncio/anyio tests that a worker runs afterwards would fail with "Cannot run
    # the event loop while another loop is running".
    from playwright.sync_api import sync_playwright  # the dev extra has it; a missing one is an error

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@dataclass
class Console:
    """What the page said: console messages of type error, and uncaught exceptions."""

    errors: list[str] = field(default_factory=list)


@pytest.fixture
def page(browser: Any, server: Server) -> Iterator[Any]:
    """A fresh desktop-sized page whose console errors are collected in `page.console_log`."""
    context = browser.new_context(viewport={"width": 1200, "height": 900}, base_url=server.url)
    pg = context.new_page()
    pg.set_default_timeout(20_000)
    console = Console()
    pg.on("console", lambda m: console.errors.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: console.errors.append(f"uncaught: {e}"))
    pg.console_log = console
    try:
        yield pg
    finally:
        context.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Where screenshots go (git-ignored)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
