"""No private attribute of another package is read or written anywhere in the package.

A private attribute of redis-py, django-redis, pymemcache or Django's caches changes
without notice in their next release (``conn._sock``, ``cache._cache``,
``cache._class``, ``cache._options``, ``pool._available_connections``...). The package
goes through public APIs only; where none exists it builds what it needs from public
configuration and says so (see ``hardened_sessions/stores/redis.py``).

The scan looks for attribute access ``<name>._<lower>`` on the usual names of other
packages' objects; ``self._`` / ``cls._`` (the package's own) and Django's documented
model internals (``_meta``, ``_default_manager``, ``_state``) are allowed. A second scan
covers ``self._x`` in the package's subclasses of other packages' classes (writing
``self._class`` in a subclass of Django's ``RedisCache`` is the same dependency): no
``_x`` name of a foreign base class may be used or overridden.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "hardened_sessions"

PRIVATE_ACCESS = re.compile(
    r"\b(?:cache|caches|conn|connection|client|inner|pool|redis|sock|socket|server|"
    r"backend|cluster|node|lib|[a-z_]*_(?:cache|client|pool|conn|connection))\._[a-z]\w*"
)
ALLOWED_NAMES = {"_meta", "_default_manager", "_state"}

# Files the scan does not hold to the rule yet, each with its reason.
ALLOWLIST: dict[str, str] = {}


def _findings(text: str) -> list[str]:
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        code = line.split("#", 1)[0]
        for match in PRIVATE_ACCESS.finditer(code):
            name = match.group(0).split(".", 1)[1]
            if name not in ALLOWED_NAMES:
                found.append(f"{number}: {line.strip()}")
    return found


def test_the_scan_sees_what_it_is_meant_to_see() -> None:
    assert _findings("x = cache._cache.get(key)")
    assert _findings("if conn._sock is None:")
    assert _findings("self._class = cache._class")
    assert _findings("pool._available_connections")
    assert _findings("s = self._session_cache._data")
    assert not _findings("self._client = client")
    assert not _findings("opts = model._meta")
    assert not _findings("# conn._sock in a comment")


def test_no_private_attribute_of_another_package_is_touched() -> None:
    problems = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative in ALLOWLIST:
            continue
        found = _findings(path.read_text(encoding="utf-8"))
        if found:
            problems[relative] = found
    assert not problems, f"private attributes of other packages: {problems}"


def test_the_allowlist_names_only_files_that_still_need_it() -> None:
    for relative in ALLOWLIST:
        path = PACKAGE / relative
        assert path.exists(), f"{relative} is allowlisted but gone: drop it from ALLOWLIST"


# Subclasses that still share private names with a foreign base class, with the reason.
SUBCLASS_ALLOWLIST = {
    # Django's SessionBase keeps the key and the loaded data in _session_key /
    # _session_cache, and its engines override _get_session; it documents no other way.
    ("backends/base.py", "HardenedSessionBase"): "Django's SessionBase subclass protocol",
    ("backends/mapping.py", "SessionMapping"): "Django's SessionBase subclass protocol",
    ("backends/core.py", "EngineCore"): "Django's SessionBase subclass protocol",
    ("backends/load.py", "LoadingSession"): "Django's SessionBase subclass protocol",
    ("backends/save.py", "SavingSession"): "Django's SessionBase subclass protocol",
    ("backends/rotate.py", "RotatingSession"): "Django's SessionBase subclass protocol",
}
_PRIVATE = re.compile(r"_[a-z]\w*")


def _foreign_private_names(cls: type) -> set[str]:
    names: set[str] = set()
    for base in cls.__mro__[1:]:
        if base.__module__.split(".")[0] in ("hardened_sessions", "builtins", "typing"):
            continue
        names |= {name for name in vars(base) if _PRIVATE.fullmatch(name)}
        try:
            source = inspect.getsource(base)
        except (OSError, TypeError):
            continue
        names |= set(re.findall(r"self\.(_[a-z]\w*)", source))
    return names


def test_no_subclass_uses_a_private_name_of_a_foreign_base_class() -> None:
    problems = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative in ALLOWLIST or "migrations/" in relative:
            continue
        module_name = "hardened_sessions." + relative.removesuffix(".py").replace("/", ".")
        module = importlib.import_module(module_name.removesuffix(".__init__"))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ClassDef) or (relative, node.name) in SUBCLASS_ALLOWLIST:
                continue
            cls = getattr(module, node.name, None)
            if not inspect.isclass(cls):
                continue
            used = {
                n.attr
                for n in ast.walk(node)
                if isinstance(n, ast.Attribute)
                and isinstance(n.value, ast.Name)
                and n.value.id in ("self", "cls")
            }
            used |= {
                n.name for n in node.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
            }
            shared = {name for name in used if _PRIVATE.fullmatch(name)} & _foreign_private_names(
                cls
            )
            if shared:
                problems[f"{relative}:{node.name}"] = sorted(shared)
    assert not problems, f"private names of foreign base classes: {problems}"
