"""No module of the package over 450 lines: each module does one job.

A module that grows past the bound holds more than one job, and a reviewer can no
longer read it in one sitting; it is split by job into sibling modules (as
``backends/db.py`` with ``db_sql.py``, ``db_locks.py``, ``db_cap.py`` and
``db_sweep.py``), each with a docstring that says its one job.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "hardened_sessions"
MAX_LINES = 450

# Modules not split yet, each with its reason.
ALLOWLIST: dict[str, str] = {}


def _lines(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines())


def test_no_module_of_the_package_is_over_the_bound() -> None:
    over = {
        relative: lines
        for path in sorted(PACKAGE.rglob("*.py"))
        if "migrations/" not in (relative := path.relative_to(PACKAGE).as_posix())
        and relative not in ALLOWLIST
        and (lines := _lines(path)) > MAX_LINES
    }
    assert not over, f"modules over {MAX_LINES} lines (split them by job): {over}"


def test_the_allowlist_names_only_modules_still_over_the_bound() -> None:
    for relative in ALLOWLIST:
        path = PACKAGE / relative
        assert path.exists(), f"{relative} is allowlisted but gone: drop it from ALLOWLIST"
        assert _lines(path) > MAX_LINES, (
            f"{relative} has {_lines(path)} lines now: drop it from ALLOWLIST"
        )
