"""Prometheus metrics, on with ``HARDENED_SESSIONS["METRICS"] = True``.

Needs ``prometheus_client`` (``pip install django-hardened-sessions[metrics]``). This
module is imported only when the setting is on; with it off nothing here runs and
``prometheus_client`` is never imported.

The metrics live in ``prometheus_client``'s default registry, so whatever exposes that
registry exposes them: django-prometheus's ``/metrics`` view, or
``prometheus_client``'s own (``make_wsgi_app()``, ``start_http_server()``).

``hardened_sessions_events_total{event, reason, engine}``
    One per signal sent (``created``, ``rotated``, ``revoked``, ``expired``,
    ``rejected``, ``conflict_merged``). ``reason`` is the signal's
    :class:`~hardened_sessions.signals.Reason`; for ``expired`` it is where the
    session was found expired: ``load``, or ``sweep`` (counted per session deleted).
``hardened_sessions_store_errors_total{engine, operation}``
    Store failures (``SessionStoreUnavailable``) met by an engine's store access.
``hardened_sessions_store_operation_seconds{engine, operation}``
    Duration of each store access; ``operation`` is ``read``, ``write_new``,
    ``write_update`` or ``remove``.

``engine`` is the engine's module name for the package's own engines (``db``,
``cache``, ``cached_db``), else the dotted path of its class.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from time import perf_counter
from typing import Any, TypeVar

from prometheus_client import Counter, Histogram

from .exceptions import SessionStoreUnavailable

__all__ = ["EVENTS", "STORE_ERRORS", "STORE_SECONDS", "count_event", "engine_label", "timed"]

T = TypeVar("T")

EVENTS = Counter(
    "hardened_sessions_events",
    "Session lifecycle events (created, rotated, revoked, expired, rejected, conflict_merged).",
    ("event", "reason", "engine"),
)
STORE_ERRORS = Counter(
    "hardened_sessions_store_errors",
    "Store accesses that failed with SessionStoreUnavailable.",
    ("engine", "operation"),
)
STORE_SECONDS = Histogram(
    "hardened_sessions_store_operation_seconds",
    "Duration of session store accesses.",
    ("engine", "operation"),
    # Sub-millisecond local stores up to the socket timeouts of a failing network store.
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
             0.5, 1.0, 2.5, 5.0, 10.0),
)  # fmt: skip

_OPERATIONS = {
    "_read": "read",
    "_read_for_update": "read",
    "_write_new": "write_new",
    "_write_update": "write_update",
    "_remove": "remove",
}
_ENGINE_PACKAGE = "hardened_sessions.backends."
_labels: dict[Any, str] = {}
# (engine class, primitive's name) -> the labelled histogram and counter: ``labels()``
# takes a lock and builds tuples, a tenth of the cost of a fast store access.
_by_operation: dict[tuple[Any, str], tuple[Any, Any]] = {}


def engine_label(sender: Any) -> str:
    """The ``engine`` label of an engine class (or instance)."""
    cls = sender if isinstance(sender, type) else type(sender)
    label = _labels.get(cls)
    if label is None:
        module = cls.__module__
        if module.startswith(_ENGINE_PACKAGE) and cls.__name__ == "SessionStore":
            label = module[len(_ENGINE_PACKAGE) :]
        else:
            label = f"{module}.{cls.__qualname__}"
        _labels[cls] = label
    return label


def count_event(event: str, sender: Any, kwargs: Mapping[str, Any]) -> None:
    """Count one signal (``sessions_swept`` counts ``count`` expired sessions)."""
    engine = engine_label(sender)
    if event == "swept":
        if kwargs["count"]:
            EVENTS.labels("expired", "sweep", engine).inc(kwargs["count"])
    elif event == "expired":
        EVENTS.labels(event, kwargs.get("where", "load"), engine).inc()
    else:
        EVENTS.labels(event, str(kwargs.get("reason", "")), engine).inc()


def _children(engine: Any, name: str) -> tuple[Any, Any]:
    key = (type(engine), name)
    children = _by_operation.get(key)
    if children is None:
        labels = (engine_label(engine), _OPERATIONS.get(name, name.lstrip("_")))
        children = (STORE_SECONDS.labels(*labels), STORE_ERRORS.labels(*labels))
        _by_operation[key] = children
    return children


def timed(engine: Any, operation: Callable[..., T], args: tuple[Any, ...]) -> T:
    """Run one store access of ``engine``, timing it and counting its failure."""
    seconds, errors = _children(engine, operation.__name__)
    start = perf_counter()
    try:
        return operation(*args)
    except SessionStoreUnavailable:
        errors.inc()
        raise
    finally:
        seconds.observe(perf_counter() - start)


async def atimed(
    engine: Any, name: str, operation: Callable[..., Awaitable[T]], args: tuple[Any, ...]
) -> T:
    """:func:`timed` for an async store access; ``name`` is the sync primitive's name
    (``_read``, ...), so both paths count under the same labels."""
    seconds, errors = _children(engine, name)
    start = perf_counter()
    try:
        return await operation(*args)
    except SessionStoreUnavailable:
        errors.inc()
        raise
    finally:
        seconds.observe(perf_counter() - start)
