"""Django's ``tests/runtests.py`` with hardened_sessions swapped in.

Usage (``run.py`` calls it; the working directory is Django's tests folder)::

    HS_DJANGO_OWN_MODE=hardened HS_DJANGO_OWN_ENGINE=db \\
        python hs_runtests.py DJANGO_TESTS_DIR --settings=hs_settings [runtests options] LABEL...

runtests.py sets ``INSTALLED_APPS`` and ``MIDDLEWARE`` itself, from its module-level
lists ``ALWAYS_INSTALLED_APPS`` and ``ALWAYS_MIDDLEWARE`` (Django 5.2, 6.0 and 6.1
alike). This script imports runtests.py as the module ``runtests``, and in the
``hardened`` mode replaces Django's ``SessionMiddleware`` in ``ALWAYS_MIDDLEWARE`` by
``HardenedSessionMiddleware`` and appends ``hardened_sessions`` to
``ALWAYS_INSTALLED_APPS`` (``django.contrib.sessions`` stays: Django's tests import its
models). Then it runs the script's own ``if __name__ == "__main__":`` block, unchanged,
in that module's namespace. Tests that set ``MIDDLEWARE`` or ``SESSION_ENGINE`` with
``override_settings`` keep Django's own pieces: what is tested is the default path.

In the ``stock`` mode nothing is swapped: Django's suite as Django runs it, with only
the session engine (``hs_settings.py``) and the deviation runner set.
"""

from __future__ import annotations

import ast
import multiprocessing
import os
import sys
from pathlib import Path
from types import ModuleType

from hs_deviations import HARDENED_APP, HARDENED_MIDDLEWARE, STOCK_MIDDLEWARE


def swap_in_hardened(runtests: ModuleType) -> None:
    """Put the hardened middleware and app into runtests.py's lists, in place."""
    middleware: list[str] = runtests.ALWAYS_MIDDLEWARE
    apps: list[str] = runtests.ALWAYS_INSTALLED_APPS
    if middleware.count(STOCK_MIDDLEWARE) != 1 or "django.contrib.sessions" not in apps:
        raise RuntimeError(
            f"{runtests.__file__}: ALWAYS_MIDDLEWARE / ALWAYS_INSTALLED_APPS no longer "
            "hold Django's session middleware and app as Django 5.2-6.1 do; "
            "tests/django_own/hs_runtests.py needs updating"
        )
    middleware[middleware.index(STOCK_MIDDLEWARE)] = HARDENED_MIDDLEWARE
    apps.append(HARDENED_APP)


def main_block(script: Path) -> ast.Module:
    """The body of runtests.py's ``if __name__ == "__main__":`` block."""
    tree = ast.parse(script.read_text(encoding="utf-8"), filename=str(script))
    for node in tree.body:
        if (
            isinstance(node, ast.If)
            and isinstance(node.test, ast.Compare)
            and isinstance(node.test.left, ast.Name)
            and node.test.left.id == "__name__"
            and isinstance(node.test.comparators[0], ast.Constant)
            and node.test.comparators[0].value == "__main__"
        ):
            return ast.Module(body=node.body, type_ignores=[])
    raise RuntimeError(f"{script}: no `if __name__ == '__main__':` block")


def main() -> None:
    tests_dir = Path(sys.argv[1]).resolve()
    mode = os.environ["HS_DJANGO_OWN_MODE"]
    script = tests_dir / "runtests.py"
    sys.path.insert(0, str(tests_dir))
    sys.argv = [str(script), *sys.argv[2:]]
    # Workers of --parallel must inherit the swapped lists: with "spawn" they would
    # import runtests.py afresh. ("fork" is the default on Linux up to Python 3.13.)
    multiprocessing.set_start_method("fork")
    import runtests  # Django's tests/runtests.py, from the sdist

    if mode == "hardened":
        swap_in_hardened(runtests)
    elif mode != "stock":
        raise RuntimeError(f"HS_DJANGO_OWN_MODE must be hardened or stock, not {mode!r}")
    block = compile(main_block(script), str(script), "exec")
    exec(block, vars(runtests))


if __name__ == "__main__":
    main()
