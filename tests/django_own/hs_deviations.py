"""The accepted deviations from Django's own tests (``deviations.toml``) and the runner
that applies them.

Each entry of ``deviations.toml``::

    [[deviation]]
    tests = ["module.tests.SomeTests.test_something"]   # test ids, or class ids
    engines = ["db", "cache", "cached_db"]   # the hardened engines that fail it
    stock = ["cache"]     # optional: the engines where Django's own engine fails it
    since = "6.0"         # optional: the Django version that added the tests
    reason = "why the hardened engine behaves differently, and why that is right"

:class:`DeviationRunner` (``TEST_RUNNER`` in ``hs_settings.py``) marks the matching
tests as expected failures, so that each must still fail: one that starts passing is an
"unexpected success" and fails the run, and the list cannot go stale unnoticed. In the
stock baseline (``run.py --stock``) an entry applies only to the engines in its
``stock`` list, so the baseline checks both claims: Django's own engine fails the test
there, and passes it on every other engine.
"""

from __future__ import annotations

import hashlib
import os
import re
import tomllib
import unittest
from dataclasses import dataclass
from inspect import iscoroutinefunction
from pathlib import Path
from typing import Any

from django.test.runner import DiscoverRunner
from django.test.utils import iter_test_cases

DEVIATIONS_FILE = Path(__file__).resolve().with_name("deviations.toml")
ENGINE_KINDS = ("db", "cache", "cached_db")
STOCK_MIDDLEWARE = "django.contrib.sessions.middleware.SessionMiddleware"
HARDENED_MIDDLEWARE = "hardened_sessions.middleware.HardenedSessionMiddleware"
HARDENED_APP = "hardened_sessions"
_KEYS = {"tests", "engines", "stock", "since", "reason"}


@dataclass(frozen=True)
class Deviation:
    """One test (or class) of one entry of the list."""

    test: str
    engines: tuple[str, ...]
    stock: tuple[str, ...]
    reason: str
    since: tuple[int, int] = (0, 0)

    def matches(self, test_id: str) -> bool:
        return test_id == self.test or test_id.startswith(self.test + ".")

    def module(self) -> str:
        return self.test.split(".", 1)[0]


def digest(path: Path | None = None) -> str:
    """SHA-256 of the list's bytes: what the stock baseline record is checked against."""
    return hashlib.sha256((path or DEVIATIONS_FILE).read_bytes()).hexdigest()


def load(path: Path | None = None) -> list[Deviation]:
    """Parse and check the list, one item per test id; raise ``ValueError`` naming the
    first bad entry."""
    path = path or DEVIATIONS_FILE
    with path.open("rb") as handle:
        data = tomllib.load(handle)
    if set(data) - {"deviation"}:
        raise ValueError(f"{path}: unknown top-level keys {sorted(set(data) - {'deviation'})}")
    deviations = []
    seen: set[str] = set()
    for number, raw in enumerate(data.get("deviation", []), start=1):
        where = f"{path.name}, entry {number}"
        if set(raw) - _KEYS or not {"tests", "engines", "reason"} <= set(raw):
            raise ValueError(f"{where}: keys: tests, engines, reason; optionally stock, since")
        tests, engines, reason = raw["tests"], raw["engines"], raw["reason"]
        stock = raw.get("stock", [])
        if (
            not isinstance(tests, list)
            or not tests
            or not all(isinstance(t, str) and t.count(".") >= 2 for t in tests)
            or seen & set(tests)
            or len(set(tests)) != len(tests)
        ):
            raise ValueError(f"{where}: tests must be unique ids (module.file.Class[.method])")
        if not _engine_list(engines) or not _engine_list(stock) or not (engines or stock):
            raise ValueError(f"{where}: engines and stock must be lists of {ENGINE_KINDS}")
        if not isinstance(reason, str) or len(reason.split()) < 5:
            raise ValueError(f"{where}: give the reason in a sentence")
        since = raw.get("since", "0.0")
        if not isinstance(since, str) or not re.fullmatch(r"\d+\.\d+", since):
            raise ValueError(f"{where}: since must be a Django feature version, e.g. '6.0'")
        major, minor = (int(part) for part in since.split("."))
        seen.update(tests)
        reason = " ".join(reason.split())
        deviations.extend(
            Deviation(t, tuple(engines), tuple(stock), reason, (major, minor)) for t in tests
        )
    return deviations


def applicable(engine: str, mode: str, path: Path | None = None) -> list[Deviation]:
    """The entries that apply to ``engine`` in ``mode`` (``hardened`` or ``stock``) on the
    installed Django."""
    import django

    return [
        d
        for d in load(path)
        if engine in (d.engines if mode == "hardened" else d.stock) and d.since <= django.VERSION
    ]


def _engine_list(value: object) -> bool:
    return (
        isinstance(value, list)
        and set(value) <= set(ENGINE_KINDS)
        and len(set(value)) == len(value)
    )


class _ExpectedToFail:
    """Stands in for a test method listed as a deviation.

    Set on the test *instance* (its class, shared with other tests, stays as it is)
    and wrapped with ``unittest.expectedFailure``. Plain data, so that the test case
    still pickles for ``--parallel``.
    """

    def __init__(self, test: unittest.TestCase, name: str) -> None:
        self.test = test
        self.name = name

    def __call__(self) -> Any:
        method = getattr(type(self.test), self.name).__get__(self.test)
        if iscoroutinefunction(method):
            from asgiref.sync import async_to_sync

            return async_to_sync(method)()
        return method()


def check_configuration(engine: str, mode: str) -> None:
    """Fail loudly unless the run is set up as ``mode`` says (runtests.py sets a lot)."""
    from django.apps import apps
    from django.conf import settings

    hardened = mode == "hardened"
    package = "hardened_sessions" if hardened else "django.contrib.sessions"
    wanted = {
        "SESSION_ENGINE": f"{package}.backends.{engine}",
        "session middleware": HARDENED_MIDDLEWARE if hardened else STOCK_MIDDLEWARE,
        f"{HARDENED_APP} installed": hardened,
        "django.contrib.sessions installed": True,
    }
    found = {
        "SESSION_ENGINE": settings.SESSION_ENGINE,
        "session middleware": settings.MIDDLEWARE[0],
        f"{HARDENED_APP} installed": apps.is_installed(HARDENED_APP),
        "django.contrib.sessions installed": apps.is_installed("django.contrib.sessions"),
    }
    other = STOCK_MIDDLEWARE if hardened else HARDENED_MIDDLEWARE
    if found != wanted or other in settings.MIDDLEWARE:
        raise RuntimeError(f"not the {mode} {engine} configuration: {found} != {wanted}")


def expect_failure(test: unittest.TestCase) -> None:
    """Make ``test`` an expected failure, as ``@unittest.expectedFailure`` would."""
    name = test.id().rsplit(".", 1)[1]
    setattr(test, name, unittest.expectedFailure(_ExpectedToFail(test, name)))


class DeviationRunner(DiscoverRunner):
    """Django's DiscoverRunner, with the listed deviations expected to fail."""

    def build_suite(self, test_labels: Any = None, **kwargs: Any) -> Any:
        suite = super().build_suite(test_labels, **kwargs)
        engine = os.environ["HS_DJANGO_OWN_ENGINE"]
        mode = os.environ["HS_DJANGO_OWN_MODE"]
        check_configuration(engine, mode)
        deviations = applicable(engine, mode)
        used: set[Deviation] = set()
        for test in iter_test_cases(suite):
            test_id = test.id()
            for deviation in deviations:
                if deviation.matches(test_id):
                    used.add(deviation)
                    expect_failure(test)
                    break
        # A whole module run without one of its entries' tests: the entry is stale
        # (renamed or removed upstream). Partial runs (-k, single tests) are not checked.
        whole_modules = {label for label in test_labels or () if "." not in label}
        if not self.test_name_patterns:
            stale = [d.test for d in deviations if d.module() in whole_modules and d not in used]
            if stale:
                raise RuntimeError(
                    f"{DEVIATIONS_FILE.name} lists tests that do not exist in this Django "
                    f"version: {', '.join(stale)}"
                )
        print(
            f"{len(used)} deviation(s) of {DEVIATIONS_FILE.name} expected to fail on "
            f"{mode} {engine}: {', '.join(sorted(d.test for d in used)) or 'none'}"
        )
        return suite
