"""Browser tests: the demo site (``testproject/``) driven by Chromium through Playwright.

The browser is Debian's Chromium (``apt-get install chromium``: ``/usr/bin/chromium``,
or the path in ``HS_TEST_CHROMIUM``), launched by Playwright for Python; Playwright's
own browser downloads are never used. Without the binary (or without the
``playwright`` package) the tests skip, and fail under ``CI=true``
(``tests.conftest.require_server``).

The site runs in a process of its own (``tests/browser/demo_server.py``), with the
demo's settings and its own SQLite file in a temporary directory, on a free loopback
port; the demo users (``demo`` / ``demo-password``, ``admin`` / ``admin-password``) are
created there by the demo's ``demo_users`` command. The test process never touches
that database: everything is checked through the browser, as a user would see it.

Fixtures (package scope unless said otherwise). Nothing of Playwright outlives this
directory's tests: while its sync API is started, the main thread has an asyncio loop
marked as running, and Django's ORM refuses to run there (``SynchronousOnlyOperation``),
which would break the database tests that run after these.

- ``chromium_executable`` (autouse): the browser binary, checked before any server
  starts;
- ``demo_site``: the default demo server (``SameSite=Lax``, db engine); its log is
  ``demo_site.log``, in pytest's temporary directory, kept after the run;
- ``start_demo_site(**env)``: a context manager starting another one with other knobs
  (see ``tests.browser.demo_settings``);
- ``browser``: Chromium; ``new_context()`` (function scope) makes fresh, isolated
  browser contexts (separate cookie jars: separate "devices") closed after the test;
- ``shot(page, step)`` (function scope): a screenshot of the page in
  ``test-artifacts/screenshots/`` (gitignored), named after the test and the step.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require_server

# Re-exported for the test modules; without playwright, ``chromium_executable`` gives up.
try:
    from playwright.sync_api import expect
except ImportError:  # pragma: no cover
    expect = None

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
SERVER_START_TIMEOUT = 60.0
# Each browser step waits at most this long (milliseconds): a hang fails fast.
STEP_TIMEOUT_MS = 10_000

SESSION_COOKIE = "sessionid"
USERS = {"demo": "demo-password", "admin": "admin-password"}

_suffix = re.sub(r"[^A-Za-z0-9]+", "_", os.environ.get("HS_TEST_DB_SUFFIX", "")).strip("_")
# One directory per tox environment, so environments running side by side never write
# the same file.
SCREENSHOT_DIR = REPO_ROOT / "test-artifacts" / "screenshots" / (_suffix or "local")


# --- the demo site ----------------------------------------------------------------------


@dataclass(frozen=True)
class DemoSite:
    url: str  # http://127.0.0.1:PORT, no trailing slash
    log: Path  # the server's stdout and stderr

    def __call__(self, path: str) -> str:
        return f"{self.url}{path}"


def _server_env(**knobs: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HS_DEMO_", "HS_BROWSER_"))}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    # The repository root (tests.*, hardened_sessions) and testproject/ (the demo's
    # ``testproject`` settings package and its ``demo`` app).
    paths = [str(REPO_ROOT), str(REPO_ROOT / "testproject")]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["DJANGO_SETTINGS_MODULE"] = "tests.browser.demo_settings"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(knobs)
    return env


@contextmanager
def _demo_server(workdir: Path, **knobs: str) -> Iterator[DemoSite]:
    workdir.mkdir(parents=True, exist_ok=True)
    port_file = workdir / "port"
    log_path = workdir / "server.log"
    env = _server_env(HS_BROWSER_DB=str(workdir / "demo.sqlite3"), **knobs)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.browser.demo_server", str(port_file)],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while not port_file.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-3000:]
                pytest.fail(
                    f"the demo server did not start (exit status {process.poll()}); "
                    f"log {log_path}:\n{tail}",
                    pytrace=False,
                )
            time.sleep(0.05)
        yield DemoSite(url=f"http://127.0.0.1:{int(port_file.read_text())}", log=log_path)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture(scope="package")
def start_demo_site(
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[..., AbstractContextManager[DemoSite]]:
    """``with start_demo_site(HS_BROWSER_SAMESITE="None") as site: ...``"""

    def start(**knobs: str) -> AbstractContextManager[DemoSite]:
        return _demo_server(tmp_path_factory.mktemp("demo-site"), **knobs)

    return start


@pytest.fixture(scope="package")
def demo_site(
    start_demo_site: Callable[..., AbstractContextManager[DemoSite]],
) -> Iterator[DemoSite]:
    with start_demo_site() as site:
        yield site


# --- the browser ------------------------------------------------------------------------


@pytest.fixture(scope="package", autouse=True)
def chromium_executable() -> str:
    """The browser binary, checked before any server starts: the tests give up here
    without it (skip, or fail under CI) or without the playwright package."""
    executable = os.environ.get("HS_TEST_CHROMIUM") or DEFAULT_CHROMIUM
    if not os.access(executable, os.X_OK):
        require_server(
            "chromium",
            f"no Chromium at {executable} (apt-get install chromium, or set HS_TEST_CHROMIUM)",
        )
    if expect is None:
        require_server("playwright", "the playwright package is not installed (extra 'test')")
    return executable


@pytest.fixture(scope="package")
def browser(chromium_executable: str) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=chromium_executable, args=CHROMIUM_ARGS
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def new_context(browser: Any) -> Iterator[Callable[..., Any]]:
    """Fresh browser contexts (own cookie jars), closed at the end of the test."""
    contexts: list[Any] = []

    def make(**options: Any) -> Any:
        context = browser.new_context(**options)
        context.set_default_timeout(STEP_TIMEOUT_MS)
        contexts.append(context)
        return context

    yield make
    for context in contexts:
        context.close()


@pytest.fixture
def shot(request: pytest.FixtureRequest) -> Callable[[Any, str], Path]:
    """``shot(page, "after-login")``: a full-page screenshot named after the test."""
    test_name = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name).strip("-")

    def take(page: Any, step: str) -> Path:
        SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOT_DIR / f"{test_name}--{step}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return take


# --- helpers for the tests --------------------------------------------------------------


def session_cookie(context: Any) -> dict[str, Any] | None:
    """The session cookie as the browser stores it, or ``None``."""
    for cookie in context.cookies():
        if cookie["name"] == SESSION_COOKIE:
            return dict(cookie)
    return None


def key_hash(value: str) -> str:
    """SHA-256 hex of a session key: how the store and the admin name a session."""
    return hashlib.sha256(value.encode()).hexdigest()


def log_in(page: Any, site: DemoSite, username: str) -> None:
    """Log in through the demo's login form; lands on the home page."""
    page.goto(site("/accounts/login/"))
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", USERS[username])
    page.click("input[type=submit][value='Log in']")
    page.wait_for_url(site("/"))


def logged_in_as(page: Any, site: DemoSite) -> str | None:
    """Load the home page; the username it shows as logged in, or ``None``."""
    page.goto(site("/"))
    cell = page.locator("th:text-is('Logged in') + td").inner_text()
    if cell.startswith("no"):
        return None
    match = re.fullmatch(r"yes, as (\S+)", cell.strip())
    assert match, f"unexpected home page state: {cell!r}"
    return match.group(1)


def replay_cookie(context: Any, site: DemoSite, value: str) -> None:
    """Put a session cookie with ``value`` into ``context``, for the site's host."""
    context.add_cookies([{"name": SESSION_COOKIE, "value": value, "url": site("/")}])
