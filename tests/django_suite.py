"""Django's own session conformance suite, fetched from the installed Django's sdist.

``SessionTestsMixin`` lives in ``tests/sessions_tests/tests.py`` of the Django
source distribution, which is not installed with Django. :func:`load_mixin`
downloads the sdist of exactly the installed version with pip (once; cached in
``HS_DJANGO_SDIST_CACHE`` or ``.cache/django-sdist`` at the repository root),
and executes only the mixin class from that file, with the file's own imports
minus the two that need ``django.contrib.sessions`` installed (its ``Session``
model and the test app's custom model, which the mixin does not use).

Nothing of Django's test code is copied into this repository.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import django

SUITE_PATH = "tests/sessions_tests/tests.py"
_SKIPPED_IMPORTS = {"django.contrib.sessions.models", "models"}


def cache_dir() -> Path:
    default = Path(__file__).resolve().parent.parent / ".cache" / "django-sdist"
    return Path(os.environ.get("HS_DJANGO_SDIST_CACHE", default))


def suite_source() -> str:
    version = django.get_version()
    target = cache_dir() / version
    suite = target / "sessions_tests_tests.py"
    if suite.exists():
        return suite.read_text(encoding="utf-8")
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-binary",
            ":all:",
            "--no-deps",
            "--dest",
            str(target),
            f"django=={version}",
        ],
        check=True,
        timeout=600,
    )
    archive = next(p for p in target.iterdir() if p.name.endswith(".tar.gz"))
    with tarfile.open(archive) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("/" + SUITE_PATH))
        extracted = tar.extractfile(member)
        assert extracted is not None
        text = extracted.read().decode("utf-8")
    suite.write_text(text, encoding="utf-8")
    archive.unlink()
    return text


def load_mixin() -> type[Any]:
    """Return Django's ``SessionTestsMixin`` for the installed Django version."""
    tree = ast.parse(suite_source())
    body: list[ast.stmt] = []
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and (node.module in _SKIPPED_IMPORTS):
            continue
        if (
            isinstance(node, (ast.Import, ast.ImportFrom))
            or isinstance(node, ast.ClassDef)
            and node.name == "SessionTestsMixin"
        ):
            body.append(node)
    module = ast.Module(body=body, type_ignores=[])
    namespace: dict[str, Any] = {"__name__": "django_sessions_tests_suite"}
    exec(compile(module, f"<django {django.get_version()} {SUITE_PATH}>", "exec"), namespace)
    return namespace["SessionTestsMixin"]  # type: ignore[no-any-return]
