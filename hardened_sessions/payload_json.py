"""The JSON of record payloads: orjson's speed where it gives the json module's answer.

orjson (a dependency of the package on CPython) encodes a 40 KiB session dozens of
times faster than the standard library's ``json`` and parses it about twice as fast.
It also differs from ``json`` in ways that would change what a session holds or which
sessions are accepted: it writes NaN and Infinity as ``null``; it encodes UUID, Enum,
datetime and dataclass values that ``json`` refuses; it refuses non-string keys,
integers beyond 64 bits and lone surrogates; and it parses an integer literal beyond
64 bits as a float. So orjson is only used where its answer is the one ``json`` gives,
and ``json`` remains the reference:

* **encoding**: orjson encodes only data that a survey found to be *plain*: exact
  ``dict`` (string keys), ``list`` and ``tuple`` containers holding exact ``str``,
  ``int``, finite ``float``, ``bool`` and ``None``. Anything else, and anything orjson
  refuses, is encoded by ``json``, with the result or the error it gives today. The two
  encoders may spell a float differently (``1.5e-7`` and ``1.5e-07``); both read back
  as the same value.
* **decoding**: orjson's result is used only when it parsed the payload, and its data
  passed every check of :mod:`hardened_sessions.record` and holds no float of magnitude
  2**63 or more (which could have been a long integer literal). Otherwise ``json``
  parses the payload and its verdict, success or :class:`CorruptRecord`, stands.

The survey also enforces the nesting bound, in time proportional to the number of
containers (not the bytes), so a session of a few large strings costs next to nothing
to check. Without orjson (PyPy, or uninstalled) ``json`` does all of the work, with the
same results.
"""

from __future__ import annotations

import json
import math
from typing import Any

try:  # pragma: no branch - which one depends on the platform
    import orjson
except ImportError:  # pragma: no cover - exercised by forcing the fallback in tests
    orjson = None  # type: ignore[assignment]

__all__ = [
    "TooDeep",
    "dumps",
    "fast_loads",
    "needs_reference",
    "reference_loads",
    "survey",
    "too_deep",
]

_LEAVES = frozenset((str, int, bool, type(None)))
_PLAIN_NODES = _LEAVES | {float, dict, list, tuple}
_CONTAINERS = (dict, list, tuple)
# An integer literal outside [-2**63, 2**64) comes out of orjson as a float.
_LONG_INT_FLOAT = float(2**63)
_ORJSON_OPTIONS = 0 if orjson is None else orjson.OPT_PASSTHROUGH_SUBCLASS
_REFUSED_BY_ORJSON: tuple[type[Exception], ...] = (
    (TypeError, ValueError) if orjson is None else (orjson.JSONEncodeError, TypeError, ValueError)
)


class TooDeep(ValueError):
    """Containers nest deeper than the bound."""


def _not_plain(_value: Any) -> Any:
    # orjson's ``default``: only reached for what the survey let through by mistake.
    raise TypeError("not plain JSON data")


def survey(data: Any, limit: int) -> bool:
    """Whether ``data`` is plain JSON data (see the module docstring).

    Raises :class:`TooDeep` when dicts, lists and tuples (subclasses included) nest
    deeper than ``limit`` levels, ``data`` itself being level 1.
    """
    plain = True
    stack: list[tuple[Any, int]] = [(data, 1)]
    pop, push = stack.pop, stack.append
    while stack:
        node, depth = pop()
        if depth > limit:
            raise TooDeep(f"The session data is nested deeper than {limit} levels.")
        kind = type(node)
        if kind is dict:
            values = node.values()
            if plain and node and set(map(type, node)) != {str}:
                plain = False
        elif kind is list or kind is tuple:
            values = node
        else:  # a subclass of a container: json encodes it, and it counts for depth
            plain = False
            values = node.values() if isinstance(node, dict) else node
        kinds = set(map(type, values))
        if kinds <= _LEAVES:
            continue
        if plain and (
            not kinds <= _PLAIN_NODES
            or (float in kinds and not all(math.isfinite(v) for v in values if type(v) is float))
        ):
            plain = False
        if any(issubclass(k, _CONTAINERS) for k in kinds):
            for child in values:
                if isinstance(child, _CONTAINERS):
                    push((child, depth + 1))
    return plain


def too_deep(data: Any, limit: int) -> bool:
    """Whether containers in ``data`` nest deeper than ``limit`` levels."""
    try:
        survey(data, limit)
    except TooDeep:
        return True
    return False


# -- encoding ---------------------------------------------------------------------------

_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_ascii_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def _reference_dumps(payload: dict[str, Any]) -> bytes:
    try:
        text = _encoder.encode(payload)
    except RecursionError:
        raise TooDeep("The session data is nested too deeply to be stored.") from None
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate (from json.loads of a request body, say) has no UTF-8 form:
        # escape it as JSON does, which reads back to the same string.
        return _ascii_encoder.encode(payload).encode("ascii")


def dumps(payload: dict[str, Any], data: Any, limit: int) -> bytes:
    """UTF-8 JSON of ``payload``, whose only container is ``data``.

    Raises :class:`TooDeep` past the nesting bound, and ``TypeError``/``ValueError``
    for what ``json`` cannot encode (NaN, objects, ...), as ``json`` does.
    """
    plain = survey(data, limit)
    if plain and orjson is not None:
        try:
            return orjson.dumps(payload, default=_not_plain, option=_ORJSON_OPTIONS)
        except _REFUSED_BY_ORJSON:
            pass  # integers beyond 64 bits, lone surrogates: json's answer below
    return _reference_dumps(payload)


# -- decoding ---------------------------------------------------------------------------


def _parse_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name}")


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("non-finite number")
    return value


_decoder = json.JSONDecoder(parse_float=_parse_float, parse_constant=_parse_constant)


def reference_loads(body: bytes | memoryview) -> Any:
    """``json``'s parse of UTF-8 ``body``: no NaN, no Infinity, no number out of range.

    Raises ``ValueError`` (``UnicodeDecodeError`` included) or ``RecursionError``.
    """
    return _decoder.decode(str(body, "utf-8"))


def fast_loads(body: bytes | memoryview) -> Any | None:
    """orjson's parse of ``body``, or ``None`` when ``json`` must decide.

    The caller still checks the result as it checks ``json``'s, and falls back to
    :func:`reference_loads` when a check fails (see :func:`needs_reference`).
    """
    if orjson is None:
        return None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def needs_reference(data: Any, limit: int) -> bool:
    """Whether orjson's parse of ``data`` cannot stand: it nests deeper than ``limit``
    (so ``json`` gives the verdict), or holds a float that may have been a long integer."""
    if type(data) is dict and set(map(type, data.values())) <= _LEAVES:
        return False  # the common case: a flat session
    stack: list[tuple[Any, int]] = [(data, 1)]
    pop, push = stack.pop, stack.append
    while stack:
        node, depth = pop()
        if depth > limit:
            return True
        values = node.values() if type(node) is dict else node
        kinds = set(map(type, values))
        if kinds <= _LEAVES:
            continue
        if float in kinds:
            for v in values:
                if type(v) is float and not -_LONG_INT_FLOAT < v < _LONG_INT_FLOAT:
                    return True
        if dict in kinds or list in kinds:
            for child in values:
                if type(child) is dict or type(child) is list:
                    push((child, depth + 1))
    return False
